"""Protocol messages to and from the client's numpy-first types (shared by sync and aio)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message
from tensorgate_protos import grpc_service_pb2 as pb

from tensorgate_client.tensors import datatype_of, from_raw, to_raw

Parameter = bool | int | float | str


@dataclass
class StreamResult:
    """One response of a stream: the request's id, and its outputs or the error message."""

    id: str
    outputs: dict[str, np.ndarray]
    error: str = ""


def set_parameter(target: Any, value: Parameter) -> None:
    """Fill an InferParameter from a plain value (bool, int, float or str)."""
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = value


def infer_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    version: str = "",
    outputs: Sequence[str] | None = None,
    id: str = "",
    parameters: Mapping[str, Parameter] | None = None,
) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying every input as raw contents (no per-element encoding)."""
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=id)
    for name, value in inputs.items():
        array = np.asarray(value)
        datatype = datatype_of(array)
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(to_raw(array, datatype))
    for name in outputs or ():
        request.outputs.add(name=name)
    for key, param in (parameters or {}).items():
        set_parameter(request.parameters[key], param)
    return request


def infer_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Outputs by name, as arrays over the response's raw contents (no copy)."""
    if len(response.raw_output_contents) != len(response.outputs):
        raise ValueError("the response carries typed contents; tensorgate always sends raw")
    return {
        tensor.name: from_raw(raw, tensor.datatype, list(tensor.shape))
        for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def to_dict(message: Message) -> dict[str, Any]:
    """A response message as a plain dict, with the .proto's field names."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
