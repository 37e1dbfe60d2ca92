"""Model warmup (`model_warmup` in config.pbtxt, as Triton's): samples run on every instance
before the model reports ready, so the first clients do not pay for lazy initialization
(kernel selection, allocator growth, JIT).

Each sample names its inputs with zero data, random data, or a file of raw tensor bytes in
the model's `warmup/` directory (BYTES as length-prefixed elements), a batch size (0 for a
model that does not batch) and a count. A sample that does not fit the model, or a model
that fails on it, fails the load with the reason.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tensorgate_protos import model_config_pb2 as mc

from tensorgate.backends.base import Backend
from tensorgate.dataplane.reshape import reshaped
from tensorgate.dataplane.types import Array
from tensorgate.errors import ModelLoadError, TensorgateError
from tensorgate.protocol import datatypes
from tensorgate.protocol.tensors import array_from_raw
from tensorgate.repository.config import ModelSpec

WARMUP_DIR = "warmup"


def _sample_inputs(
    sample: mc.ModelWarmup, config: mc.ModelConfig, model_dir: Path
) -> dict[str, Array]:
    declared = {i.name: i for i in config.input}
    batched = config.max_batch_size > 0
    if batched and not 0 < sample.batch_size <= config.max_batch_size:
        raise ModelLoadError(
            f"warmup '{sample.name}': batch_size must be 1 to max_batch_size "
            f"({config.max_batch_size}), got {sample.batch_size}"
        )
    if not batched and sample.batch_size > 1:
        raise ModelLoadError(f"warmup '{sample.name}': the model does not batch")
    rng = np.random.default_rng(0)
    inputs: dict[str, Array] = {}
    for name, spec in sorted(sample.inputs.items()):
        where = f"warmup '{sample.name}' input '{name}'"
        if name not in declared:
            raise ModelLoadError(f"{where}: the model has no such input")
        if spec.data_type != declared[name].data_type:
            raise ModelLoadError(f"{where}: data_type differs from the model's input")
        if any(d < 0 for d in spec.dims):
            raise ModelLoadError(f"{where}: dims must be concrete, got {list(spec.dims)}")
        dtype = datatypes.BY_CONFIG_NAME[mc.DataType.Name(spec.data_type)]
        shape = ([sample.batch_size] if batched else []) + list(spec.dims)
        inputs[name] = _data(spec, dtype, shape, rng, model_dir, where)
    missing = sorted(n for n, i in declared.items() if n not in inputs and not i.optional)
    if missing:
        raise ModelLoadError(f"warmup '{sample.name}': inputs {missing} are not given")
    return inputs


def _data(
    spec: mc.ModelWarmup.Input,
    dtype: datatypes.DataType,
    shape: list[int],
    rng: np.random.Generator,
    model_dir: Path,
    where: str,
) -> Array:
    kind = spec.WhichOneof("input_data_type")
    count = int(np.prod(shape))
    if kind == "input_data_file":
        path = model_dir / WARMUP_DIR / spec.input_data_file
        if not path.is_file():
            raise ModelLoadError(f"{where}: no file {WARMUP_DIR}/{spec.input_data_file}")
        try:
            return array_from_raw(where, path.read_bytes(), dtype, shape)
        except TensorgateError as exc:
            raise ModelLoadError(f"{where}: {exc.message}") from None
    if not dtype.itemsize:  # BYTES
        values = [b"" if kind == "zero_data" else rng.bytes(8) for _ in range(count)]
        return np.array(values, dtype=np.object_).reshape(shape)
    if kind == "zero_data" or kind is None:
        return np.zeros(shape, dtype=dtype.numpy)
    if dtype.numpy.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype.numpy)
    if dtype.numpy.kind in "iu":
        return rng.integers(0, 100, shape).astype(dtype.numpy)
    return rng.random(shape).astype(dtype.numpy)


def _drain(result: object) -> None:
    """A decoupled model's execute may yield: run it to its end."""
    if inspect.isgenerator(result) or isinstance(result, Iterator):
        for _ in result:
            pass


def _reshape(sample: mc.ModelWarmup, spec: ModelSpec, inputs: dict[str, Array]) -> None:
    batched = spec.max_batch_size > 0
    for tensor in spec.reshaped_inputs:
        if tensor.name not in inputs or tensor.reshape is None:
            continue
        try:
            inputs[tensor.name] = reshaped(
                inputs[tensor.name], tensor.dims, tensor.reshape, batched
            )
        except ValueError:
            raise ModelLoadError(
                f"warmup '{sample.name}' input '{tensor.name}': dims "
                f"{list(sample.inputs[tensor.name].dims)} do not fit the input's dims "
                f"{list(tensor.dims)}"
            ) from None


def warm_up(
    config: mc.ModelConfig, spec: ModelSpec, instances: list[Backend], model_dir: Path
) -> None:
    """Run every warmup sample `count` times (at least once) on every instance (blocking).
    Samples are given in the shapes clients send; inputs with a `reshape` are reshaped."""
    if not config.model_warmup:
        return
    samples = [(s, _sample_inputs(s, config, model_dir)) for s in config.model_warmup]
    for sample, inputs in samples:
        _reshape(sample, spec, inputs)
    for index, instance in enumerate(instances):
        for sample, inputs in samples:
            for _ in range(max(1, sample.count)):
                try:
                    execute_requests = getattr(instance, "execute_requests", None)
                    if execute_requests is not None:
                        for part in execute_requests([inputs]):
                            if isinstance(part, Exception):
                                raise part
                    else:
                        _drain(instance.execute(inputs))
                except Exception as exc:
                    raise ModelLoadError(
                        f"warmup '{sample.name}' failed on instance {index}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from None
