"""The REST shim's pure parts: the v2 inference codec, the JSON mapping and the route table."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest
from tensorgate.dataplane.types import InferResponse
from tensorgate.errors import InvalidArgument
from tensorgate.protocol import datatypes
from tensorgate.protocol.rest_codec import (
    array_from_json,
    decode_infer_request,
    encode_infer_response,
)
from tensorgate.protocol.tensors import array_to_raw
from tensorgate.transport.grpc.handlers import SERVICE, STATUS_SERVICE
from tensorgate.transport.rest.messages import json_to_message, message_to_json
from tensorgate.transport.rest.openapi import build_openapi
from tensorgate.transport.rest.routes import NoRoute, build_routes
from tensorgate_protos import grpc_service_pb2 as pb
from tensorgate_protos import model_config_pb2 as mc

from tests.unit.test_codecs import SAMPLES


class _Servicer:
    def __getattr__(self, name: str) -> Any:
        return name


ROUTER = build_routes([(SERVICE, _Servicer()), (STATUS_SERVICE, _Servicer())])


def _binary_body(doc: dict[str, Any], *blobs: bytes) -> tuple[bytes, int]:
    header = json.dumps(doc).encode()
    return header + b"".join(blobs), len(header)


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_binary_inputs_are_views_of_the_body_for_every_datatype(datatype: str) -> None:
    array = SAMPLES[datatype]
    blob = array_to_raw(array, datatypes.BY_NAME[datatype])
    tensor = {"name": "X", "shape": list(array.shape), "datatype": datatype}
    tensor["parameters"] = {"binary_data_size": len(blob)}
    body, length = _binary_body({"inputs": [tensor]}, blob)
    decoded = decode_infer_request(body, length, "m", "")
    got = decoded.request.inputs["X"]
    np.testing.assert_array_equal(got, array)
    if datatype != "BYTES":
        assert not got.flags.writeable  # a view of the request body, not a copy


@pytest.mark.parametrize("datatype", [d for d in SAMPLES if d not in ("FP16", "BF16")])
def test_json_outputs_round_trip_through_json_inputs(datatype: str) -> None:
    array = SAMPLES[datatype]
    response = InferResponse("m", "1", "", {"Y": array}, {"Y": datatype})
    payload, length = encode_infer_response(response, {}, False)
    assert length is None
    (out,) = orjson.loads(payload)["outputs"]
    back = array_from_json("Y", out["data"], datatypes.BY_NAME[datatype], out["shape"])
    np.testing.assert_array_equal(back, array)


def test_binary_outputs_follow_the_json_in_order_with_their_sizes() -> None:
    a, b = np.arange(4, dtype=np.int32), np.ones(2, dtype=np.float64)
    response = InferResponse("m", "1", "id", {"A": a, "B": b}, {"A": "INT32", "B": "FP64"})
    payload, length = encode_infer_response(response, {"B": False}, True)
    assert length is not None
    doc = orjson.loads(payload[:length])
    assert doc["id"] == "id"
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 16}
    assert doc["outputs"][1]["data"] == [1.0, 1.0]
    assert payload[length:] == a.tobytes()


def test_large_binary_outputs_are_the_arrays_bytes_in_the_wire_datatype() -> None:
    wide = np.arange(40_000, dtype=np.int32)  # 160 KB, past the view bound; declared INT64
    grid = np.arange(60_000, dtype=np.float32).reshape(300, 200).T  # not C-contiguous
    response = InferResponse("m", "1", "", {"W": wide, "G": grid}, {"W": "INT64", "G": "FP32"})
    payload, length = encode_infer_response(response, {}, True)
    assert length is not None
    sizes = [o["parameters"]["binary_data_size"] for o in orjson.loads(payload[:length])["outputs"]]
    assert sizes == [320_000, 240_000]
    assert payload[length:] == wide.astype(np.int64).tobytes() + grid.tobytes()


@pytest.mark.parametrize(
    ("data", "datatype", "shape", "message"),
    [
        ([[1, 2], [3]], "INT32", [2, 2], "ragged"),
        ([1.5, 2.0], "INT32", [2], "holds floating-point numbers"),
        ([1, 0], "BOOL", [2], "holds integers"),
        ([-1], "UINT8", [1], "out of range for UINT8"),
        ([1, 2, 3], "FP32", [2], "3 elements in data, but shape [2] needs 2"),
        (["a", 1], "BYTES", [2], "element 1 is int"),
        ([1.0], "BF16", [1], "no JSON form"),
        ([1], "INT32", [-1], "negative dimension"),
    ],
)
def test_bad_json_data_is_rejected_with_the_reason(
    data: Any, datatype: str, shape: list[int], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[").replace("]", r"\]")):
        array_from_json("X", data, datatypes.BY_NAME[datatype], shape)


def test_uint64_beyond_int64_is_read_exactly() -> None:
    got = array_from_json("X", [2**64 - 1, 1], datatypes.BY_NAME["UINT64"], [2])
    assert got.tolist() == [2**64 - 1, 1] and got.dtype == np.uint64


def test_request_parameters_and_output_choices_are_decoded() -> None:
    doc = {
        "id": "7",
        "parameters": {"priority": 1, "binary_data_output": True},
        "inputs": [{"name": "X", "shape": [1], "datatype": "INT64", "data": [5]}],
        "outputs": [{"name": "Y", "parameters": {"binary_data": False}}, {"name": "Z"}],
    }
    decoded = decode_infer_request(json.dumps(doc).encode(), None, "m", "2")
    assert decoded.request.parameters == {"priority": 1}
    assert decoded.binary_by_default and decoded.binary_outputs == {"Y": False}
    assert decoded.request.requested_outputs == ["Y", "Z"]
    assert (decoded.request.model_version, decoded.request.id) == ("2", "7")


_GOOD_INPUT = {"name": "X", "shape": [1], "datatype": "INT64", "data": [5]}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "the inference request must be a JSON object, got list"),
        ({"inputs": {}}, "inputs must be an array of input tensors, got dict"),
        ({"inputs": [3]}, r"inputs\[0\] must be an object, got int"),
        ({"inputs": [{**_GOOD_INPUT, "name": 1}]}, r"inputs\[0\].name must be a string, got int"),
        ({"inputs": [{**_GOOD_INPUT, "datatype": ["FP32"]}]}, "datatype must be a string"),
        ({"inputs": [{**_GOOD_INPUT, "datatype": "FP8"}]}, "unknown datatype 'FP8'"),
        ({"inputs": [{**_GOOD_INPUT, "shape": "1"}]}, "shape must be an array of integers, got st"),
        ({"inputs": [{**_GOOD_INPUT, "shape": [True]}]}, "must be an array of integers, got bool"),
        ({"inputs": [{**_GOOD_INPUT, "parameters": [1]}]}, "parameters must be an object"),
        ({"inputs": [{**_GOOD_INPUT, "parameters": {"a": [1]}}]}, "parameters.a must be a boolean"),
        ({"inputs": [_GOOD_INPUT, _GOOD_INPUT]}, "input 'X' appears more than once"),
        (
            {"inputs": [{**_GOOD_INPUT, "parameters": {"binary_data_size": True}}]},
            "both data and binary_data_size",
        ),
        ({"inputs": [_GOOD_INPUT], "id": 7}, "id must be a string, got int"),
        ({"inputs": [_GOOD_INPUT], "parameters": 1}, "parameters must be an object, got int"),
        ({"inputs": [_GOOD_INPUT], "outputs": None}, "outputs must be an array, got NoneType"),
        ({"inputs": [_GOOD_INPUT], "outputs": ["Y"]}, r"outputs\[0\] must be an object, got str"),
        ({"inputs": [_GOOD_INPUT], "outputs": [{"name": 2}]}, r"outputs\[0\].name must be a str"),
        (
            {"inputs": [_GOOD_INPUT], "outputs": [{"name": "Y", "parameters": {"b": {}}}]},
            "output 'Y' parameters.b must be a boolean, number or string, got dict",
        ),
    ],
)
def test_malformed_inference_documents_name_the_field_at_fault(doc: Any, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        decode_infer_request(json.dumps(doc).encode(), None, "m", "")


@pytest.mark.parametrize(
    ("size", "message"),
    [(-4, "binary_data_size must be a non-negative integer"), (False, "non-negative integer")],
)
def test_binary_data_size_must_be_a_non_negative_integer(size: Any, message: str) -> None:
    tensor = {"name": "X", "shape": [1], "datatype": "INT64"}
    tensor["parameters"] = {"binary_data_size": size}
    body, length = _binary_body({"inputs": [tensor]}, b"\0" * 8)
    with pytest.raises(InvalidArgument, match=message):
        decode_infer_request(body, length, "m", "")


_BINARY_INPUT = {
    "name": "X",
    "shape": [1, 2],
    "datatype": "FP32",
    "parameters": {"binary_data_size": 8},
}


@pytest.mark.parametrize(
    ("inputs", "blob", "message"),
    [
        ([_BINARY_INPUT, _BINARY_INPUT], b"\0" * 16, "input 'X' appears more than once"),
        ([_BINARY_INPUT], b"\0" * 4, "declares 8 bytes of binary data at offset 0, but the body"),
        (
            [{**_BINARY_INPUT, "shape": [1, 3]}],
            b"\0" * 8,
            r"has 8 bytes of raw content, but shape \[1, 3\] of FP32 needs 12",
        ),
        ([{**_BINARY_INPUT, "shape": [2, -1]}], b"\0" * 8, "negative dimension in shape"),
        ([{**_BINARY_INPUT, "shape": [1.0, 2]}], b"\0" * 8, "shape must be an array of integ"),
        ([{**_BINARY_INPUT, "datatype": "FP8"}], b"\0" * 8, "unknown datatype 'FP8'"),
        (
            [{**_BINARY_INPUT, "parameters": {"binary_data_size": 8, "a": [1]}}],
            b"\0" * 8,
            "parameters.a must be a boolean",
        ),
        ([_BINARY_INPUT], b"\0" * 12, "12 bytes of binary data but the inputs' binary_data_size"),
    ],
)
def test_bad_binary_inputs_are_rejected_with_the_reason(
    inputs: list[Any], blob: bytes, message: str
) -> None:
    body, length = _binary_body({"inputs": inputs}, blob)
    with pytest.raises(InvalidArgument, match=message):
        decode_infer_request(body, length, "m", "")


def test_binary_inputs_with_extra_parameters_keep_them_and_decode_the_same() -> None:
    plain = {"name": "A", "shape": [2], "datatype": "INT32", "parameters": {"binary_data_size": 8}}
    extra = {**plain, "name": "B", "parameters": {"binary_data_size": 8, "note": "x"}}
    blob = np.array([3, -4], np.int32).tobytes()
    outputs = [{"name": "Y", "parameters": {"binary_data": False}}, {"name": "Z"}]
    body, length = _binary_body({"inputs": [plain, extra], "outputs": outputs}, blob, blob)
    decoded = decode_infer_request(body, length, "m", "")
    request = decoded.request
    for name in ("A", "B"):
        np.testing.assert_array_equal(request.inputs[name], [3, -4])
        assert request.inputs[name].dtype == np.int32 and request.datatypes[name] == "INT32"
    assert request.requested_outputs == ["Y", "Z"]
    assert decoded.binary_outputs == {"Y": False}


def test_config_json_has_numbers_proto_names_and_defaults() -> None:
    config = mc.ModelConfig(name="m", max_batch_size=8)
    config.input.add(name="X", data_type=mc.TYPE_FP32, dims=[3, 2**40])
    config.dynamic_batching.max_queue_delay_microseconds = 100
    doc = message_to_json(config)
    assert doc["input"][0]["dims"] == [3, 2**40]
    assert doc["input"][0]["data_type"] == "TYPE_FP32"
    assert doc["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert doc["platform"] == "" and "sequence_batching" not in doc


def test_parameter_maps_are_bare_values_both_ways() -> None:
    request = pb.RepositoryModelLoadRequest()
    json_to_message({"parameters": {"config": "{}", "n": 3, "flag": True}}, request)
    assert request.parameters["config"].string_param == "{}"
    assert request.parameters["n"].int64_param == 3
    assert request.parameters["flag"].bool_param is True
    assert message_to_json(request)["parameters"] == {"config": "{}", "n": 3, "flag": True}
    with pytest.raises(InvalidArgument, match="bogus"):
        json_to_message({"bogus": 1}, pb.RepositoryIndexRequest())


@pytest.mark.parametrize(
    ("verb", "path", "rpc", "params"),
    [
        ("GET", "/v2", "ServerMetadata", {}),
        ("GET", "/v2/health/ready", "ServerReady", {}),
        ("GET", "/v2/models/stats", "ModelStatistics", {}),
        ("GET", "/v2/models/m%2Fx", "ModelMetadata", {"name": "m/x"}),
        ("GET", "/v2/models/m/versions/3/ready", "ModelReady", {"name": "m", "version": "3"}),
        ("POST", "/v2/models/m/infer", "ModelInfer", {"model_name": "m"}),
        ("POST", "/v2/repository/models/m/load", "RepositoryModelLoad", {"model_name": "m"}),
        ("GET", "/v2/scheduler", "SchedulerStatus", {}),
    ],
)
def test_routes_come_from_the_http_annotations(
    verb: str, path: str, rpc: str, params: dict[str, str]
) -> None:
    route, bound = ROUTER.match(verb, path)
    assert route.method.name == rpc and bound == params


def test_unknown_path_is_404_and_wrong_verb_lists_the_allowed_ones() -> None:
    with pytest.raises(NoRoute) as missing:
        ROUTER.match("GET", "/v2/nothing")
    assert missing.value.allowed == ()
    with pytest.raises(NoRoute) as wrong:
        ROUTER.match("DELETE", "/v2/models/m/infer")
    assert wrong.value.allowed == ("POST",)


def test_repeated_paths_are_answered_the_same_and_misses_are_not_remembered() -> None:
    router = build_routes([(SERVICE, _Servicer())])
    first = router.match("POST", "/v2/models/a%20b/infer")
    assert router.match("POST", "/v2/models/a%20b/infer") == first
    assert first[1] == {"model_name": "a b"}
    for _ in range(2):
        with pytest.raises(NoRoute):
            router.match("GET", "/v2/nothing")
    for index in range(600):  # more distinct paths than it keeps: still right for each
        route, bound = router.match("GET", f"/v2/models/m{index}/ready")
        assert route.method.name == "ModelReady" and bound == {"name": f"m{index}"}


def test_every_annotated_rpc_is_in_the_openapi_document() -> None:
    doc = build_openapi(ROUTER)
    operations = {op["operationId"] for methods in doc["paths"].values() for op in methods.values()}
    annotated = {r.operation_id for r in ROUTER.routes}
    assert operations == annotated
    assert "ModelStreamInfer" not in {r.method.name for r in ROUTER.routes}
    infer = doc["paths"]["/v2/models/{model_name}/infer"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/InferenceRequest"
    }
