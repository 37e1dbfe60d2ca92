"""The sequence batcher handing requests one by one to a model that takes them so (Triton
Python models): flags, rescheduling, per-request errors and decoupled streams, on real
instance threads."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any

import numpy as np
import pytest
from tensorgate.backends.base import SequenceStep, StepOutcome
from tensorgate.dataplane.types import InferRequest
from tensorgate.errors import InvalidArgument, ModelExecutionError, ModelLoadError
from tensorgate.executors.instance_threads import InstanceThreads
from tensorgate.repository.config import parse_config
from tensorgate.runners.sequence import SequenceRunner

from tests.unit.test_sequence_state import on_a_loop

CONFIG = """
max_batch_size: 4
input [{ name: "N", data_type: TYPE_INT32, dims: [ 1 ] }]
output [{ name: "RUNS", data_type: TYPE_INT32, dims: [ 1 ] }]
sequence_batching {
  control_input [{ name: 'START', control [{ kind: CONTROL_SEQUENCE_START,
    int32_false_true: [0, 1] }] }]
  ITERATIVE
}
"""


class Stepper:
    """Runs each request N times (rescheduling it in between) and answers how many runs it
    took; N < 0 fails that request alone. Records each batch's (correlation id, flags,
    START input) per request."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[Any, int, int]]] = []
        self.runs: dict[Any, int] = {}
        self.cancelled: list[bool] = []  # each run's request.cancelled(), in order

    def signature(self) -> None:
        return None

    def execute(self, inputs: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("a stepped model gets its requests one by one")

    def execute_steps(self, steps: list[SequenceStep], iterative: bool) -> list[StepOutcome]:
        self.batches.append(
            [(s.correlation_id, s.flags, int(s.inputs["START"][0, 0])) for s in steps]
        )
        outcomes = []
        for step in steps:
            assert step.request.cancelled is not None
            self.cancelled.append(step.request.cancelled())
            want = int(step.inputs["N"][0, 0])
            if want < 0:
                outcomes.append(StepOutcome(None, ModelExecutionError("negative")))
                continue
            runs = self.runs[step.correlation_id] = self.runs.get(step.correlation_id, 0) + 1
            outputs = {"RUNS": np.array([[runs]], np.int32)}
            if step.sender is not None:
                step.sender.send(outputs, runs >= want)
                outcomes.append(StepOutcome(None, rescheduled=iterative and runs < want))
            elif iterative and runs < want:
                outcomes.append(StepOutcome(None, rescheduled=True))
            else:
                del self.runs[step.correlation_id]
                outcomes.append(StepOutcome(outputs))
        return outcomes

    def close(self) -> None:
        pass


def _runner(model: Stepper, iterative: bool = True, extra: str = "") -> SequenceRunner:
    config = CONFIG.replace("ITERATIVE", "iterative_sequence: true" if iterative else "")
    threads = InstanceThreads("steps", [model])
    return SequenceRunner("steps", parse_config(config + extra), threads, 16, None, [])


def _request(n: int, **params: Any) -> InferRequest:
    return InferRequest(
        "steps",
        inputs={"N": np.array([[n]], dtype=np.int32)},
        datatypes={"N": "INT32"},
        parameters=params,
    )


@on_a_loop
async def test_requests_without_a_sequence_id_run_until_the_model_releases_them() -> None:
    model = Stepper()
    runner = _runner(model)
    try:
        done = await asyncio.gather(*(runner.run(_request(n), 1) for n in (3, 1, 2)))
        failed = runner.run(_request(-1), 1)
        with pytest.raises(ModelExecutionError, match="negative"):
            await failed
    finally:
        await runner.close()
    assert [int(d.outputs["RUNS"][0, 0]) for d in done] == [3, 1, 2]
    # Each request is a sequence of its own: START (flag 1, control input 1) on its first
    # execution, nothing after; rescheduled requests share batches with the others.
    # The first runs alone (it arrived alone); the others join its second execution.
    assert model.batches[:2] == [[(1, 1, 1)], [(1, 0, 0), (2, 1, 1), (3, 1, 1)]]
    later = [entry for batch in model.batches[2:] for entry in batch if entry[0] != 4]
    assert later and all(flags == 0 and start == 0 for _, flags, start in later)
    assert runner.status().queued == 0 and not runner.policy.sequences


@on_a_loop
async def test_a_client_sequence_keeps_its_own_flags_and_id() -> None:
    model = Stepper()
    runner = _runner(model, iterative=False)
    try:
        first = await runner.run(_request(1, sequence_id=9, sequence_start=True), 1)
        last = await runner.run(_request(1, sequence_id=9, sequence_end=True), 1)
        with pytest.raises(InvalidArgument, match="sequence_id"):
            await runner.run(_request(1), 1)  # not iterative: a sequence id is required
    finally:
        await runner.close()
    assert int(first.outputs["RUNS"][0, 0]) == int(last.outputs["RUNS"][0, 0]) == 1
    assert model.batches == [[(9, 1, 1)], [(9, 2, 0)]]


@on_a_loop
async def test_a_decoupled_iterative_request_streams_each_iterations_response() -> None:
    model = Stepper()
    runner = _runner(model, extra="model_transaction_policy { decoupled: true }\n")
    try:
        with pytest.raises(InvalidArgument, match="decoupled"):
            await runner.run(_request(1), 1)
        async with aclosing(runner.stream(_request(3), 1)) as items:
            streamed = [(int(i.outputs["RUNS"][0, 0]), i.final) async for i in items if i.outputs]
        assert streamed == [(1, False), (2, False), (3, True)]
    finally:
        await runner.close()


@on_a_loop
async def test_a_request_whose_client_left_runs_once_more_seen_cancelled_then_ends() -> None:
    model = Stepper()
    runner = _runner(model, extra="model_transaction_policy { decoupled: true }\n")
    try:
        items = runner.stream(_request(1_000_000), 1)
        assert (await items.__anext__()).outputs is not None
        await items.aclose()  # the client leaves mid-iteration
        for _ in range(500):  # bounded: at most 5 s
            if not runner.policy.sequences:
                break
            await asyncio.sleep(0.01)
        assert not runner.policy.sequences  # its slot is free
    finally:
        await runner.close()
    # Every run before the client left saw it waiting; exactly one run after saw it gone.
    assert model.cancelled.count(True) == 1 and model.cancelled[-1] is True


def test_a_model_that_takes_merged_batches_cannot_iterate() -> None:
    class Merged:
        def signature(self) -> None:
            return None

        def execute(self, inputs: dict[str, Any]) -> dict[str, Any]:
            return inputs

        def close(self) -> None:
            pass

    config = parse_config(CONFIG.replace("ITERATIVE", "iterative_sequence: true"))
    with pytest.raises(ModelLoadError, match="Triton Python model"):
        SequenceRunner("m", config, InstanceThreads("m", [Merged()]), 16, None, [])


def test_a_triton_model_answering_a_request_it_rescheduled_fails_that_request_only(
    tmp_path: Any,
) -> None:
    import types
    from pathlib import Path

    from tensorgate.backends import triton_utils as pb
    from tensorgate.backends.base import InstanceContext
    from tensorgate.backends.triton_python import TritonPythonInstance

    class TritonPythonModel:
        def execute(self, requests: list[Any]) -> list[Any]:
            responses = []
            for request in requests:
                request.set_release_flags(pb.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                answer = pb.Tensor("RUNS", np.array([[request.flags()]], np.int32))
                responses.append(pb.InferenceResponse([answer]))
            responses[0] = None  # the first keeps Triton's rule: None for a rescheduled one
            return responses

    module = types.ModuleType("model")
    module.TritonPythonModel = TritonPythonModel  # type: ignore[attr-defined]
    config = parse_config(CONFIG.replace("ITERATIVE", "iterative_sequence: true"))
    context = InstanceContext("m", 1, Path(tmp_path), Path(tmp_path) / "model.py", config, "cpu", 1)
    instance = TritonPythonInstance(module, context)
    steps = [
        SequenceStep({"N": np.array([[1]], np.int32)}, _request(1), corrid, 1) for corrid in (1, 2)
    ]
    kept, answered = instance.execute_steps(steps, iterative=True)
    assert kept.rescheduled and kept.error is None
    assert not answered.rescheduled and "returned a response for a request it rescheduled" in str(
        answered.error
    )
    with pytest.raises(pb.TritonModelException, match="iterative_sequence"):
        instance.execute_steps(steps, iterative=False)
