"""Choosing the next token: greedy, filters, penalties, seeds and log-probabilities."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from tensorgate.generation.sampling import generator_for, sample  # noqa: E402
from tensorgate.generation.sampling_params import SamplingParams  # noqa: E402
from tensorgate.generation.scheduler import Sequence  # noqa: E402

LOGITS = torch.tensor([[1.0, 3.0, 2.0, 0.5]])


def pick(params: SamplingParams, output: list[int] | None = None, seed: int = 0) -> int:
    sequence = Sequence("s", [0], params, output=list(output or []))
    (result,) = sample(LOGITS.clone(), [sequence], {"s": generator_for(seed)})
    return result.token


def test_temperature_zero_is_argmax() -> None:
    assert pick(SamplingParams(temperature=0)) == 1


def test_top_k_of_one_is_argmax_whatever_the_draw() -> None:
    assert {pick(SamplingParams(top_k=1), seed=s) for s in range(20)} == {1}


def test_top_p_keeps_only_the_smallest_set_reaching_it() -> None:
    # softmax(LOGITS): token 1 holds about 0.63 of the mass, token 2 about 0.23.
    drawn = {pick(SamplingParams(top_p=0.8), seed=s) for s in range(50)}
    assert drawn == {1, 2}


def test_a_repetition_penalty_steers_away_from_seen_tokens() -> None:
    assert pick(SamplingParams(temperature=0, repetition_penalty=10.0), output=[1]) == 2


def test_presence_and_frequency_penalties_count_the_output() -> None:
    params = SamplingParams(temperature=0, frequency_penalty=0.6)
    assert pick(params, output=[1]) == 1  # 3.0 - 0.6 still leads
    assert pick(params, output=[1, 1]) == 2  # 3.0 - 1.2 < 2.0


def test_logprobs_come_from_the_model_distribution() -> None:
    sequence = Sequence("s", [0], SamplingParams(temperature=0, logprobs=2))
    (result,) = sample(LOGITS.clone(), [sequence], {})
    expected = torch.log_softmax(LOGITS[0], -1)
    assert math.isclose(result.logprob, float(expected[1]), rel_tol=1e-6)
    assert [t for t, _ in result.top] == [1, 2]
