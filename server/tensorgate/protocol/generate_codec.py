"""Codec for the generate extension: flat JSON documents in, flat JSON documents out.

`POST /v2/models/{m}/generate` and `/generate_stream` take one JSON object whose keys name
the model's inputs (`{"text_input": "hi", "max_tokens": 8}`), plus optional `id` and
`parameters`; keys that are not inputs become request parameters, as Triton reads them.
A value is a scalar or a nested list; the model config gives its datatype, and a batching
model gets a batch dimension of 1. Each response is one object: `model_name`,
`model_version`, `id` when given, and every output by name, a scalar when it holds one
element and a flat list otherwise (BYTES as UTF-8 strings).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from tensorgate.dataplane.types import InferRequest, InferResponse
from tensorgate.errors import InvalidArgument
from tensorgate.protocol import datatypes
from tensorgate.protocol.rest_codec import array_from_json, json_output_data

_SCALARS = (bool, int, float, str)


def decode_generate_request(
    body: bytes,
    model_name: str,
    model_version: str,
    input_types: Mapping[str, datatypes.DataType],
    batched: bool,
) -> InferRequest:
    """A generate body as an inference request for a model with these inputs; `batched`:
    the model's inputs lead with a batch dimension."""
    try:
        document = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"malformed JSON body: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidArgument("the generate body must be a JSON object")
    request_id = document.pop("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("'id' must be a string")
    parameters = document.pop("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidArgument("'parameters' must be a JSON object")
    request = InferRequest(model_name, model_version, request_id, protocol="http")
    for key, value in document.items():
        datatype = input_types.get(key)
        if datatype is None:
            parameters[key] = value
            continue
        shape = list(np.shape(value)) or [1]
        if batched:
            shape = [1, *shape]
        request.inputs[key] = array_from_json(key, value, datatype, shape)
        request.datatypes[key] = datatype.name
    for key, value in parameters.items():
        if not isinstance(value, _SCALARS):
            raise InvalidArgument(
                f"parameter '{key}' must be a string, number or boolean "
                "(or name one of the model's inputs)"
            )
    request.parameters = parameters
    return request


def encode_generate_response(response: InferResponse) -> dict[str, Any]:
    """One response as the generate extension's flat JSON object."""
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id:
        document["id"] = response.id
    for name, array in response.outputs.items():
        data = json_output_data(name, array, response.datatypes[name])
        values = data.tolist() if isinstance(data, np.ndarray) else data
        document[name] = values[0] if len(values) == 1 else values
    return document
