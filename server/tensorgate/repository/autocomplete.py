"""Complete a model config from the model file's signature, and check that the two agree.

Triton's rules, which existing repositories rely on:
1. No inputs/outputs in the config: take them from the model file.
2. max_batch_size unset, config fully auto-completed, and every tensor's first dimension
   dynamic: the model batches; use the default max batch size and enable dynamic batching.
3. Declared tensors must exist in the model, with the same datatype and compatible dims
   (a dynamic model dimension accepts any declared size).
"""

from __future__ import annotations

from collections.abc import Sequence

from tensorgate_protos import model_config_pb2 as mc

from tensorgate.backends.base import ModelSignature, TensorSignature
from tensorgate.errors import ModelLoadError


def _batchable(signature: ModelSignature) -> bool:
    tensors = [*signature.inputs, *signature.outputs]
    return bool(tensors) and all(t.shape and t.shape[0] == -1 for t in tensors)


def _fill(target: Sequence[TensorSignature], add: object, strip_batch: bool) -> None:
    for tensor in target:
        dims = tensor.shape[1:] if strip_batch else tensor.shape
        entry = add()  # type: ignore[operator]
        entry.name = tensor.name
        entry.data_type = mc.DataType.Value(tensor.config_type)
        entry.dims.extend(dims)


def _check(
    kind: str,
    declared: Sequence[mc.ModelInput] | Sequence[mc.ModelOutput],
    actual: Sequence[TensorSignature],
    max_batch_size: int,
) -> None:
    by_name = {t.name: t for t in actual}
    for tensor in declared:
        model = by_name.get(tensor.name)
        if model is None:
            raise ModelLoadError(
                f"config {kind} '{tensor.name}' is not in the model file; the model has "
                f"{', '.join(sorted(by_name)) or 'none'}"
            )
        declared_type = mc.DataType.Name(tensor.data_type)
        if declared_type != model.config_type:
            raise ModelLoadError(
                f"config {kind} '{tensor.name}' is {declared_type} but the model file has "
                f"{model.config_type}"
            )
        shape = model.shape
        if max_batch_size > 0:
            if not shape or shape[0] != -1:
                raise ModelLoadError(
                    f"max_batch_size is {max_batch_size} but model {kind} '{tensor.name}' has "
                    f"a fixed first dimension {list(shape)}; set max_batch_size: 0"
                )
            shape = shape[1:]
        # With a reshape, the model file holds the reshaped shape; clients see dims.
        dims = list(tensor.reshape.shape if tensor.HasField("reshape") else tensor.dims)
        compatible = len(dims) == len(shape) and all(
            m == -1 or d == -1 or m == d for d, m in zip(dims, shape, strict=True)
        )
        if not compatible:
            what = "reshape" if tensor.HasField("reshape") else "dims"
            batch = " (after the batch dimension)" if max_batch_size > 0 else ""
            raise ModelLoadError(
                f"config {kind} '{tensor.name}' has {what} {dims} but the model file has "
                f"{list(shape)}{batch}"
            )
    if kind == "input":
        names = {t.name for t in declared}
        missing = [t.name for t in actual if t.name not in names]
        if missing:
            raise ModelLoadError(f"config lacks model inputs {missing}")


def complete_config(
    config: mc.ModelConfig,
    signature: ModelSignature | None,
    default_max_batch_size: int,
    fill: bool = True,
) -> None:
    """Fill what the config leaves out (unless `fill` is off: --disable-auto-complete-config)
    and reject what contradicts the model file."""
    if not fill and (not config.input or not config.output):
        raise ModelLoadError(
            "config.pbtxt must list input and output: the server runs with "
            "--disable-auto-complete-config"
        )
    if signature is None:
        if not config.input or not config.output:
            raise ModelLoadError(
                f"backend '{config.backend}' cannot read tensor names from the model file; "
                "config.pbtxt must list input and output"
            )
        return
    auto_inputs = not config.input
    auto_outputs = not config.output
    if auto_inputs and auto_outputs and config.max_batch_size == 0 and _batchable(signature):
        config.max_batch_size = default_max_batch_size
        if config.WhichOneof("scheduling_choice") is None and default_max_batch_size > 0:
            config.dynamic_batching.SetInParent()
    strip = config.max_batch_size > 0
    if auto_inputs:
        _fill(signature.inputs, config.input.add, strip)
    if auto_outputs:
        _fill(signature.outputs, config.output.add, strip)
    _check("input", config.input, signature.inputs, config.max_batch_size)
    _check("output", config.output, signature.outputs, config.max_batch_size)
