"""Codec between the gRPC ModelInfer messages and the internal request and response types."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from tensorgate_protos import grpc_service_pb2 as pb

from tensorgate.dataplane.types import Array, InferRequest, InferResponse, ParameterValue
from tensorgate.errors import InvalidArgument
from tensorgate.protocol import datatypes
from tensorgate.protocol.tensors import (
    LIMITS,
    array_from_raw,
    array_to_raw,
    check_bytes_element,
    check_shape,
)


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


def decode_infer_request(message: pb.ModelInferRequest) -> InferRequest:
    """Decode a ModelInferRequest; raw contents become read-only views, never copies."""
    raw = message.raw_input_contents
    tensors = message.inputs
    if raw and len(raw) != len(tensors):
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries but the request has "
            f"{len(tensors)} inputs; when raw contents are used every input needs one"
        )
    params = message.parameters
    request = InferRequest(
        model_name=message.model_name,
        model_version=message.model_version,
        id=message.id,
        parameters=decode_parameters(params) if params else {},
    )
    inputs, declared = request.inputs, request.datatypes
    for index, tensor in enumerate(tensors):
        name = tensor.name
        if name in inputs:
            raise InvalidArgument(f"input '{name}' appears more than once")
        datatype = datatypes.BY_NAME.get(tensor.datatype) or datatypes.from_name(tensor.datatype)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidArgument(
                    f"input '{name}' has both typed contents and raw_input_contents"
                )
            inputs[name] = array_from_raw(name, raw[index], datatype, tensor.shape)
        else:
            inputs[name] = _array_from_contents(tensor, datatype)
        declared[name] = datatype.name
    outputs = message.outputs
    if outputs:
        request.requested_outputs = [out.name for out in outputs]
        for out in outputs:
            if out.parameters and "classification" in out.parameters:
                raise InvalidArgument(
                    f"output '{out.name}': the classification extension is not supported"
                )
    return request


def encode_infer_response(response: InferResponse) -> pb.ModelInferResponse:
    """Encode a response with every output in raw_output_contents (one copy per tensor)."""
    message = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id,
    )
    if response.parameters:
        encode_parameters(message.parameters, response.parameters)
    raw_outputs: list[bytes] = []
    for name, array in response.outputs.items():
        datatype = datatypes.BY_NAME[response.datatypes[name]]
        message.outputs.add(name=name, datatype=datatype.name, shape=array.shape)
        raw_outputs.append(array_to_raw(array, datatype))
    message.raw_output_contents.extend(raw_outputs)
    return message
