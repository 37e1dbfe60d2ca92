"""Codec between KServe v2 REST inference bodies and the internal request and response types.

A body is a JSON document, optionally followed by binary tensor data (Triton's binary tensor
extension): the `Inference-Header-Content-Length` header gives the JSON part's length, each
binary input declares `parameters.binary_data_size`, and the binary parts follow the JSON in
input order. Binary inputs become read-only views of the body, never copies; JSON `data` may be
nested or flat and is read in row-major order. FP16 and BF16 have no JSON form and travel only
as binary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

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
    VIEW_MIN_BYTES,
    array_from_raw,
    array_to_raw,
    array_view,
    check_bytes_element,
    check_shape,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
_BINARY_ONLY = frozenset({"FP16", "BF16"})
# numpy kinds that JSON data may hold for each datatype's kind.
_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}
_SCALARS = frozenset({bool, int, float, str})  # JSON values a parameter may hold
_KIND_NAMES = {
    "b": "booleans",
    "i": "integers",
    "u": "integers",
    "f": "floating-point numbers",
    "U": "strings",
    "O": "mixed values",
}


@dataclass(slots=True)
class RestInferRequest:
    """A decoded request and how the client wants each output sent back."""

    request: InferRequest
    binary_outputs: dict[str, bool]  # per requested output, when it says
    binary_by_default: bool  # `binary_data_output`


def _expect(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise InvalidArgument(f"{where} must be {what}, got {type(value).__name__}")
    return value


def _parameters(value: Any, where: str) -> dict[str, ParameterValue]:
    # The common, valid case costs one type test per value (orjson yields exact types);
    # the descriptive checks run only to name what is wrong.
    if type(value) is dict and all(type(item) in _SCALARS for item in value.values()):
        return value
    _expect(value, dict, where, "an object")
    for key, item in value.items():
        if not isinstance(item, bool | int | float | str):
            raise InvalidArgument(
                f"{where}.{key} must be a boolean, number or string, got {type(item).__name__}"
            )
    return value  # type: ignore[no-any-return]


def _shape(value: Any, where: str) -> list[int]:
    if type(value) is list and all(type(dim) is int for dim in value):
        return value
    _expect(value, list, where, "an array of integers")
    for dim in value:
        _expect(dim, int, where, "an array of integers")
    return value  # type: ignore[no-any-return]


def _tensor_name(tensor: Any, kind: str, index: int) -> str:
    """The name of `inputs[index]` or `outputs[index]`, once the entry is known to be an object.

    Inline `type() is` tests first: the `where` strings are built only for an error.
    """
    if type(tensor) is not dict:
        _expect(tensor, dict, f"{kind}[{index}]", "an object")
    name = tensor.get("name")
    if type(name) is not str:
        _expect(name, str, f"{kind}[{index}].name", "a string")
    return name  # type: ignore[no-any-return]


def _flatten(data: Any, out: list[Any]) -> None:
    if isinstance(data, list):
        for item in data:
            _flatten(item, out)
    else:
        out.append(data)


def _bytes_from_json(name: str, data: Any, count: int) -> Array:
    flat: list[Any] = []
    _flatten(data, flat)
    if len(flat) != count:
        raise InvalidArgument(
            f"input '{name}' has {len(flat)} elements in data, shape needs {count}"
        )
    array = np.empty(count, dtype=np.object_)
    for index, item in enumerate(flat):
        if not isinstance(item, str):
            raise InvalidArgument(
                f"input '{name}': BYTES data must be strings, element {index} is "
                f"{type(item).__name__}"
            )
        encoded = item.encode("utf-8")
        if len(encoded) > LIMITS.max_bytes_element:
            check_bytes_element(name, index, len(encoded))
        array[index] = encoded
    return array


def _uint64_from_json(name: str, data: Any) -> Array:
    # Values of 2**63 and above make numpy guess float64; read them as integers instead.
    flat: list[Any] = []
    _flatten(data, flat)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
        raise InvalidArgument(f"input '{name}': UINT64 data must be integers")
    try:
        return np.array(flat, dtype=np.uint64)
    except OverflowError:
        raise InvalidArgument(f"input '{name}' has a value out of range for UINT64") from None


def array_from_json(name: str, data: Any, datatype: datatypes.DataType, shape: list[int]) -> Array:
    """A JSON `data` value (nested or flat, row-major) as an array of `shape` and `datatype`."""
    count = check_shape(name, shape)
    if datatype.name in _BINARY_ONLY:
        raise InvalidArgument(
            f"input '{name}': {datatype.name} has no JSON form; send it as binary data "
            "(parameters.binary_data_size and the Inference-Header-Content-Length header)"
        )
    if not datatype.itemsize:
        return _bytes_from_json(name, data, count).reshape(shape)
    if not isinstance(data, list):
        data = [data]
    try:
        probe = np.array(data)
    except ValueError:
        raise InvalidArgument(f"input '{name}': data is a ragged nested array") from None
    want = datatype.numpy.kind
    if probe.dtype.kind not in _ACCEPTED_KINDS[want] and probe.size:
        if datatype.name == "UINT64" and probe.dtype.kind in "fO":
            probe = _uint64_from_json(name, data)
        else:
            held = _KIND_NAMES.get(probe.dtype.kind, probe.dtype.kind)
            raise InvalidArgument(f"input '{name}' is {datatype.name} but its data holds {held}")
    if probe.size != count:
        raise InvalidArgument(
            f"input '{name}' has {probe.size} elements in data, but shape {shape} needs {count}"
        )
    if want in "iu" and probe.size:
        info = np.iinfo(datatype.numpy)
        if int(probe.min()) < info.min or int(probe.max()) > info.max:
            raise InvalidArgument(f"input '{name}' has a value out of range for {datatype.name}")
    return probe.astype(datatype.numpy, copy=False).reshape(shape)


def _binary_input(tensor: Any, binary: memoryview, offset: int, request: InferRequest) -> int:
    """The common input, decoded with the fewest steps: -1 when it is anything else.

    That is an object with a string name not seen before, a fixed-size datatype, a shape of
    non-negative integers and `parameters` holding only a `binary_data_size` that matches
    the shape and fits in the body. Everything else (JSON data, BYTES, every error) goes
    through `_input`, which names what is wrong; both give the same result here.
    """
    if type(tensor) is not dict or "data" in tensor:
        return -1
    name, type_name, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    params = tensor.get("parameters")
    if type(name) is not str or type(type_name) is not str or type(shape) is not list:
        return -1
    if type(params) is not dict or len(params) != 1 or name in request.inputs:
        return -1
    datatype = datatypes.BY_NAME.get(type_name)
    size = params.get("binary_data_size")
    if datatype is None or not datatype.itemsize or type(size) is not int:
        return -1
    count = 1
    for dim in shape:
        if type(dim) is not int or dim < 0 or dim > LIMITS.max_elements:
            return -1
        count *= dim
    end = offset + size
    if count * datatype.itemsize != size or end > len(binary) or count > LIMITS.max_elements:
        return -1
    request.inputs[name] = np.frombuffer(binary[offset:end], datatype.numpy).reshape(shape)
    request.datatypes[name] = type_name
    return end


def _input(
    tensor: Any,
    index: int,
    binary: memoryview,
    offset: int,
    request: InferRequest,
    shm: SharedMemoryRegistry | None = None,
) -> int:
    """Decode one input into `request`; returns the new offset into the binary section."""
    name, datatype, shape = _tensor_header(tensor, index)
    if name in request.inputs:
        raise InvalidArgument(f"input '{name}' appears more than once")
    params = tensor.get("parameters")
    if type(params) is dict and REGION in params:
        where = f"input '{name}'"
        place = placement(_parameters(params, f"{where} parameters"), where)
        assert place is not None
        if "data" in tensor:
            raise InvalidArgument(f"{where} has both data and shared memory")
        request.inputs[name] = array_from_raw(
            name, registry(shm).read(place, where), datatype, shape
        )
        request.datatypes[name] = datatype.name
        return offset
    size = _binary_size(tensor, name)
    if size is not None:
        end = offset + size
        if end > len(binary):
            raise InvalidArgument(
                f"input '{name}' declares {size} bytes of binary data at offset {offset}, "
                f"but the body's binary part has {len(binary)} bytes"
            )
        request.inputs[name] = array_from_raw(name, binary[offset:end], datatype, shape)
        offset = end
    elif "data" in tensor:
        request.inputs[name] = array_from_json(name, tensor["data"], datatype, shape)
    else:
        raise InvalidArgument(f"input '{name}' has neither data nor parameters.binary_data_size")
    request.datatypes[name] = datatype.name
    return offset


def _tensor_header(tensor: Any, index: int) -> tuple[str, datatypes.DataType, list[int]]:
    """An input's name, datatype and shape, checked."""
    name = _tensor_name(tensor, "inputs", index)
    type_name = tensor.get("datatype")
    if type(type_name) is not str:
        _expect(type_name, str, f"inputs[{index}].datatype", "a string")
    datatype = datatypes.BY_NAME.get(type_name) or datatypes.from_name(type_name)
    return name, datatype, _shape(tensor.get("shape"), f"input '{name}' shape")


def _binary_size(tensor: dict[str, Any], name: str) -> int | None:
    """The input's `binary_data_size`, or None when it carries JSON data."""
    params = tensor.get("parameters")
    if not params:
        return None
    size = _parameters(params, f"input '{name}' parameters").get("binary_data_size")
    if size is None:
        return None
    if "data" in tensor:
        raise InvalidArgument(f"input '{name}' has both data and binary_data_size")
    if type(size) is not int or size < 0:
        raise InvalidArgument(f"input '{name}': binary_data_size must be a non-negative integer")
    return size


def _outputs(value: Any, decoded: RestInferRequest) -> None:
    if type(value) is not list:
        _expect(value, list, "outputs", "an array")
    names: list[str] = []
    for index, tensor in enumerate(value):
        if type(tensor) is dict:  # the common entry, {"name", "parameters": {"binary_data"}}
            name, params = tensor.get("name"), tensor.get("parameters")
            if type(name) is str and type(params) is dict and len(params) == 1:
                binary = params.get("binary_data")
                if type(binary) is bool:
                    decoded.binary_outputs[name] = binary
                    names.append(name)
                    continue
        name = _tensor_name(tensor, "outputs", index)
        params = tensor.get("parameters")
        if params:
            checked = _parameters(params, f"output '{name}' parameters")
            place = placement(checked, f"output '{name}'")
            if place is not None:
                request = decoded.request
                request.output_regions = request.output_regions or {}
                request.output_regions[name] = place
            if "classification" in checked:
                classify(decoded.request, name, checked["classification"])
            if "binary_data" in params:
                decoded.binary_outputs[name] = bool(params["binary_data"])
        names.append(name)
    decoded.request.requested_outputs = names


def decode_infer_request(
    body: bytes,
    header_length: int | None,
    model_name: str,
    model_version: str,
    shm: SharedMemoryRegistry | None = None,
) -> RestInferRequest:
    """Decode a REST inference body; `header_length` is Inference-Header-Content-Length."""
    view = memoryview(body)
    if header_length is None:
        document, binary = view, view[0:0]
    else:
        if header_length < 0 or header_length > len(body):
            raise InvalidArgument(
                f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes"
            )
        document, binary = view[:header_length], view[header_length:]
    try:
        doc = orjson.loads(document)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"malformed JSON in the inference request: {exc}") from None
    if type(doc) is not dict:
        _expect(doc, dict, "the inference request", "a JSON object")
    params = doc.get("parameters")
    binary_by_default = False
    if params:
        params = dict(_parameters(params, "parameters"))
        binary_by_default = bool(params.pop("binary_data_output", False))
    else:
        params = {}
    request_id = doc.get("id", "")
    if type(request_id) is not str:
        _expect(request_id, str, "id", "a string")
    request = InferRequest(model_name, model_version, request_id, parameters=params)
    decoded = RestInferRequest(request, {}, binary_by_default)
    inputs = doc.get("inputs")
    if type(inputs) is not list:
        _expect(inputs, list, "inputs", "an array of input tensors")
    offset = 0
    for index, tensor in enumerate(inputs):
        end = _binary_input(tensor, binary, offset, request)
        offset = end if end >= 0 else _input(tensor, index, binary, offset, request, shm)
    if offset != len(binary):
        raise InvalidArgument(
            f"the body has {len(binary)} bytes of binary data but the inputs' "
            f"binary_data_size add up to {offset}"
        )
    outputs = doc.get("outputs")
    if outputs is not None or "outputs" in doc:
        _outputs(outputs, decoded)
        if request.output_regions:
            registry(shm)
    return decoded


def json_output_data(name: str, array: Array, datatype: str) -> Any:
    """An output as JSON data: a flat array, BYTES as UTF-8 strings (binary-only types refused)."""
    if datatype in _BINARY_ONLY:
        raise InvalidArgument(
            f"output '{name}' is {datatype}, which has no JSON form; request it with "
            "parameters.binary_data=true (or binary_data_output)"
        )
    flat = np.ascontiguousarray(array).reshape(-1)
    if datatype != "BYTES":
        return flat
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in flat.tolist()]
    except UnicodeDecodeError:
        raise InvalidArgument(
            f"output '{name}' holds bytes that are not UTF-8; request it with "
            "parameters.binary_data=true"
        ) from None


def encode_infer_response(
    response: InferResponse,
    binary_outputs: Mapping[str, bool],
    binary_by_default: bool,
    regions: Mapping[str, Placement] | None = None,
    shm: SharedMemoryRegistry | None = None,
) -> tuple[bytes, int | None]:
    """The response body and, when it carries binary outputs, the JSON part's length.
    Outputs asked for in shared memory are written there and carry no data here."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes | memoryview] = []
    for name, array in response.outputs.items():
        datatype = response.datatypes[name]
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": array.shape}
        if regions is not None and name in regions:
            assert shm is not None
            place = regions[name]
            shm.write(place, array_view(array, datatypes.BY_NAME[datatype]), f"output '{name}'")
            tensor["parameters"] = {
                REGION: place.region,
                OFFSET: place.offset,
                BYTE_SIZE: place.byte_size,
            }
        elif binary_outputs.get(name, binary_by_default):
            wire = datatypes.BY_NAME[datatype]
            large = array.nbytes >= VIEW_MIN_BYTES  # a view: copied once, by the join
            blob = array_view(array, wire) if large else array_to_raw(array, wire)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = json_output_data(name, array, datatype)
        outputs.append(tensor)
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = outputs
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join((header, *blobs)), len(header)
