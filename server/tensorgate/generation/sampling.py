"""Picking each sequence's next token from its logits, as its SamplingParams say.

Penalties first (repetition over the prompt and output, as Hugging Face applies it;
presence and frequency over the output, as OpenAI defines them), then greedy argmax at
temperature 0, else temperature, top-k and top-p, and a draw from the sequence's own
generator, seeded when the request gives a seed, so a seeded request repeats exactly.
Log-probabilities are those of the model's distribution, before any of this.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tensorgate.generation.scheduler import Sequence


@dataclass(slots=True)
class Sampled:
    """One sequence's new token, with its log-probability and the top alternatives."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


def _penalize(logits: torch.Tensor, sequence: Sequence) -> torch.Tensor:
    params = sequence.params
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(sequence.tokens)), dtype=torch.long, device=logits.device)
        values = logits[seen]
        logits[seen] = torch.where(
            values > 0, values / params.repetition_penalty, values * params.repetition_penalty
        )
    if (params.presence_penalty or params.frequency_penalty) and sequence.output:
        counts = torch.bincount(
            torch.tensor(sequence.output, device=logits.device), minlength=logits.numel()
        ).float()
        seen = counts > 0
        logits[seen] -= params.presence_penalty + params.frequency_penalty * counts[seen]
    return logits


def _filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k and top_k < logits.numel():
        threshold = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        # Keep the smallest prefix whose mass reaches top_p: drop a token once the mass
        # before it already does.
        drop = cumulative - ordered.softmax(-1) >= top_p
        logits = logits.clone()
        logits[order[drop]] = float("-inf")
    return logits


def sample(
    logits: torch.Tensor,
    sequences: list[Sequence],
    generators: dict[str, torch.Generator],
    allowed: dict[str, torch.Tensor] | None = None,
) -> list[Sampled]:
    """The next token of each sequence; row i of `logits` belongs to `sequences[i]`.
    `allowed` masks the tokens a constrained sequence may choose (structured output)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    results = []
    for row, sequence in enumerate(sequences):
        params = sequence.params
        scores = _penalize(logits[row].float().clone(), sequence)
        if allowed and sequence.id in allowed:
            mask = allowed[sequence.id].to(scores.device)
            scores = scores.masked_fill(~mask, float("-inf"))
        if params.greedy:
            token = int(torch.argmax(scores))
        else:
            scores = _filter(scores / params.temperature, params.top_k, params.top_p)
            probs = torch.softmax(scores, dim=-1)
            generator = generators.get(sequence.id)
            token = int(torch.multinomial(probs.cpu(), 1, generator=generator))
        top: list[tuple[int, float]] = []
        if params.logprobs:
            values, ids = torch.topk(logprobs[row], params.logprobs)
            top = [(int(i), float(v)) for i, v in zip(ids, values, strict=True)]
        results.append(Sampled(token, float(logprobs[row, token]), top))
    return results


def generator_for(seed: int | None) -> torch.Generator:
    """A CPU generator for one sequence: seeded when the request gives a seed."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
