"""Implicit sequence state: the config's states, and the sequence runner carrying each
sequence's state from one request to the next on real instance threads."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tensorgate.backends.base import InstanceContext, ModelSignature, TensorSignature
from tensorgate.backends.torch_backend import TorchFactory
from tensorgate.dataplane.types import Array, InferRequest
from tensorgate.errors import InvalidArgument, ModelExecutionError, ModelLoadError
from tensorgate.executors.instance_threads import InstanceThreads
from tensorgate.repository.config import parse_config
from tensorgate.runners.sequence import SequenceRunner
from tensorgate.runners.sequence_state import check_signature, state_tensors

STATE = """
  state [{{
    input_name: "STATE_IN"
    output_name: "STATE_OUT"
    data_type: TYPE_INT32
    dims: [ {dims} ]
    {initial}
  }}]
"""


def _config(dims: str = "1", initial: str = "", batch: int = 4, extra: str = "") -> str:
    return (
        f"max_batch_size: {batch}\n"
        'input [{ name: "INPUT", data_type: TYPE_INT32, dims: [ 1 ] }]\n'
        'output [{ name: "OUTPUT", data_type: TYPE_INT32, dims: [ -1 ] }]\n'
        f"{extra}"
        "sequence_batching {\n"
        "  control_input [{ name: 'START', control [{ kind: CONTROL_SEQUENCE_START, "
        "int32_false_true: [0, 1] }] }]\n"
        f"{STATE.format(dims=dims, initial=initial)}"
        "}\n"
    )


# The config's states -----------------------------------------------------------------------


def test_a_state_without_initial_state_starts_as_zeros_with_variable_dims_of_one(
    tmp_path: Path,
) -> None:
    (state,) = state_tensors(parse_config(_config(dims="-1, 3")), tmp_path)
    assert state.initial.shape == (1, 3)
    assert state.initial.dtype == np.int32
    assert not state.initial.any()


def test_initial_state_comes_from_zero_data_or_a_file_in_initial_state(tmp_path: Path) -> None:
    zero = 'initial_state: { data_type: TYPE_INT32, dims: [ 2 ], zero_data: true, name: "z" }'
    (state,) = state_tensors(parse_config(_config(dims="-1", initial=zero)), tmp_path)
    assert state.initial.tolist() == [0, 0]
    (tmp_path / "initial_state").mkdir()
    np.array([7, 8, 9], dtype=np.int32).tofile(tmp_path / "initial_state" / "start.bin")
    from_file = 'initial_state: { data_type: TYPE_INT32, dims: [ 3 ], data_file: "start.bin" }'
    (state,) = state_tensors(parse_config(_config(dims="-1", initial=from_file)), tmp_path)
    assert state.initial.tolist() == [7, 8, 9]


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (
            _config(extra='input [{ name: "STATE_IN", data_type: TYPE_INT32, dims: [1] }]\n'),
            "must not list it under input",
        ),
        (
            _config(
                initial="initial_state: { data_type: TYPE_INT32, dims: [ 2 ], zero_data: true }"
            ),
            "initial_state dims [2] do not fit the state's dims [1]",
        ),
        (
            _config(
                initial="initial_state: { data_type: TYPE_FP32, dims: [ 1 ], zero_data: true }"
            ),
            "initial_state is TYPE_FP32, the state TYPE_INT32",
        ),
        (
            _config(
                initial="initial_state: { data_type: TYPE_INT32, dims: [ 1 ], "
                'data_file: "missing.bin" }'
            ),
            "cannot read initial_state data_file initial_state/missing.bin",
        ),
        (
            _config(
                initial="initial_state: { data_type: TYPE_INT32, dims: [ 1 ], "
                'data_file: "../config.pbtxt" }'
            ),
            "must name a file in initial_state/",
        ),
        (_config(initial="initial_state: { data_type: TYPE_INT32, dims: [ 1 ] }"), "zero_data"),
        (_config(dims="0"), "dims must be positive sizes or -1"),
        (
            _config(extra='output [{ name: "STATE_OUT", data_type: TYPE_INT32, dims: [2] }]\n'),
            "listed under output with another data_type or dims",
        ),
    ],
    ids=[
        "listed-as-input",
        "initial-dims",
        "initial-type",
        "missing-file",
        "file-outside",
        "no-data",
        "zero-dim",
        "listed-output-differs",
    ],
)
def test_a_state_that_cannot_work_fails_the_load_naming_it(
    tmp_path: Path, config: str, reason: str
) -> None:
    with pytest.raises(ModelLoadError, match=r"sequence_batching\.state 'STATE_IN'") as raised:
        state_tensors(parse_config(config), tmp_path)
    assert reason in str(raised.value)


def test_a_data_file_of_the_wrong_size_fails_the_load_with_both_sizes(tmp_path: Path) -> None:
    (tmp_path / "initial_state").mkdir()
    (tmp_path / "initial_state" / "short.bin").write_bytes(b"\0" * 6)
    initial = 'initial_state: { data_type: TYPE_INT32, dims: [ 2 ], data_file: "short.bin" }'
    with pytest.raises(ModelLoadError, match="holds 6 bytes; \\[2\\] of TYPE_INT32 needs 8"):
        state_tensors(parse_config(_config(dims="-1", initial=initial)), tmp_path)


def test_the_model_file_must_have_the_state_tensors_with_the_states_type(tmp_path: Path) -> None:
    (state,) = state_tensors(parse_config(_config()), tmp_path)
    inputs = (TensorSignature("INPUT", "TYPE_INT32", (-1, 1)),)
    output = TensorSignature("OUTPUT", "TYPE_INT32", (-1, 1))
    with pytest.raises(ModelLoadError, match="the model file has no input 'STATE_IN'"):
        check_signature([state], ModelSignature(inputs, (output,)))
    inputs += (TensorSignature("STATE_IN", "TYPE_INT32", (-1, 1)),)
    wrong = TensorSignature("STATE_OUT", "TYPE_FP32", (-1, 1))
    with pytest.raises(ModelLoadError, match="output 'STATE_OUT' is TYPE_FP32, the state"):
        check_signature([state], ModelSignature(inputs, (output, wrong)))
    right = TensorSignature("STATE_OUT", "TYPE_INT32", (-1, 1))
    check_signature([state], ModelSignature(inputs, (output, right)))


# The runner --------------------------------------------------------------------------------


class Accumulator:
    """OUTPUT and the next state are the state followed by the input (a growing history),
    or, with `add`, the state plus the input. Records every batch's row count."""

    def __init__(self, add: bool = False, bad_state: bool = False) -> None:
        self.add = add
        self.bad_state = bad_state
        self.batches: list[int] = []
        self.gate: threading.Event | None = None  # when set, each batch waits for it

    def signature(self) -> ModelSignature | None:
        return None

    def execute(self, inputs: dict[str, Array]) -> dict[str, Array]:
        state, value = inputs["STATE_IN"], inputs["INPUT"]
        self.batches.append(len(value))
        if self.gate is not None:
            self.gate.wait(timeout=10)
        nxt = state + value if self.add else np.concatenate([state, value], axis=1)
        if self.bad_state:
            nxt = nxt.astype(np.float64)
        return {"OUTPUT": nxt, "STATE_OUT": nxt}

    def close(self) -> None:
        pass


def on_a_loop(case: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """A test that runs the coroutine on a fresh event loop."""

    @functools.wraps(case)
    def test(*args: Any, **kwargs: Any) -> None:
        asyncio.run(case(*args, **kwargs))

    return test


def _runner(config: str, model: Accumulator, tmp_path: Path) -> SequenceRunner:
    parsed = parse_config(config)
    states = state_tensors(parsed, tmp_path)
    return SequenceRunner("acc", parsed, InstanceThreads("acc", [model]), 16, None, states)


def _request(corrid: int, value: int, start: bool = False, end: bool = False) -> InferRequest:
    params = {"sequence_id": corrid, "sequence_start": start, "sequence_end": end}
    return InferRequest(
        "acc",
        inputs={"INPUT": np.array([[value]], dtype=np.int32)},
        datatypes={"INPUT": "INT32"},
        parameters=params,  # type: ignore[arg-type]
    )


async def _send(runner: SequenceRunner, *requests: InferRequest) -> list[list[int]]:
    done = await asyncio.gather(*(runner.run(r, 1) for r in requests))
    return [d.outputs["OUTPUT"][0].tolist() for d in done]


@on_a_loop
async def test_each_sequence_gets_back_its_own_state_and_a_new_start_begins_afresh(
    tmp_path: Path,
) -> None:
    model = Accumulator(add=True)
    runner = _runner(_config(), model, tmp_path)
    try:
        assert await _send(runner, _request(1, 5, start=True), _request(2, 100, start=True)) == [
            [5],
            [100],
        ]
        assert await _send(runner, _request(1, 2), _request(2, 20)) == [[7], [120]]
        assert await _send(runner, _request(1, 1, end=True)) == [[8]]
        # Sequence 1 ended: its state is gone, and a new sequence 1 starts from zero.
        assert await _send(runner, _request(1, 3, start=True), _request(2, 1, end=True)) == [
            [3],
            [121],
        ]
        with pytest.raises(InvalidArgument, match="has not started or has expired"):
            await runner.run(_request(2, 1), 1)
    finally:
        await runner.close()


@on_a_loop
async def test_initial_state_from_a_file_starts_every_sequence(tmp_path: Path) -> None:
    (tmp_path / "initial_state").mkdir()
    np.array([1000], dtype=np.int32).tofile(tmp_path / "initial_state" / "start")
    initial = 'initial_state: { data_type: TYPE_INT32, dims: [ 1 ], data_file: "start" }'
    runner = _runner(_config(initial=initial), Accumulator(add=True), tmp_path)
    try:
        assert await _send(runner, _request(1, 1, start=True), _request(2, 2, start=True)) == [
            [1001],
            [1002],
        ]
        assert await _send(runner, _request(1, 1, end=True), _request(2, 2, end=True)) == [
            [1002],
            [1004],
        ]
    finally:
        await runner.close()


@on_a_loop
async def test_states_of_different_shapes_never_share_a_batch(tmp_path: Path) -> None:
    model = Accumulator()
    runner = _runner(_config(dims="-1"), model, tmp_path)
    try:
        assert await _send(runner, _request(1, 1, start=True)) == [[0, 1]]
        # Hold the instance with sequence 3 while sequence 1 (a state of two values) and the
        # new sequence 2 (the initial state, one value) queue behind it.
        model.gate = threading.Event()
        held = asyncio.ensure_future(runner.run(_request(3, 5, start=True), 1))
        for _ in range(500):
            if len(model.batches) == 2:  # sequence 3's batch is running
                break
            await asyncio.sleep(0.01)
        queued = asyncio.gather(
            runner.run(_request(1, 2), 1), runner.run(_request(2, 7, start=True), 1)
        )
        await asyncio.sleep(0.05)
        model.batches.clear()
        model.gate.set()
        assert (await held).outputs["OUTPUT"][0].tolist() == [0, 5]
        first, second = await queued
        assert first.outputs["OUTPUT"][0].tolist() == [0, 1, 2]
        assert second.outputs["OUTPUT"][0].tolist() == [0, 7]
        # Two batches after sequence 3's, though both were ready: sequence 1 in slot 0, then
        # sequence 2 in slot 2 (slot 1 is sequence 3's).
        assert model.batches == [1, 3]
        assert await _send(runner, _request(1, 3, end=True), _request(2, 8)) == [
            [0, 1, 2, 3],
            [0, 7, 8],
        ]
    finally:
        await runner.close()


@on_a_loop
async def test_an_unbatched_model_gets_its_state_without_a_batch_dimension(
    tmp_path: Path,
) -> None:
    class Unbatched(Accumulator):
        def execute(self, inputs: dict[str, Array]) -> dict[str, Array]:
            assert inputs["STATE_IN"].shape == (1,)
            total = inputs["STATE_IN"] + inputs["INPUT"][0]
            return {"OUTPUT": total, "STATE_OUT": total}

    config = _config(batch=0).replace("dims: [ 1 ] }]\n", "dims: [ 1, 1 ] }]\n", 1)
    runner = _runner(config, Unbatched(), tmp_path)
    try:
        done = await runner.run(_request(1, 4, start=True), 1)
        assert done.outputs["OUTPUT"].tolist() == [4]
        done = await runner.run(_request(1, 5, end=True), 1)
        assert done.outputs["OUTPUT"].tolist() == [9]
    finally:
        await runner.close()


@on_a_loop
async def test_a_state_output_of_the_wrong_type_fails_the_request_and_keeps_the_state(
    tmp_path: Path,
) -> None:
    model = Accumulator(add=True)
    runner = _runner(_config(), model, tmp_path)
    try:
        assert await _send(runner, _request(1, 5, start=True)) == [[5]]
        model.bad_state = True
        with pytest.raises(ModelExecutionError, match="state output 'STATE_OUT' as float64"):
            await runner.run(_request(1, 1), 1)
        model.bad_state = False
        assert await _send(runner, _request(1, 2, end=True)) == [[7]]
    finally:
        await runner.close()


@on_a_loop
async def test_a_torchscript_model_gets_control_and_state_inputs_after_its_own(
    tmp_path: Path,
) -> None:
    torch = pytest.importorskip("torch")

    class RunningSum(torch.nn.Module):  # type: ignore[misc]
        def forward(self, value: Any, start: Any, state: Any) -> tuple[Any, Any]:
            total = torch.where(start.bool(), value, value + state)
            return total, total

    path = tmp_path / "1" / "model.pt"
    path.parent.mkdir()
    example = [torch.ones(1, 1, dtype=torch.int32)] * 3
    torch.jit.save(torch.jit.trace(RunningSum(), example), str(path))
    config = parse_config(_config())
    context = InstanceContext("acc", 1, tmp_path, path, config, "cpu", 1)
    states = state_tensors(config, tmp_path)
    instances = InstanceThreads("acc", [TorchFactory().create(context)])
    runner = SequenceRunner("acc", config, instances, 16, None, states)
    try:
        assert await _send(runner, _request(1, 5, start=True), _request(2, 9, start=True)) == [
            [5],
            [9],
        ]
        assert await _send(runner, _request(1, 1), _request(2, 1, end=True)) == [[6], [10]]
        assert await _send(runner, _request(1, 1, end=True)) == [[7]]
    finally:
        await runner.close()
