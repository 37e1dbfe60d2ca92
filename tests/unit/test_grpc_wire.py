"""ModelInfer responses with large outputs, serialized by hand, read back as protobuf."""

from __future__ import annotations

from collections.abc import Callable

import ml_dtypes
import numpy as np
import pytest
from tensorgate.dataplane.types import InferResponse
from tensorgate.errors import InvalidArgument
from tensorgate.protocol.grpc_codec import (
    LargeInferRequest,
    decode_infer_request,
    encode_infer_response,
)
from tensorgate.protocol.grpc_wire import (
    WIRE_MIN_BYTES,
    WireResponse,
    WireStreamResponse,
    encode_for_wire,
    encode_wire,
    parse_infer_request,
)
from tensorgate_protos import grpc_service_pb2 as pb


def _large_response() -> InferResponse:
    rng = np.random.default_rng(0)
    outputs = {
        "LARGE": rng.random((300, 256), dtype=np.float32),  # 300 KB: past the bound alone
        "TRANSPOSED": np.arange(24, dtype=np.int64).reshape(4, 6).T,  # not C-contiguous
        "WIDENED": np.arange(8, dtype=np.int32),  # declared INT64: converted on the way out
        "FLAGS": np.array([[True, False, True]]),
        "HALF": np.linspace(0, 1, 7, dtype=np.float16),
        "BRAIN": np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16),
        "TEXT": np.array([b"a", b"", "b\u00e9".encode()], dtype=np.object_),
        "EMPTY": np.zeros((0, 4), np.float32),
    }
    declared = {
        "LARGE": "FP32",
        "TRANSPOSED": "INT64",
        "WIDENED": "INT64",
        "FLAGS": "BOOL",
        "HALF": "FP16",
        "BRAIN": "BF16",
        "TEXT": "BYTES",
        "EMPTY": "FP32",
    }
    return InferResponse("m", "3", "req-7", outputs, declared, {"sequence_end": True})


def test_a_large_response_serialized_by_hand_reads_as_protobufs_own_encoding() -> None:
    response = _large_response()
    wire = encode_for_wire(response)
    assert isinstance(wire, WireResponse)

    parsed = pb.ModelInferResponse.FromString(wire.SerializeToString())

    assert parsed == encode_infer_response(response)
    widened = np.frombuffer(parsed.raw_output_contents[2], np.int64)
    assert widened.tolist() == list(range(8))


def test_a_large_streamed_response_reads_as_the_stream_message() -> None:
    response = _large_response()

    parsed = pb.ModelStreamInferResponse.FromString(
        WireStreamResponse(encode_wire(response)).SerializeToString()
    )

    assert not parsed.error_message
    assert parsed.infer_response == encode_infer_response(response)


def test_small_responses_keep_protobufs_path() -> None:
    small = np.zeros(WIRE_MIN_BYTES // 4 - 1, np.float32)
    response = InferResponse("m", "1", "", {"Y": small}, {"Y": "FP32"})

    assert isinstance(encode_for_wire(response), pb.ModelInferResponse)
    response.outputs["Y"] = np.zeros(WIRE_MIN_BYTES // 4, np.float32)
    assert isinstance(encode_for_wire(response), WireResponse)


def _large_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", model_version="2", id="big-1")
    request.parameters["priority"].int64_param = 1
    request.inputs.add(name="A", datatype="FP32", shape=[2, 40_000])
    request.inputs.add(name="B", datatype="INT8", shape=[3])
    request.outputs.add(name="Y")
    request.raw_input_contents.append(np.arange(80_000, dtype=np.float32).tobytes())
    request.raw_input_contents.append(np.array([1, -2, 3], np.int8).tobytes())
    return request


def test_a_large_requests_raw_inputs_are_views_of_the_received_bytes() -> None:
    data = _large_request().SerializeToString()

    parsed = parse_infer_request(data)

    assert isinstance(parsed, LargeInferRequest)
    assert parsed.model_name == "m" and parsed.id == "big-1"
    assert not parsed.message.raw_input_contents
    decoded = decode_infer_request(parsed)
    expected = decode_infer_request(pb.ModelInferRequest.FromString(data))
    assert decoded.inputs.keys() == expected.inputs.keys() == {"A", "B"}
    for name, array in decoded.inputs.items():
        np.testing.assert_array_equal(array, expected.inputs[name])
        assert np.shares_memory(array, np.frombuffer(data, np.uint8))
        assert not array.flags.writeable
    assert decoded.parameters == {"priority": 1}
    assert decoded.requested_outputs == ["Y"]


def test_raw_inputs_before_the_other_fields_are_read_in_their_order() -> None:
    request = _large_request()
    raw_only = pb.ModelInferRequest(raw_input_contents=request.raw_input_contents)
    request.ClearField("raw_input_contents")
    data = raw_only.SerializeToString() + request.SerializeToString()

    decoded = decode_infer_request(parse_infer_request(data))

    assert decoded.inputs["B"].tolist() == [[1, -2, 3]][0]
    assert decoded.inputs["A"].shape == (2, 40_000)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-2],  # the last raw input cut short
        lambda data: data + b"\x0f",  # a field of wire type 7
        lambda data: data + b"\x3a\xff\xff\xff\xff\x0f",  # a raw input longer than the rest
        lambda data: data + b"\x08" + b"\xff" * 11,  # a varint that never ends
    ],
)
def test_a_malformed_large_request_is_invalid_argument(damage: Callable[[bytes], bytes]) -> None:
    with pytest.raises(InvalidArgument, match="malformed ModelInferRequest message"):
        parse_infer_request(damage(_large_request().SerializeToString()))


def test_small_requests_are_parsed_by_protobuf_alone() -> None:
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"\0" * 64])

    assert isinstance(parse_infer_request(request.SerializeToString()), pb.ModelInferRequest)
    with pytest.raises(InvalidArgument, match="malformed ModelInferRequest message"):
        parse_infer_request(b"\x0a\x05ab")
