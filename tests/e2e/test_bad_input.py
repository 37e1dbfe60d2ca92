"""Bad requests get a precise status and message, and the server keeps serving everyone else."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import Server, serving

INFER = "/inference.GRPCInferenceService/ModelInfer"


def raw_call(server: Server, message: bytes | pb.ModelInferRequest) -> pb.ModelInferResponse:
    payload = message if isinstance(message, bytes) else message.SerializeToString()
    with grpc.insecure_channel(server.url) as channel:
        call = channel.unary_unary(
            INFER, request_serializer=None, response_deserializer=pb.ModelInferResponse.FromString
        )
        return call(payload, timeout=30)


def add_sub_request(rows: int = 1) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        message.inputs.add(name=name, datatype="FP32", shape=[rows, 16])
        message.raw_input_contents.append(np.ones((rows, 16), np.float32).tobytes())
    return message


def expect(
    server: Server, message: bytes | pb.ModelInferRequest, code: grpc.StatusCode, text: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        raw_call(server, message)
    assert info.value.code() == code, info.value.details()
    assert text in info.value.details()


def _bytes_request(shape: list[int], raw: bytes) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="identity_bytes")
    message.inputs.add(name="INPUT", datatype="BYTES", shape=shape)
    message.raw_input_contents.append(raw)
    return message


def _mutate(fn):  # type: ignore[no-untyped-def]
    message = add_sub_request()
    fn(message)
    return message


CASES = [
    (
        "unknown model",
        _mutate(lambda m: setattr(m, "model_name", "nope")),
        grpc.StatusCode.NOT_FOUND,
        "Request for unknown model: 'nope' is not found",
    ),
    (
        "unknown version",
        _mutate(lambda m: setattr(m, "model_version", "9")),
        grpc.StatusCode.NOT_FOUND,
        "'add_sub' version 9 is not found",
    ),
    (
        "version in non-ASCII digits",  # str.isdigit() accepts '²', int() does not
        _mutate(lambda m: setattr(m, "model_version", "\u00b2")),
        grpc.StatusCode.NOT_FOUND,
        "'add_sub' version \u00b2 is not found",
    ),
    (
        "wrong input name",
        _mutate(lambda m: setattr(m.inputs[1], "name", "INPUT9")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unexpected inference input 'INPUT9'",
    ),
    (
        "wrong datatype",
        _mutate(lambda m: setattr(m.inputs[0], "datatype", "INT32")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "has datatype INT32, the model expects FP32",
    ),
    (
        "shape mismatch",
        _mutate(lambda m: m.inputs[0].shape.__setitem__(slice(None), [2, 8])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "has shape [2, 8], the model expects [-1, 16]",
    ),
    (
        "raw size mismatch",
        _mutate(lambda m: m.raw_input_contents.__setitem__(0, b"\0" * 10)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "has 10 bytes of raw content",
    ),
    (
        "batch too large",
        add_sub_request(33),
        grpc.StatusCode.INVALID_ARGUMENT,
        "batch size 33, more than max_batch_size 32",
    ),
    (
        "unknown output",
        _mutate(lambda m: m.outputs.add(name="OUTPUT7")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "has no outputs ['OUTPUT7']",
    ),
    (
        "unknown datatype",
        _mutate(lambda m: setattr(m.inputs[0], "datatype", "FLOAT32")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown datatype 'FLOAT32'",
    ),
    (
        "shape product beyond the element limit",
        _mutate(lambda m: m.inputs[0].shape.__setitem__(slice(None), [2**40, 2**40])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "over the limit of 2147483647 (--max-tensor-elements)",
    ),
    (
        "BYTES element count beyond its content",
        _bytes_request([2**30], b"\x01\0\0\0a"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "5 bytes of BYTES content cannot hold 1073741824 elements",
    ),
    (
        "malformed protobuf",
        b"\x0a\xff\xff\xff\xff\x0f",
        grpc.StatusCode.INVALID_ARGUMENT,
        "malformed ModelInferRequest",
    ),
]


@pytest.mark.parametrize(("case", "message", "code", "text"), CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_precise_status(
    server: Server, case: str, message: object, code: grpc.StatusCode, text: str
) -> None:
    expect(server, message, code, text)  # type: ignore[arg-type]


def test_missing_input_and_raw_plus_typed_contents(server: Server) -> None:
    message = add_sub_request()
    del message.inputs[1]
    del message.raw_input_contents[1]
    expect(server, message, grpc.StatusCode.INVALID_ARGUMENT, "expects inputs ['INPUT1']")
    message = add_sub_request()
    message.inputs[0].contents.fp32_contents.extend([1.0] * 16)
    expect(server, message, grpc.StatusCode.INVALID_ARGUMENT, "both typed contents and raw")


def test_typed_contents_are_accepted(server: Server) -> None:
    message = pb.ModelInferRequest(model_name="add_sub")
    for name, value in (("INPUT0", 3.0), ("INPUT1", 1.0)):
        message.inputs.add(name=name, datatype="FP32", shape=[1, 16]).contents.fp32_contents.extend(
            [value] * 16
        )
    response = raw_call(server, message)
    assert [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [4.0] * 16


def test_malformed_bytes_lengths_are_rejected(server: Server) -> None:
    message = pb.ModelInferRequest(model_name="text_stats")
    message.inputs.add(name="TEXT", datatype="BYTES", shape=[2])
    message.raw_input_contents.append(b"\x03\x00\x00\x00abc\xff\x00\x00\x00x")
    expect(server, message, grpc.StatusCode.INVALID_ARGUMENT, "element 1 declares 255 bytes")


def test_model_exception_is_internal_with_the_model_message_and_isolated(
    client: grpcclient.InferenceServerClient,
) -> None:
    tensor = grpcclient.InferInput("INPUT", [1, 4], "FP32")
    tensor.set_data_from_numpy(-np.ones((1, 4), np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("failing", [tensor])
    assert info.value.status() == "StatusCode.INTERNAL"
    assert "model 'failing' failed: ValueError: negative input is not allowed" in str(info.value)
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    assert client.infer("failing", [tensor]).as_numpy("OUTPUT").tolist() == [[1.0] * 4]
    stats = client.get_inference_statistics("failing").model_stats[0].inference_stats
    assert stats.fail.count >= 1 and stats.success.count >= 1


def test_server_keeps_serving_after_bad_requests(
    server: Server, client: grpcclient.InferenceServerClient
) -> None:
    for _, message, code, text in CASES:
        expect(server, message, code, text)  # type: ignore[arg-type]
    response = raw_call(server, add_sub_request(2))
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [2.0] * 32
    assert client.is_server_ready() and server.process.poll() is None


def test_large_message_within_the_default_limit_is_served(
    client: grpcclient.InferenceServerClient,
) -> None:
    # 32 x 3 x 224 x 224 FP32 would be 19 MB; the cnn takes 16 x 3 x 32 x 32, so send a big
    # BYTES tensor instead: 8 MB in one message, well past grpc's 4 MB default.
    text = np.array([b"x" * (1 << 20)] * 8, dtype=np.object_)
    tensor = grpcclient.InferInput("TEXT", [8], "BYTES")
    tensor.set_data_from_numpy(text)
    assert client.infer("text_stats", [tensor]).as_numpy("LENGTH").tolist() == [1 << 20] * 8


def test_tensor_limits_refuse_large_tensors_and_long_bytes_elements(
    test_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    limits = ("--max-tensor-elements", "64", "--max-bytes-element", "8")
    with serving(test_repository, tmp_path_factory, *limits) as limited:
        big = {
            "inputs": [
                {"name": n, "shape": [5, 16], "datatype": "FP32", "data": [1.0] * 80}
                for n in ("INPUT0", "INPUT1")
            ]
        }
        url = f"http://{limited.http_url}/v2/models"
        reply = requests.post(f"{url}/add_sub/infer", json=big, timeout=30)
        assert reply.status_code == 400
        assert "80 elements, or a dimension, over the limit of 64" in reply.json()["error"]
        long = {
            "inputs": [
                {
                    "name": "INPUT",
                    "shape": [1, 4],
                    "datatype": "BYTES",
                    "data": ["a", "b", "c", "nine bytes"],
                }
            ]
        }
        reply = requests.post(f"{url}/identity_bytes/infer", json=long, timeout=30)
        assert reply.status_code == 400
        assert "BYTES element 3 has 10 bytes, over the limit of 8" in reply.json()["error"]
        expect(
            limited, add_sub_request(5), grpc.StatusCode.INVALID_ARGUMENT, "over the limit of 64"
        )
        raw = b"".join(len(v).to_bytes(4, "little") + v for v in (b"a", b"b", b"c", b"123456789"))
        expect(
            limited,
            _bytes_request([1, 4], raw),
            grpc.StatusCode.INVALID_ARGUMENT,
            "BYTES element 3 has 9 bytes, over the limit of 8",
        )
        contents = pb.ModelInferRequest(model_name="identity_bytes")
        tensor = contents.inputs.add(name="INPUT", datatype="BYTES", shape=[1, 4])
        tensor.contents.bytes_contents.extend([b"a", b"b", b"c", b"123456789"])
        expect(limited, contents, grpc.StatusCode.INVALID_ARGUMENT, "over the limit of 8")
        # Within the limits everything is served as before.
        raw_call(limited, add_sub_request(4))
