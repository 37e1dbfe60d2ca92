"""Check a decoded request against the model's config before it reaches a backend."""

from __future__ import annotations

from tensorgate.dataplane.reshape import reshaped
from tensorgate.dataplane.types import Array, InferRequest
from tensorgate.errors import InvalidArgument
from tensorgate.repository.config import ModelSpec


def _check_input(name: str, array: Array, declared: str, spec: ModelSpec) -> int:
    """Check one input's name, datatype and shape; return its batch size (1 if unbatched)."""
    model = spec.name
    tensor = spec.inputs.get(name)
    if tensor is None and name in spec.supplied:
        raise InvalidArgument(
            f"input '{name}' of model '{model}' is supplied by the batcher (a sequence control, "
            "implicit state or batch input): requests must not send it"
        )
    if tensor is None:
        raise InvalidArgument(
            f"unexpected inference input '{name}' for model '{model}'; "
            f"expected: {', '.join(spec.inputs)}"
        )
    if declared != tensor.datatype.name:
        raise InvalidArgument(
            f"input '{name}' of model '{model}' has datatype {declared}, "
            f"the model expects {tensor.datatype.name}"
        )
    shape = array.shape
    dims = shape
    rows = 1
    if spec.max_batch_size > 0:
        if len(shape) == 0 or shape[0] < 1:
            raise InvalidArgument(
                f"input '{name}' of model '{model}' has shape {list(shape)}: the model "
                "batches, so the first dimension is a batch size of at least 1"
            )
        if shape[0] > spec.max_batch_size:
            raise InvalidArgument(
                f"input '{name}' of model '{model}' has batch size {shape[0]}, "
                f"more than max_batch_size {spec.max_batch_size}"
            )
        rows, dims = shape[0], shape[1:]
    if dims != tensor.dims and (
        len(dims) != len(tensor.dims)
        or any(want != -1 and got != want for got, want in zip(dims, tensor.dims, strict=True))
    ):
        expected = tensor.metadata_shape(spec.max_batch_size)
        raise InvalidArgument(
            f"input '{name}' of model '{model}' has shape {list(shape)}, "
            f"the model expects {expected}"
        )
    return int(rows)


def validate_request(request: InferRequest, spec: ModelSpec) -> int:
    """Raise InvalidArgument on any mismatch; return the request's batch size (rows)."""
    model = spec.name
    declared = request.datatypes
    sizes = {
        _check_input(name, array, declared[name], spec) for name, array in request.inputs.items()
    }
    # Every given name was checked above, so as many inputs as the model has means none is
    # missing; only a shorter request needs the scan.
    if len(request.inputs) < len(spec.inputs):
        missing = [n for n, t in spec.inputs.items() if not t.optional and n not in request.inputs]
        if missing:
            raise InvalidArgument(f"model '{model}' expects inputs {missing} which are missing")
    if len(sizes) > 1:
        raise InvalidArgument(f"inputs of model '{model}' disagree on batch size: {sorted(sizes)}")
    if request.requested_outputs is not None:
        unknown = [n for n in request.requested_outputs if n not in spec.outputs]
        if unknown:
            raise InvalidArgument(
                f"model '{model}' has no outputs {unknown}; it has {', '.join(spec.outputs)}"
            )
    return sizes.pop() if sizes else 1


def reshape_inputs(request: InferRequest, spec: ModelSpec) -> None:
    """Give the model its inputs in their `reshape` shapes (views of the request's arrays)."""
    batched = spec.max_batch_size > 0
    for tensor in spec.reshaped_inputs:
        array = request.inputs.get(tensor.name)
        if array is None or tensor.reshape is None:
            continue
        try:
            request.inputs[tensor.name] = reshaped(array, tensor.dims, tensor.reshape, batched)
        except ValueError:
            raise InvalidArgument(
                f"input '{tensor.name}' of model '{spec.name}' has shape {list(array.shape)}, "
                f"which cannot be reshaped to the model's {list(tensor.reshape)}"
            ) from None
