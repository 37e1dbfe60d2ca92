"""Malformed and hostile traffic over real sockets: mutated protobuf bodies, truncated and
lying REST bodies, slow and idle clients, HTTP/2 streams opened and reset at once. Each gets
a precise status or its connection closed, never INTERNAL for input that decodes, and a
valid request succeeds after every burst."""

from __future__ import annotations

import collections
import contextlib
import json
import random
import resource
import socket
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import requests
from tritonclient.grpc import service_pb2 as pb

from tests.e2e.conftest import Server, serving

INFER = "/inference.GRPCInferenceService/ModelInfer"
HEADER_TIMEOUT_S = 1.0
# Statuses a mutated request may get: each names what is wrong with it.
PRECISE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@pytest.fixture(scope="module")
def target(test_repository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    with serving(
        test_repository, tmp_path_factory, "--http-header-timeout", str(HEADER_TIMEOUT_S)
    ) as server:
        yield server


def _valid() -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        message.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        message.raw_input_contents.append(np.ones((1, 16), np.float32).tobytes())
    return message


def _still_serves(server: Server) -> None:
    with grpc.insecure_channel(server.url) as channel:
        call = channel.unary_unary(INFER, response_deserializer=pb.ModelInferResponse.FromString)
        reply = call(_valid().SerializeToString(), timeout=30)
    assert np.frombuffer(reply.raw_output_contents[0], np.float32)[0] == 2.0
    body = {
        "inputs": [
            {"name": n, "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}
            for n in ("INPUT0", "INPUT1")
        ]
    }
    answer = requests.post(
        f"http://{server.http_url}/v2/models/add_sub/infer", json=body, timeout=30
    )
    assert answer.status_code == 200, answer.text


def _mutations(wire: bytes, count: int, rng: random.Random) -> Iterator[bytes]:
    for index in range(count):
        data = bytearray(wire)
        kind = index % 4
        if kind == 0:  # flip bits
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncate
            del data[rng.randrange(len(data)) :]
        elif kind == 2:  # insert random bytes
            at = rng.randrange(len(data))
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        else:  # random bytes altogether
            data = bytearray(rng.randbytes(rng.randint(0, 64)))
        yield bytes(data)


def test_mutated_protobuf_bodies_get_precise_statuses(target: Server) -> None:
    seen: collections.Counter[str] = collections.Counter()
    with grpc.insecure_channel(target.url) as channel:
        call = channel.unary_unary(INFER, response_deserializer=pb.ModelInferResponse.FromString)
        for body in _mutations(_valid().SerializeToString(), 400, random.Random(20)):
            try:
                call(body, timeout=30)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
                assert code in PRECISE, (code, exc.details(), body)
            seen[code.name] += 1
    print(f"mutated ModelInferRequest bodies: {dict(seen)}")
    assert seen["INVALID_ARGUMENT"] > 100
    _still_serves(target)


def _http(server: Server, raw: bytes, half_close: bool = False) -> bytes:
    """Send raw bytes to the HTTP port; what comes back before the server closes (or 5 s)."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(raw)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def _binary_request() -> tuple[bytes, int]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": [1, 16],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 64},
                }
                for n in ("INPUT0", "INPUT1")
            ]
        }
    ).encode()
    return header + np.ones(32, np.float32).tobytes(), len(header)


def _head(length: int, header_length: int, extra: str = "") -> bytes:
    return (
        "POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {length}\r\nInference-Header-Content-Length: {header_length}\r\n"
        f"Connection: close\r\n{extra}\r\n"
    ).encode()


def test_truncated_and_lying_rest_bodies_get_400_or_a_closed_connection(target: Server) -> None:
    body, header_length = _binary_request()
    seen: collections.Counter[str] = collections.Counter()
    ok = _http(target, _head(len(body), header_length) + body)
    assert ok.startswith(b"HTTP/1.1 200"), ok[:200]
    for cut in range(1, len(body), 7):  # truncated bodies, their length told truthfully
        answer = _http(target, _head(cut, header_length) + body[:cut])
        status = answer[9:12].decode() or "closed"
        seen[f"truncated: {status}"] += 1
        assert status == "400", (cut, answer[:300])
    # Inference-Header-Content-Length beyond the body, and a negative one.
    for header in (len(body) + 10, -1):
        answer = _http(target, _head(len(body), header) + body)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
        seen["header length lies: 400"] += 1
    # Content-Length beyond what is sent, then the client stops writing (half-closed) or
    # goes silent: closed, with 408 once the body has paused past the timeout.
    answer = _http(target, _head(len(body) + 500, header_length) + body, half_close=True)
    seen[f"content length beyond the body, half-closed: {answer[9:12].decode() or 'closed'}"] += 1
    answer = _http(target, _head(len(body) + 500, header_length) + body)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    seen["content length beyond the body, silent: 408"] += 1
    # Content-Length short of the body: the rest is read as a next request, which is malformed.
    answer = _http(target, _head(len(body) - 16, header_length) + body)
    assert answer.count(b"HTTP/1.1 400") >= 1, answer[:300]
    seen["content length short of the body: 400"] += 1
    # Garbage that is not HTTP at all.
    answer = _http(target, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    print(f"REST bodies: {dict(seen)}")
    _still_serves(target)


def test_slow_and_idle_clients_lose_their_connections_and_others_are_served(
    target: Server,
) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    idle_count = max(100, min(2000, soft // 4))
    idle: list[socket.socket] = []
    slow: list[socket.socket] = []
    try:
        for port in (target.http_port, target.port):
            for _ in range(idle_count // 2):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        for _ in range(50):  # slowloris: a request head that never ends
            sock = socket.create_connection(("127.0.0.1", target.http_port), timeout=10)
            sock.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\n")
            slow.append(sock)
        _still_serves(target)  # while all of them are open
        deadline = time.monotonic() + HEADER_TIMEOUT_S * 3
        while time.monotonic() < deadline:  # keep dripping header bytes
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X-Drip: 1\r\n")
            time.sleep(0.2)
        answers = collections.Counter()
        for sock in slow + idle[: idle_count // 2]:  # the slow ones, and the idle HTTP ones
            sock.settimeout(10)
            try:
                data = sock.recv(4096)
            except (TimeoutError, ConnectionResetError):
                data = b"(none)"
            answers[data[:12].decode(errors="replace")] += 1
        print(f"slow and idle HTTP connections: {dict(answers)}, idle gRPC: {idle_count // 2}")
        assert answers == {"HTTP/1.1 408": 50 + idle_count // 2}
        _still_serves(target)
    finally:
        for sock in idle + slow:
            sock.close()


def test_http2_streams_opened_and_reset_at_once_leave_the_server_serving(
    target: Server,
) -> None:
    wire = _valid().SerializeToString()
    with grpc.insecure_channel(target.url) as channel:
        call = channel.unary_unary(INFER, response_deserializer=pb.ModelInferResponse.FromString)
        for _ in range(5):
            futures = [call.future(wire, timeout=30) for _ in range(200)]
            for future in futures:
                future.cancel()
        outcomes = collections.Counter()
        for future in futures:
            try:
                future.result(timeout=30)
                outcomes["OK"] += 1
            except grpc.FutureCancelledError:
                outcomes["CANCELLED"] += 1
            except grpc.RpcError as exc:
                outcomes[exc.code().name] += 1
        print(f"last burst of 200 reset streams: {dict(outcomes)}")
        assert set(outcomes) <= {"OK", "CANCELLED"}
    _still_serves(target)
