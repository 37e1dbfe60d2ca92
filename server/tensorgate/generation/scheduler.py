"""The iteration-level scheduler: which sequences run in the next model step, and how many
tokens each. Pure and synchronous, in the shape of vLLM v1's: `schedule()` plans a step,
`update()` applies what the step produced.

Each step, in order:

1. Running sequences first, oldest first: each gets its uncomputed tokens (one, when
   decoding; the rest of its prompt, when its prefill was chunked), within the step's token
   budget. When the pool has no block left for one, the newest running sequence is preempted:
   its blocks are freed and it waits again at the front of the queue, to be recomputed.
2. Then waiting sequences, in arrival order, while the budget, the sequence limit and the
   blocks allow: each starts from its longest cached prefix and computes the rest of its
   prompt, in chunks of the remaining budget, so a long prompt never stalls decoding.

A sequence whose step computed all its tokens gets one new token from the sampler; one that
finishes (length, stop token) or is aborted frees its blocks at once.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from tensorgate.errors import InvalidArgument, ResourceExhausted
from tensorgate.generation.kv_blocks import KVCacheManager
from tensorgate.generation.sampling_params import SamplingParams


class Status(enum.Enum):
    """Where a sequence is: waiting for a slot, running, or done."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Sequence:
    """One request's tokens and progress."""

    id: str
    prompt: list[int]
    params: SamplingParams
    eos_token_id: int | None = None
    output: list[int] = field(default_factory=list)
    computed: int = 0  # leading tokens whose KV is in the cache
    status: Status = Status.WAITING
    finish_reason: str | None = None
    preemptions: int = 0

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    def __len__(self) -> int:
        return len(self.prompt) + len(self.output)


@dataclass(slots=True)
class ScheduledChunk:
    """`count` tokens of `sequence`, from position `start`, computed in this step."""

    sequence: Sequence
    start: int
    count: int

    @property
    def samples(self) -> bool:
        """The step computes the sequence's last token: it yields the next one."""
        return self.start + self.count == len(self.sequence)


@dataclass(slots=True)
class StepPlan:
    """One step: the chunks to compute, and the sequences preempted to make room."""

    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(c.count for c in self.chunks)


class Scheduler:
    """Waiting and running sequences over one KV cache."""

    def __init__(
        self,
        kv: KVCacheManager,
        max_num_seqs: int = 64,
        max_tokens_per_step: int = 2048,
        max_model_len: int = 2048,
        max_waiting: int = 1024,
        static: bool = False,
    ) -> None:
        self.kv = kv
        # Static batching, for comparison: a new batch is admitted only when none is running.
        self.static = static
        self.max_num_seqs = max_num_seqs
        self.max_tokens_per_step = max_tokens_per_step
        self.max_model_len = max_model_len
        self.max_waiting = max_waiting
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0

    def add(self, sequence: Sequence) -> None:
        """Queue a new sequence; one that can never fit is refused now."""
        total = len(sequence.prompt) + sequence.params.max_tokens
        if not sequence.prompt:
            raise InvalidArgument("the prompt is empty")
        if total > self.max_model_len:
            raise InvalidArgument(
                f"prompt ({len(sequence.prompt)} tokens) plus max_tokens "
                f"({sequence.params.max_tokens}) exceeds the context of {self.max_model_len}"
            )
        blocks = -(-total // self.kv.block_size)
        if blocks > len(self.kv.pool.blocks):
            raise InvalidArgument(
                f"the sequence needs {blocks} KV blocks; the cache has {len(self.kv.pool.blocks)}"
            )
        if len(self.waiting) >= self.max_waiting:
            raise ResourceExhausted(f"{len(self.waiting)} sequences are waiting, the limit")
        self.waiting.append(sequence)

    def abort(self, sequence: Sequence, reason: str = "abort") -> None:
        """Stop a sequence now (client gone, deadline passed) and free its blocks."""
        if sequence.status is Status.FINISHED:
            return
        if sequence in self.running:
            self.running.remove(sequence)
        elif sequence in self.waiting:
            self.waiting.remove(sequence)
        self._finish(sequence, reason)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # Planning ---------------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        """The next step's chunks (see the module docstring for the order)."""
        plan = StepPlan()
        budget = self.max_tokens_per_step
        index = 0
        while index < len(self.running) and budget > 0:
            sequence = self.running[index]
            count = min(len(sequence) - sequence.computed, budget)
            if not self.kv.allocate(sequence.id, sequence.computed + count):
                victim = self.running.pop()  # the newest
                self._preempt(victim, plan)
                if victim is sequence:
                    break
                continue
            plan.chunks.append(ScheduledChunk(sequence, sequence.computed, count))
            budget -= count
            index += 1
        if plan.preempted:
            return plan  # no admissions while blocks are short
        admitting = not (self.static and self.running)
        while admitting and self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            sequence = self.waiting[0]
            prefix = self.kv.cached_prefix(sequence.tokens) if sequence.computed == 0 else []
            start = len(prefix) * self.kv.block_size
            count = min(len(sequence) - start, budget)
            if not self.kv.allocate(sequence.id, start + count, prefix):
                break
            self.waiting.popleft()
            sequence.computed = start
            sequence.status = Status.RUNNING
            self.running.append(sequence)
            plan.chunks.append(ScheduledChunk(sequence, start, count))
            budget -= count
        return plan

    def _preempt(self, sequence: Sequence, plan: StepPlan) -> None:
        self.kv.free(sequence.id)
        sequence.computed = 0
        sequence.status = Status.WAITING
        sequence.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(sequence)
        plan.preempted.append(sequence)

    # Applying a step --------------------------------------------------------------------

    def update(self, plan: StepPlan, sampled: dict[str, int]) -> list[Sequence]:
        """Record what the step computed and the tokens it sampled; returns the sequences
        that finished with it."""
        finished: list[Sequence] = []
        for chunk in plan.chunks:
            sequence = chunk.sequence
            if sequence.status is not Status.RUNNING:
                continue  # aborted while the step ran
            sequence.computed = chunk.start + chunk.count
            self.kv.cache_full_blocks(sequence.id, sequence.tokens, sequence.computed)
            if not chunk.samples:
                continue
            token = sampled[sequence.id]
            sequence.output.append(token)
            reason = self._stop_reason(sequence, token)
            if reason is not None:
                self.running.remove(sequence)
                self._finish(sequence, reason)
                finished.append(sequence)
        return finished

    def _stop_reason(self, sequence: Sequence, token: int) -> str | None:
        params = sequence.params
        if token in params.stop_token_ids:
            return "stop"
        if token == sequence.eos_token_id and not params.ignore_eos:
            return "stop"
        if len(sequence.output) >= params.max_tokens:
            return "length"
        return None

    def _finish(self, sequence: Sequence, reason: str) -> None:
        self.kv.free(sequence.id)
        sequence.status = Status.FINISHED
        sequence.finish_reason = reason

    def finish(self, sequences: Iterable[Sequence], reason: str) -> None:
        """End sequences for a reason found outside the scheduler (a stop string)."""
        for sequence in sequences:
            if sequence in self.running:
                self.running.remove(sequence)
            self._finish(sequence, reason)
