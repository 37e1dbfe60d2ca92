"""gRPC connection settings (Triton's --grpc-keepalive-*, --grpc-http2-*,
--grpc-max-connection-age* and --grpc-infer-response-compression-level flags), seen on the
wire: an HTTP/2 client written here counts the server's PING frames, reads its GOAWAY and its
responses' compressed flag, beside tritonclient."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.e2e.conftest import Server, serving
from tests.e2e.models import identity_onnx

pytestmark = pytest.mark.slow

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x4, 0x6, 0x7
ACK = END_STREAM = 0x1
END_HEADERS = 0x4
ENHANCE_YOUR_CALM = 0xB
KEEPALIVE = (
    "--grpc-keepalive-time",
    "200",
    "--grpc-keepalive-timeout",
    "500",
    "--grpc-keepalive-permit-without-calls",
    "--grpc-http2-max-pings-without-data",
    "0",
    "--grpc-http2-max-ping-strikes",
    "1",
)


def _frame(kind: int, flags: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + bytes(4) + payload


class Http2:
    """A bare HTTP/2 connection: the handshake, then frames read and written by hand."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(PREFACE + _frame(SETTINGS, 0))
        self.buffer = b""
        self.closed = False

    def frames(self, seconds: float, answer_pings: bool = True) -> Iterator[tuple[int, int, bytes]]:
        """(type, flags, payload) of each frame the server sends within `seconds`; the
        server's SETTINGS are acknowledged, and its PINGs too if `answer_pings`."""
        deadline = time.monotonic() + seconds
        while not self.closed and (left := deadline - time.monotonic()) > 0:
            while len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) < 9 + length:
                    break
                kind, flags = self.buffer[3], self.buffer[4]
                payload = self.buffer[9 : 9 + length]
                self.buffer = self.buffer[9 + length :]
                if kind == SETTINGS and not flags & ACK:
                    self.sock.sendall(_frame(SETTINGS, ACK))
                if kind == PING and not flags & ACK and answer_pings:
                    self.sock.sendall(_frame(PING, ACK, payload))
                yield kind, flags, payload
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return
            except ConnectionError:
                data = b""
            if not data:
                self.closed = True
            self.buffer += data

    def ping(self, count: int) -> None:
        for index in range(count):
            self.sock.sendall(_frame(PING, 0, index.to_bytes(8, "big")))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def keepalive_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    repo = tmp_path_factory.mktemp("keepalive_repo")
    identity_onnx(Path(repo) / "identity" / "1" / "model.onnx", "FP32")
    with serving(repo, tmp_path_factory, *KEEPALIVE) as server:
        yield server


def _server_pings(port: int, seconds: float) -> int:
    connection = Http2(port)
    try:
        return sum(
            1 for kind, flags, _ in connection.frames(seconds) if kind == PING and not flags & ACK
        )
    finally:
        connection.close()


def test_an_idle_connection_gets_keepalive_pings_at_the_configured_interval(
    keepalive_server: Server, server: Server
) -> None:
    assert _server_pings(keepalive_server.port, 1.5) >= 3  # every 200 ms
    assert _server_pings(server.port, 1.0) == 0  # the default: every two hours


def test_a_connection_that_leaves_keepalive_pings_unanswered_is_closed(
    keepalive_server: Server,
) -> None:
    connection = Http2(keepalive_server.port)
    try:
        started = time.monotonic()
        for _ in connection.frames(5.0, answer_pings=False):
            pass
        assert connection.closed and time.monotonic() - started < 4.0
    finally:
        connection.close()


def _goaway_after_pings(port: int, pings: int) -> bytes | None:
    connection = Http2(port)
    try:
        for _ in connection.frames(0.3):  # the handshake
            pass
        connection.ping(pings)
        for kind, _, payload in connection.frames(1.5):
            if kind == GOAWAY:
                return payload
        return None
    finally:
        connection.close()


def test_a_client_that_pings_too_often_is_sent_away_with_too_many_pings(
    keepalive_server: Server, server: Server
) -> None:
    goaway = _goaway_after_pings(keepalive_server.port, 3)  # two strikes, one allowed
    assert goaway is not None
    assert int.from_bytes(goaway[4:8], "big") == ENHANCE_YOUR_CALM
    assert goaway[8:] == b"too_many_pings"
    assert _goaway_after_pings(server.port, 3) is None  # the default allows two strikes


def test_tritonclient_with_keepalive_options_is_served(keepalive_server: Server) -> None:
    options = grpcclient.KeepAliveOptions(
        keepalive_time_ms=10_000, keepalive_timeout_ms=5_000, keepalive_permit_without_calls=True
    )
    with grpcclient.InferenceServerClient(keepalive_server.url, keepalive_options=options) as c:
        tensor = grpcclient.InferInput("INPUT", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
        assert c.infer("identity", [tensor]).as_numpy("OUTPUT").tolist() == [[0, 1, 2, 3]]


def test_a_connection_past_its_maximum_age_is_sent_away_and_clients_reconnect(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    repo = tmp_path_factory.mktemp("age_repo")
    identity_onnx(Path(repo) / "identity" / "1" / "model.onnx", "FP32")
    with serving(
        repo,
        tmp_path_factory,
        "--grpc-max-connection-age=300",
        "--grpc-max-connection-age-grace=300",
    ) as server:
        connection = Http2(server.port)
        try:
            started = time.monotonic()
            goaway = next((p for kind, _, p in connection.frames(5.0) if kind == GOAWAY), None)
            assert goaway is not None and time.monotonic() - started < 4.0
            assert int.from_bytes(goaway[4:8], "big") == 0  # NO_ERROR: a polite goodbye
            for _ in connection.frames(3.0):  # the grace runs out: closed
                pass
            assert connection.closed
        finally:
            connection.close()
        # tritonclient's channel reconnects by itself across several ages.
        tensor = grpcclient.InferInput("INPUT", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
        with grpcclient.InferenceServerClient(server.url) as client:
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                assert client.infer("identity", [tensor]).as_numpy("OUTPUT").tolist() == [
                    [0, 1, 2, 3]
                ]
                time.sleep(0.05)


def _literal(name: bytes, value: bytes) -> bytes:
    """An HPACK header field, literal and not indexed (names and values under 127 bytes)."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def _infer_on_the_wire(port: int) -> bytes:
    """One ModelInfer call written by hand (identity on 4 rows of zeros); the response's
    gRPC message as it arrived, its compressed flag first."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="identity")
    request.inputs.add(name="INPUT", datatype="FP32", shape=[4, 4])
    request.raw_input_contents.append(bytes(64))
    message = request.SerializeToString()
    headers = b"".join(
        _literal(name, value)
        for name, value in (
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
            (b":authority", b"127.0.0.1"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"grpc-accept-encoding", b"identity,deflate,gzip"),
        )
    )
    stream = (1).to_bytes(4, "big")
    body = b"\x00" + len(message).to_bytes(4, "big") + message
    connection = Http2(port)
    try:
        connection.sock.sendall(
            len(headers).to_bytes(3, "big") + bytes([HEADERS, END_HEADERS]) + stream + headers
        )
        connection.sock.sendall(
            len(body).to_bytes(3, "big") + bytes([DATA, END_STREAM]) + stream + body
        )
        data = b""
        for kind, _, payload in connection.frames(5.0):
            if kind == DATA:
                data += payload
                if len(data) >= 5 and len(data) >= 5 + int.from_bytes(data[1:5], "big"):
                    return data
        raise AssertionError("no response message")
    finally:
        connection.close()


def test_inference_responses_are_compressed_at_the_configured_level(
    tmp_path_factory: pytest.TempPathFactory, keepalive_server: Server
) -> None:
    import zlib

    from tritonclient.grpc import service_pb2

    repo = tmp_path_factory.mktemp("compressed_repo")
    identity_onnx(Path(repo) / "identity" / "1" / "model.onnx", "FP32")
    with serving(repo, tmp_path_factory, "--grpc-infer-response-compression-level=high") as high:
        compressed = _infer_on_the_wire(high.port)
        tensor = grpcclient.InferInput("INPUT", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
        with grpcclient.InferenceServerClient(high.url) as client:  # decompressed as usual
            assert client.infer("identity", [tensor]).as_numpy("OUTPUT").tolist() == [[0, 1, 2, 3]]
    assert compressed[0] == 1  # the compressed flag; high is deflate among gzip and deflate
    response = service_pb2.ModelInferResponse.FromString(zlib.decompress(compressed[5:]))
    assert response.raw_output_contents[0] == bytes(64)
    assert _infer_on_the_wire(keepalive_server.port)[0] == 0  # the default: none
