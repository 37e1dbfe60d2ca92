"""The generation engine: one synchronous step at a time, scheduler → model → sampler.

It owns the KV cache tensors, the block bookkeeping and the scheduler, and knows nothing of
asyncio or the protocols: the generation runner drives `step()` off the event loop and
streams what each step produced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tensorgate.generation.constraints import Constraint, GrammarCompiler
from tensorgate.generation.kv_blocks import BlockPool, KVCacheManager
from tensorgate.generation.models import (
    GPT2,
    DecodeGroup,
    KVCache,
    Llama,
    SequenceSlice,
    StepBatch,
)
from tensorgate.generation.sampling import Sampled, generator_for, sample
from tensorgate.generation.scheduler import Scheduler, Sequence, StepPlan


@dataclass(slots=True)
class StepResult:
    """What one step produced: a new token for some sequences, and who finished."""

    tokens: list[tuple[Sequence, Sampled]] = field(default_factory=list)
    finished: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    num_tokens: int = 0  # tokens computed (prefill and decode)


class Engine:
    """A model, its paged KV cache and its scheduler."""

    def __init__(
        self,
        model: Llama | GPT2,
        num_blocks: int,
        block_size: int = 16,
        prefix_caching: bool = True,
        max_num_seqs: int = 64,
        max_tokens_per_step: int = 512,
        device: str = "cpu",
        static: bool = False,
        grammars: GrammarCompiler | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.block_size = block_size
        self.kv = KVCacheManager(BlockPool(num_blocks, block_size), prefix_caching)
        self.cache = KVCache(model.shape, num_blocks, block_size, device)
        self.scheduler = Scheduler(
            self.kv, max_num_seqs, max_tokens_per_step, model.shape.max_positions, static=static
        )
        self._generators: dict[str, torch.Generator] = {}
        self.grammars = grammars
        self._constraints: dict[str, Constraint] = {}

    def add(self, sequence: Sequence) -> None:
        """Queue a sequence (InvalidArgument or ResourceExhausted when it cannot be)."""
        constraint = None
        if self.grammars is not None:
            constraint = self.grammars.constraint(sequence.params, self.model.shape.vocab_size)
        self.scheduler.add(sequence)
        self._generators[sequence.id] = generator_for(sequence.params.seed)
        if constraint is not None:
            self._constraints[sequence.id] = constraint

    def abort(self, sequence: Sequence, reason: str = "abort") -> None:
        """End a sequence now and free its blocks."""
        self.scheduler.abort(sequence, reason)
        self._forget(sequence)

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def step(self) -> StepResult:
        """Plan a step, run the model on it, sample, and apply the results."""
        plan = self.scheduler.schedule()
        result = StepResult(preempted=list(plan.preempted), num_tokens=plan.num_tokens)
        if not plan.chunks:
            return result
        sampling = [c.sequence for c in plan.chunks if c.samples]
        with torch.inference_mode():
            logits = self.model(self._batch(plan), self.cache)
        constraints = self._constraints
        allowed = {s.id: constraints[s.id].allowed() for s in sampling if s.id in constraints}
        picked = sample(logits, sampling, self._generators, allowed)
        for sequence, choice in zip(sampling, picked, strict=True):
            if sequence.id in constraints:
                constraints[sequence.id].accept(choice.token)
        result.finished = self.scheduler.update(
            plan, {s.id: p.token for s, p in zip(sampling, picked, strict=True)}
        )
        complete = [
            s
            for s in sampling
            if s.id in constraints and constraints[s.id].complete and s not in result.finished
        ]
        self.scheduler.finish(complete, "stop")  # the grammar admits nothing more
        result.finished += complete
        result.tokens = list(zip(sampling, picked, strict=True))
        for sequence in result.finished:
            self._forget(sequence)
        return result

    def _forget(self, sequence: Sequence) -> None:
        self._generators.pop(sequence.id, None)
        self._constraints.pop(sequence.id, None)

    def _batch(self, plan: StepPlan) -> StepBatch:
        """The step's tokens packed in one batch, with their cache slots; decoding sequences
        (one token each) go into one padded group, prompt chunks one by one."""
        size, device = self.block_size, self.device
        offsets = torch.arange(size, device=device)
        token_ids: list[int] = []
        positions: list[int] = []
        slots: list[torch.Tensor] = []
        parts: list[SequenceSlice] = []
        decode_rows: list[int] = []
        decode_slots: list[torch.Tensor] = []
        sample_rows: list[int] = []
        for chunk in plan.chunks:
            sequence = chunk.sequence
            end = chunk.start + chunk.count
            table = torch.tensor(self.kv.block_ids(sequence.id), dtype=torch.long, device=device)
            context = (table[:, None] * size + offsets[None, :]).reshape(-1)[:end]
            row = len(token_ids)
            if chunk.count == 1 and chunk.start > 0:
                decode_rows.append(row)
                decode_slots.append(context)
            else:
                parts.append(SequenceSlice(row, chunk.count, context))
            token_ids += sequence.tokens[chunk.start : end]
            positions += range(chunk.start, end)
            slots.append(context[chunk.start :])
            if chunk.samples:
                sample_rows.append(len(token_ids) - 1)

        def tensor(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        decode = None
        if decode_rows:
            padded = torch.nn.utils.rnn.pad_sequence(decode_slots, batch_first=True)
            lengths = tensor([len(c) for c in decode_slots])
            valid = torch.arange(padded.shape[1], device=device)[None, :] < lengths[:, None]
            decode = DecodeGroup(tensor(decode_rows), padded, valid)
        return StepBatch(
            tensor(token_ids),
            tensor(positions),
            torch.cat(slots),
            parts,
            tensor(sample_rows),
            decode,
        )

    def generate(self, sequences: list[Sequence]) -> list[list[int]]:
        """Run sequences to the end together (tests and offline use): their output tokens."""
        for sequence in sequences:
            self.add(sequence)
        while self.has_work:
            self.step()
        return [s.output for s in sequences]
