"""The sequence batcher holding a ready batch for more sequences, on real instance threads."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from tensorgate.dataplane.types import Array
from tensorgate.errors import ModelLoadError
from tensorgate.executors.instance_threads import InstanceThreads
from tensorgate.repository.config import parse_config
from tensorgate.runners.sequence import SequenceRunner, batch_wait
from tensorgate.runners.sequence_state import state_tensors

from tests.unit.test_sequence_state import Accumulator, _config, _request, _runner, on_a_loop


def _waiting(strategy: str) -> str:
    return _config().replace("sequence_batching {\n", f"sequence_batching {{\n  {strategy}\n")


@on_a_loop
async def test_a_direct_batch_waits_for_half_its_slots(tmp_path: Path) -> None:
    model = Accumulator(add=True)
    config = _waiting(
        "direct { max_queue_delay_microseconds: 20000000, minimum_slot_utilization: 0.5 }"
    )
    runner = _runner(config, model, tmp_path)
    try:
        first = asyncio.ensure_future(runner.run(_request(1, 5, start=True), 1))
        await asyncio.sleep(0.1)
        assert not first.done() and model.batches == []  # 1 of 4 slots: it waits
        second = await runner.run(_request(2, 7, start=True), 1)
        assert (await first).outputs["OUTPUT"].tolist() == [[5]]
        assert second.outputs["OUTPUT"].tolist() == [[7]]
        assert model.batches == [2]  # one batch, slots 0 and 1
    finally:
        await runner.close()


@on_a_loop
async def test_a_waiting_batch_goes_when_the_delay_passes(tmp_path: Path) -> None:
    model = Accumulator(add=True)
    config = _waiting("direct { max_queue_delay_microseconds: 50000, minimum_slot_utilization: 1 }")
    runner = _runner(config, model, tmp_path)
    try:
        done = await asyncio.wait_for(runner.run(_request(1, 5, start=True), 1), 30)
        assert done.outputs["OUTPUT"].tolist() == [[5]]
        assert model.batches == [1]
    finally:
        await runner.close()


@on_a_loop
async def test_oldest_sends_a_preferred_batch_without_waiting_out_the_delay(
    tmp_path: Path,
) -> None:
    model = Accumulator(add=True)
    strategy = (
        "oldest { max_candidate_sequences: 4, preferred_batch_size: [ 2 ], "
        "max_queue_delay_microseconds: 20000000 }"
    )
    runner = _runner(_waiting(strategy), model, tmp_path)
    try:
        first = asyncio.ensure_future(runner.run(_request(1, 1, start=True), 1))
        await asyncio.sleep(0.1)
        assert not first.done()
        await runner.run(_request(2, 2, start=True), 1)
        await first
        assert model.batches == [2]
    finally:
        await runner.close()


@on_a_loop
async def test_unloading_sends_a_waiting_batch_at_once(tmp_path: Path) -> None:
    model = Accumulator(add=True)
    config = _waiting(
        "direct { max_queue_delay_microseconds: 60000000, minimum_slot_utilization: 1 }"
    )
    runner = _runner(config, model, tmp_path)
    waiting = asyncio.ensure_future(runner.run(_request(1, 5, start=True), 1))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(runner.close(), 30)
    assert (await waiting).outputs["OUTPUT"].tolist() == [[5]]


@pytest.mark.parametrize(
    ("strategy", "reason"),
    [
        ("direct { minimum_slot_utilization: 1.5 }", "minimum_slot_utilization must lie in 0 to 1"),
        ("oldest { preferred_batch_size: [ 8 ] }", "must lie in 1 to max_batch_size (4)"),
    ],
)
def test_a_wait_that_cannot_work_fails_the_load(strategy: str, reason: str) -> None:
    with pytest.raises(ModelLoadError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        batch_wait(parse_config(_waiting(strategy)))


class Sleeper(Accumulator):
    """Sleeps as many milliseconds as its input says, then answers the input."""

    def execute(self, inputs: dict[str, Array]) -> dict[str, Array]:
        value = inputs["INPUT"]
        time.sleep(float(value.max()) / 1000)
        return {"OUTPUT": value, "STATE_OUT": inputs["STATE_IN"]}


@pytest.mark.parametrize("preserve", [True, False])
@on_a_loop
async def test_preserve_ordering_answers_in_arrival_order_across_instances(
    tmp_path: Path, preserve: bool
) -> None:
    strategy = (
        f"oldest {{ max_candidate_sequences: 1, preserve_ordering: {str(preserve).lower()} }}"
    )
    parsed = parse_config(_waiting(strategy).replace("max_batch_size: 4", "max_batch_size: 1"))
    instances = InstanceThreads("acc", [Sleeper(), Sleeper()])
    runner = SequenceRunner("acc", parsed, instances, 16, None, state_tensors(parsed, tmp_path))
    answered: list[int] = []
    try:
        # The slow request arrives first, on one instance; the quick one on the other.
        slow = asyncio.ensure_future(runner.run(_request(1, 1000, start=True), 1))
        quick = asyncio.ensure_future(runner.run(_request(2, 0, start=True), 1))
        for task, corrid in ((slow, 1), (quick, 2)):
            task.add_done_callback(lambda _, c=corrid: answered.append(c))
        await asyncio.wait_for(asyncio.gather(slow, quick), 30)
    finally:
        await runner.close()
    assert answered == ([1, 2] if preserve else [2, 1])
