"""Codec between the gRPC ModelInfer messages and the internal request and response types."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from tensorgate_protos import grpc_service_pb2 as pb

from tensorgate.dataplane.classification import classify
from tensorgate.dataplane.shared_memory import (
    BYTE_SIZE,
    OFFSET,
    REGION,
    Placement,
    SharedMemoryRegistry,
    placement,
    registry,
)
from tensorgate.dataplane.types import Array, InferRequest, InferResponse, ParameterValue
from tensorgate.errors import InvalidArgument
from tensorgate.protocol import datatypes
from tensorgate.protocol.tensors import (
    LIMITS,
    array_from_raw,
    array_to_raw,
    array_view,
    check_bytes_element,
    check_shape,
)

# An output's raw contents as it goes on the wire: bytes, or a view of the array's memory.
RawOutput = TypeVar("RawOutput", bytes, bytes | memoryview)


def decode_parameters(params: Mapping[str, pb.InferParameter]) -> dict[str, ParameterValue]:
    """InferParameter map to plain Python values (uint64 and double variants included)."""
    out: dict[str, ParameterValue] = {}
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        if choice is not None:
            out[key] = getattr(param, choice)
    return out


def encode_parameters(target: Any, params: Mapping[str, Any]) -> None:
    """Fill an InferParameter map field from plain Python values."""
    for key, value in params.items():
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            if value >= 2**63:
                param.uint64_param = value
            else:
                param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = str(value)


def _array_from_contents(
    tensor: pb.ModelInferRequest.InferInputTensor, datatype: datatypes.DataType
) -> Array:
    shape = list(tensor.shape)
    count = check_shape(tensor.name, shape)
    if datatype.contents_field is None:
        raise InvalidArgument(
            f"input '{tensor.name}': {datatype.name} has no typed contents field; "
            "send it in raw_input_contents"
        )
    values = getattr(tensor.contents, datatype.contents_field)
    if len(values) != count:
        raise InvalidArgument(
            f"input '{tensor.name}' has {len(values)} elements in "
            f"contents.{datatype.contents_field}"
            f", but shape {shape} needs {count}"
        )
    if datatype.name == "BYTES":
        for index, value in enumerate(values):
            if len(value) > LIMITS.max_bytes_element:
                check_bytes_element(tensor.name, index, len(value))
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    return np.array(values, dtype=datatype.numpy).reshape(shape)


class LargeInferRequest:
    """A large ModelInferRequest as protocol/grpc_wire.py reads it: `message` holds every
    field but the raw inputs, which are in `raw`, views of the received bytes. Its other
    attributes are the message's, so transports read `model_name` or `id` as on a message."""

    __slots__ = ("message", "raw")

    def __init__(self, message: pb.ModelInferRequest, raw: list[memoryview]) -> None:
        self.message = message
        self.raw = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message, name)


def decode_infer_request(
    received: pb.ModelInferRequest | LargeInferRequest, shm: SharedMemoryRegistry | None = None
) -> InferRequest:
    """Decode a ModelInferRequest; raw contents become read-only views, never copies, and
    inputs in shared memory views of their region."""
    message: pb.ModelInferRequest
    raw: Sequence[bytes | memoryview]
    if isinstance(received, LargeInferRequest):
        message, raw = received.message, received.raw
    else:
        message, raw = received, received.raw_input_contents
    tensors = message.inputs
    in_shm = sum(1 for t in tensors if t.parameters and REGION in t.parameters)
    if raw and len(raw) != len(tensors) - in_shm:
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries but the request has "
            f"{len(tensors) - in_shm} inputs outside shared memory; when raw contents are "
            "used every such input needs one"
        )
    params = message.parameters
    request = InferRequest(
        model_name=message.model_name,
        model_version=message.model_version,
        id=message.id,
        parameters=decode_parameters(params) if params else {},
    )
    inputs, declared = request.inputs, request.datatypes
    index = 0  # the next raw entry
    for tensor in tensors:
        name = tensor.name
        if name in inputs:
            raise InvalidArgument(f"input '{name}' appears more than once")
        datatype = datatypes.BY_NAME.get(tensor.datatype) or datatypes.from_name(tensor.datatype)
        if in_shm and tensor.parameters and REGION in tensor.parameters:
            inputs[name] = _array_from_shm(tensor, datatype, shm)
        elif raw:
            if tensor.HasField("contents"):
                raise InvalidArgument(
                    f"input '{name}' has both typed contents and raw_input_contents"
                )
            inputs[name] = array_from_raw(name, raw[index], datatype, tensor.shape)
            index += 1
        else:
            inputs[name] = _array_from_contents(tensor, datatype)
        declared[name] = datatype.name
    if message.outputs:
        _requested_outputs(message, request, shm)
    return request


def _requested_outputs(
    message: pb.ModelInferRequest, request: InferRequest, shm: SharedMemoryRegistry | None
) -> None:
    outputs = message.outputs
    request.requested_outputs = [out.name for out in outputs]
    for out in outputs:
        if not out.parameters:
            continue
        params = decode_parameters(out.parameters)
        place = placement(params, f"output '{out.name}'")
        if place is not None:
            registry(shm)
            request.output_regions = request.output_regions or {}
            request.output_regions[out.name] = place
        if "classification" in params:
            classify(request, out.name, params["classification"])


def _array_from_shm(
    tensor: pb.ModelInferRequest.InferInputTensor,
    datatype: datatypes.DataType,
    shm: SharedMemoryRegistry | None,
) -> Array:
    where = f"input '{tensor.name}'"
    if tensor.HasField("contents"):
        raise InvalidArgument(f"{where} has both typed contents and shared memory")
    place = placement(decode_parameters(tensor.parameters), where)
    assert place is not None
    return array_from_raw(tensor.name, registry(shm).read(place, where), datatype, tensor.shape)


def encode_infer_response(
    response: InferResponse,
    regions: dict[str, Placement] | None = None,
    shm: SharedMemoryRegistry | None = None,
    into: pb.ModelInferResponse | None = None,
) -> pb.ModelInferResponse:
    """Encode a response with every output in raw_output_contents (one copy per tensor), or,
    for outputs asked for in shared memory, written there (their raw entry left empty, so
    the others keep their places).

    `into`: an empty message to fill, such as a stream response's `infer_response`; handing
    a finished message to the stream response's constructor would copy every tensor again.
    """
    message = pb.ModelInferResponse() if into is None else into
    message.raw_output_contents.extend(
        encode_response_header(message, response, regions, shm, array_to_raw)
    )
    return message


def encode_response_header(
    message: pb.ModelInferResponse,
    response: InferResponse,
    regions: dict[str, Placement] | None,
    shm: SharedMemoryRegistry | None,
    raw_of: Callable[[np.ndarray, datatypes.DataType], RawOutput],
) -> list[RawOutput]:
    """Fill `message` with everything but the raw outputs; write the outputs asked for in
    shared memory there. Returns each output's raw contents (`raw_of`), in output order,
    empty for those in shared memory."""
    message.model_name = response.model_name
    message.model_version = response.model_version
    message.id = response.id
    if response.parameters:
        encode_parameters(message.parameters, response.parameters)
    raw_outputs: list[RawOutput] = []
    for name, array in response.outputs.items():
        datatype = datatypes.BY_NAME[response.datatypes[name]]
        output = message.outputs.add(name=name, datatype=datatype.name, shape=array.shape)
        if regions is not None and name in regions:
            assert shm is not None
            place = regions[name]
            shm.write(place, array_view(array, datatype), f"output '{name}'")
            output.parameters[REGION].string_param = place.region
            output.parameters[OFFSET].int64_param = place.offset
            output.parameters[BYTE_SIZE].int64_param = place.byte_size
            raw_outputs.append(b"")
            continue
        raw_outputs.append(raw_of(array, datatype))
    return raw_outputs
