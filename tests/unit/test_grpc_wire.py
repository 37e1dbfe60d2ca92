"""ModelInfer responses with large outputs, serialized by hand, read back as protobuf."""

from __future__ import annotations

import ml_dtypes
import numpy as np
from tensorgate.dataplane.types import InferResponse
from tensorgate.protocol.grpc_codec import encode_infer_response
from tensorgate.protocol.grpc_wire import (
    WIRE_MIN_BYTES,
    WireResponse,
    WireStreamResponse,
    encode_for_wire,
    encode_wire,
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
