"""Triton's ragged batching: requests whose inputs differ in shape share a batch unpadded.

An input with `allow_ragged_batch: true` reaches the model as one 1-D tensor, every request's
elements one after the other, whatever their shapes. `batch_input` entries tell the model
where each request's elements are: tensors the batcher makes per batch, named `target_name`:

- BATCH_ELEMENT_COUNT: each request's element count of `source_input` ([requests]);
- BATCH_ACCUMULATED_ELEMENT_COUNT: the running total, where each request ends ([requests]);
- BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO: the same after a leading 0 ([requests + 1]);
- BATCH_MAX_ELEMENT_COUNT_AS_SHAPE: zeros shaped [the largest request's element count];
- BATCH_ITEM_SHAPE: each batch item's shape without the batch dimension ([items, rank]);
- BATCH_ITEM_SHAPE_FLATTEN: the same, flattened ([items * rank]).

Outputs come back one row per batch item, as in any batch, except those a `batch_output`
(BATCH_SCATTER_WITH_INPUT_SHAPE) names: the model returns them ragged too, and each request
gets its share shaped like its `source_input`, the output's fixed dimensions kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tensorgate_protos import model_config_pb2 as mc

from tensorgate.batching.assemble import Staging, split_outputs
from tensorgate.dataplane.types import Array
from tensorgate.errors import ModelExecutionError, ModelLoadError

_KIND = mc.BatchInput.Kind
_COUNT_TYPES: dict[int, type[np.generic]] = {
    mc.TYPE_INT32: np.int32,
    mc.TYPE_INT64: np.int64,
    mc.TYPE_FP32: np.float32,
}


@dataclass(frozen=True, slots=True)
class _BatchInput:
    kind: int
    target: str
    dtype: type[np.generic]
    source: str


@dataclass(frozen=True, slots=True)
class _Scatter:
    output: str
    source: str
    dims: tuple[int, ...]  # the output's dims, batch excluded; -1 takes the input's size


@dataclass(frozen=True, slots=True)
class RaggedBatching:
    """How one model's batches are put together and taken apart, read from its config."""

    ragged: frozenset[str]
    batch_inputs: tuple[_BatchInput, ...]
    scatters: tuple[_Scatter, ...]

    @classmethod
    def from_config(cls, config: mc.ModelConfig) -> RaggedBatching | None:
        """None for a model without ragged inputs, batch inputs or batch outputs; a config
        that cannot work fails the load naming the field."""
        ragged = frozenset(t.name for t in config.input if t.allow_ragged_batch)
        if not (ragged or config.batch_input or config.batch_output):
            return None
        if config.max_batch_size <= 0:
            raise ModelLoadError("ragged batching needs a batching model (max_batch_size > 0)")
        inputs = {t.name: t for t in config.input}
        batch_inputs = tuple(_batch_input_of(entry, inputs) for entry in config.batch_input)
        outputs = {t.name: t for t in config.output}
        scatters = tuple(
            scatter
            for entry in config.batch_output
            for scatter in _scatters(entry, inputs, outputs)
        )
        return cls(ragged, batch_inputs, scatters)

    @property
    def supplied(self) -> frozenset[str]:
        """The inputs the batcher makes, which clients must not send."""
        return frozenset(b.target for b in self.batch_inputs)

    def merge(self, stage: Staging, requests: list[dict[str, Array]]) -> dict[str, Array]:
        """The model's inputs: ragged ones concatenated flat, the rest stacked by rows, and
        the batch inputs."""
        regular = [{n: a for n, a in r.items() if n not in self.ragged} for r in requests]
        merged = dict(stage.merge(regular)) if regular[0] else {}
        for name in self.ragged:
            parts = [r[name].reshape(-1) for r in requests if name in r]
            if parts:
                merged[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        for entry in self.batch_inputs:
            merged[entry.target] = _batch_input(entry, requests)
        return merged

    def split(
        self, outputs: dict[str, Array], requests: list[dict[str, Array]], rows: list[int]
    ) -> list[dict[str, Array]]:
        """Each request's outputs: scattered ones by its source input's shape, the rest by
        its rows."""
        scattered = {s.output: s for s in self.scatters if s.output in outputs}
        plain = {n: a for n, a in outputs.items() if n not in scattered}
        parts = split_outputs(plain, rows) if plain else [{} for _ in requests]
        for name, scatter in scattered.items():
            flat = np.asarray(outputs[name]).reshape(-1)
            shapes = [_scatter_shape(scatter, r[scatter.source].shape) for r in requests]
            wanted = sum(math.prod(s) for s in shapes)
            if flat.size != wanted:
                raise ModelExecutionError(
                    f"output '{name}' has {flat.size} elements; scattered by the shapes of "
                    f"input '{scatter.source}' it needs {wanted}"
                )
            start = 0
            for part, shape in zip(parts, shapes, strict=True):
                count = math.prod(shape)
                part[name] = flat[start : start + count].reshape(shape)
                start += count
        return parts


def _batch_input_of(entry: mc.BatchInput, inputs: dict[str, mc.ModelInput]) -> _BatchInput:
    kind = _KIND.Name(entry.kind)
    if len(entry.target_name) != 1 or len(entry.source_input) != 1:
        raise ModelLoadError(f"batch_input {kind} needs one target_name and one source_input")
    target, source = entry.target_name[0], entry.source_input[0]
    if source not in inputs:
        raise ModelLoadError(f"batch_input {kind}: source_input '{source}' is not an input")
    if target in inputs:
        raise ModelLoadError(f"batch_input target '{target}' is also a client input")
    if entry.data_type not in _COUNT_TYPES:
        raise ModelLoadError(
            f"batch_input {kind} '{target}' must be TYPE_INT32, TYPE_INT64 or TYPE_FP32, "
            f"not {mc.DataType.Name(entry.data_type)}"
        )
    return _BatchInput(entry.kind, target, _COUNT_TYPES[entry.data_type], source)


def _scatters(
    entry: mc.BatchOutput, inputs: dict[str, mc.ModelInput], outputs: dict[str, mc.ModelOutput]
) -> list[_Scatter]:
    if len(entry.source_input) != 1 or entry.source_input[0] not in inputs:
        raise ModelLoadError("batch_output needs one source_input naming an input")
    source = inputs[entry.source_input[0]]
    scatters = []
    for target in entry.target_name:
        output = outputs.get(target)
        if output is None:
            raise ModelLoadError(f"batch_output target '{target}' is not an output")
        if len(output.dims) != len(source.dims):
            raise ModelLoadError(
                f"batch_output '{target}' has dims {list(output.dims)}: scattered with the "
                f"shape of '{source.name}', it needs as many ({list(source.dims)})"
            )
        scatters.append(_Scatter(target, source.name, tuple(output.dims)))
    return scatters


def _batch_input(entry: _BatchInput, requests: list[dict[str, Array]]) -> Array:
    shapes = [r[entry.source].shape for r in requests]
    counts = [math.prod(s) for s in shapes]
    kind = entry.kind
    if kind == _KIND.BATCH_ELEMENT_COUNT:
        return np.array(counts, dtype=entry.dtype)
    if kind == _KIND.BATCH_ACCUMULATED_ELEMENT_COUNT:
        return np.cumsum(counts).astype(entry.dtype)
    if kind == _KIND.BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO:
        return np.cumsum([0, *counts]).astype(entry.dtype)
    if kind == _KIND.BATCH_MAX_ELEMENT_COUNT_AS_SHAPE:
        return np.zeros(max(counts), dtype=entry.dtype)
    items = [shape[1:] for shape in shapes for _ in range(shape[0])]
    table = np.array(items, dtype=entry.dtype).reshape(len(items), len(shapes[0]) - 1)
    return table.reshape(-1) if kind == _KIND.BATCH_ITEM_SHAPE_FLATTEN else table


def _scatter_shape(scatter: _Scatter, source: tuple[int, ...]) -> tuple[int, ...]:
    return (
        source[0],
        *(s if d == -1 else d for d, s in zip(scatter.dims, source[1:], strict=True)),
    )
