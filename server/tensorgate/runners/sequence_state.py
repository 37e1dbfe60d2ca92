"""Implicit sequence state (`sequence_batching { state [...] }`), as Triton keeps it.

A stateful model names a state input and a state output. The sequence batcher supplies the
input on every request of a sequence: the sequence's initial state on its first request,
and on every later one the state output of the request before. The client never sends it
and sees the output only when the config's `output` list names it. The state lives with its
sequence and is dropped when the sequence ends or expires.

The initial state is the `initial_state` entry's data (`zero_data`, or `data_file` read from
the model directory's `initial_state/`), else zeros with every variable dimension set to 1.
Triton leaves that last case uninitialized; zeros are a valid value of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tensorgate_protos import model_config_pb2 as mc

from tensorgate.backends.base import ModelSignature
from tensorgate.dataplane.types import Array
from tensorgate.errors import ModelExecutionError, ModelLoadError
from tensorgate.protocol import datatypes

INITIAL_STATE_DIR = "initial_state"


@dataclass(frozen=True, slots=True)
class StateTensor:
    """One state of a sequence model: where it comes from, where it goes, its start."""

    input_name: str
    output_name: str
    dtype: np.dtype[Any]
    dims: tuple[int, ...]  # without the batch dimension; -1 is variable
    initial: Array  # the state a sequence starts with, without the batch dimension

    def check(self, model: str, array: Array, batch_rows: int) -> None:
        """Raise ModelExecutionError when a state output does not fit the declared state."""
        shape = array.shape[1:] if batch_rows else array.shape
        fits = (
            array.dtype == self.dtype
            and len(shape) == len(self.dims)
            and all(d == -1 or d == s for d, s in zip(self.dims, shape, strict=True))
            and (not batch_rows or (array.ndim > 0 and array.shape[0] >= batch_rows))
        )
        if not fits:
            batch = f"[{batch_rows}] + " if batch_rows else ""
            raise ModelExecutionError(
                f"model '{model}' returned state output '{self.output_name}' as "
                f"{array.dtype} {list(array.shape)}; the state is {self.dtype} "
                f"{batch}{list(self.dims)}"
            )


def state_tensors(config: mc.ModelConfig, model_dir: Path) -> list[StateTensor]:
    """The config's states; one that cannot work fails the load, naming it."""
    states = []
    taken = {t.name for t in config.input} | {
        c.name for c in config.sequence_batching.control_input
    }
    outputs_seen: set[str] = set()
    for entry in config.sequence_batching.state:
        where = f"sequence_batching.state '{entry.input_name}'"
        if not entry.input_name or not entry.output_name:
            raise ModelLoadError("every sequence_batching.state needs input_name and output_name")
        if entry.input_name in taken:
            raise ModelLoadError(
                f"{where}: the name is already an input or control input; the sequence "
                "batcher supplies the state, so config.pbtxt must not list it under input"
            )
        if entry.output_name in outputs_seen:
            raise ModelLoadError(f"{where}: output '{entry.output_name}' is another state's")
        taken.add(entry.input_name)
        outputs_seen.add(entry.output_name)
        type_name = mc.DataType.Name(entry.data_type)
        if type_name in ("TYPE_INVALID", "TYPE_STRING"):
            raise ModelLoadError(f"{where}: data_type {type_name} cannot hold a state")
        dtype = np.dtype(datatypes.BY_CONFIG_NAME[type_name].numpy)
        dims = tuple(int(d) for d in entry.dims)
        if not dims or any(d < -1 or d == 0 for d in dims):
            raise ModelLoadError(f"{where}: dims must be positive sizes or -1, got {list(dims)}")
        listed = [o for o in config.output if o.name == entry.output_name]
        if listed and (listed[0].data_type != entry.data_type or tuple(listed[0].dims) != dims):
            raise ModelLoadError(
                f"{where}: output '{entry.output_name}' is listed under output with another "
                "data_type or dims than the state's"
            )
        initial = _initial(entry, where, dtype, dims, model_dir)
        states.append(StateTensor(entry.input_name, entry.output_name, dtype, dims, initial))
    return states


def _initial(
    entry: mc.ModelSequenceBatching.State,
    where: str,
    dtype: np.dtype[Any],
    dims: tuple[int, ...],
    model_dir: Path,
) -> Array:
    if len(entry.initial_state) > 1:
        raise ModelLoadError(
            f"{where}: initial_state takes one entry, got {len(entry.initial_state)}"
        )
    if not entry.initial_state:
        return np.zeros([1 if d == -1 else d for d in dims], dtype=dtype)
    initial = entry.initial_state[0]
    shape = tuple(int(d) for d in initial.dims)
    if initial.data_type != entry.data_type:
        raise ModelLoadError(
            f"{where}: initial_state is {mc.DataType.Name(initial.data_type)}, the state "
            f"{mc.DataType.Name(entry.data_type)}"
        )
    fits = len(shape) == len(dims) and all(
        s > 0 and (d == -1 or d == s) for d, s in zip(dims, shape, strict=True)
    )
    if not fits:
        raise ModelLoadError(
            f"{where}: initial_state dims {list(shape)} do not fit the state's dims "
            f"{list(dims)} (every size fixed, the same rank)"
        )
    source = initial.WhichOneof("state_data")
    if source == "zero_data" and initial.zero_data:
        return np.zeros(shape, dtype=dtype)
    if source != "data_file":
        raise ModelLoadError(f"{where}: initial_state needs zero_data: true or a data_file")
    path = model_dir / INITIAL_STATE_DIR / initial.data_file
    if path.resolve().parent != (model_dir / INITIAL_STATE_DIR).resolve():
        raise ModelLoadError(
            f"{where}: initial_state data_file must name a file in {INITIAL_STATE_DIR}/"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(
            f"{where}: cannot read initial_state data_file {INITIAL_STATE_DIR}/"
            f"{initial.data_file}: {exc.strerror}"
        ) from None
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ModelLoadError(
            f"{where}: initial_state data_file {INITIAL_STATE_DIR}/{initial.data_file} holds "
            f"{len(data)} bytes; {list(shape)} of {mc.DataType.Name(entry.data_type)} needs "
            f"{expected}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def check_signature(states: list[StateTensor], signature: ModelSignature | None) -> None:
    """Where the model file declares its tensors, each state must be one of them."""
    if signature is None:
        return
    for state in states:
        for kind, name, tensors in (
            ("input", state.input_name, signature.inputs),
            ("output", state.output_name, signature.outputs),
        ):
            found = [t for t in tensors if t.name == name]
            if not found:
                raise ModelLoadError(
                    f"sequence_batching.state '{state.input_name}': the model file has no "
                    f"{kind} '{name}'"
                )
            wanted = datatypes.from_numpy(state.dtype).config_name
            if found[0].config_type != wanted:
                raise ModelLoadError(
                    f"sequence_batching.state '{state.input_name}': the model file's {kind} "
                    f"'{name}' is {found[0].config_type}, the state {wanted}"
                )


def next_states(
    model: str, states: list[StateTensor], outputs: dict[str, Array], rows: list[int] | None
) -> list[dict[str, Array]]:
    """Each sequence's states after a batch: the outputs' rows (None: an unbatched model's
    whole outputs), copied, since a backend may reuse its output buffers for the next batch."""
    for state in states:
        if state.output_name not in outputs:
            raise ModelExecutionError(
                f"model '{model}' did not return its state output '{state.output_name}'"
            )
        state.check(model, outputs[state.output_name], max(rows) + 1 if rows else 0)
    if rows is None:
        return [{s.input_name: np.array(outputs[s.output_name]) for s in states}]
    return [{s.input_name: np.array(outputs[s.output_name][row]) for s in states} for row in rows]
