"""The REST shim against a real server: tritonclient.http on every route, binary and JSON.

Raw requests (urllib) check what tritonclient cannot produce: malformed bodies, truncated
binary parts, wrong headers, CORS and compression.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import Server, serving, start_server
from tests.e2e.models import ONNX_TYPES, identity_onnx


@pytest.fixture
def http(server: Server) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.http_url)
    yield client
    client.close()


def call(
    server: Server,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request; returns status, headers (lower-case names) and body."""
    request = urllib.request.Request(
        f"http://{server.http_url}{path}", data=body, headers=headers or {}, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return (
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def add_sub_inputs(a: np.ndarray, b: np.ndarray, binary: bool) -> list[httpclient.InferInput]:
    inputs = [
        httpclient.InferInput("INPUT0", list(a.shape), "FP32"),
        httpclient.InferInput("INPUT1", list(b.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    return inputs


def test_health_metadata_config_and_index(http: httpclient.InferenceServerClient) -> None:
    assert http.is_server_live() and http.is_server_ready()
    assert http.is_model_ready("add_sub") and http.is_model_ready("versioned", "1")
    assert not http.is_model_ready("no_such_model")
    assert http.get_server_metadata()["name"] == "tensorgate"
    meta = http.get_model_metadata("add_sub")
    assert meta["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]}
    config = http.get_model_config("add_sub")
    # Numbers, not the strings protobuf's JSON mapping writes for 64-bit integers.
    assert config["max_batch_size"] > 0 and config["input"][0]["dims"] == [16]
    assert http.get_model_metadata("versioned", "2")["versions"] == ["1", "2"]
    index = {m["name"]: m for m in http.get_model_repository_index()}
    assert index["add_sub"]["state"] == "READY" and "failing" in index


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_add_sub_in_binary_and_json(http: httpclient.InferenceServerClient, binary: bool) -> None:
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.full((2, 16), 3, np.float32)
    outputs = [httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary)]
    result = http.infer("add_sub", add_sub_inputs(a, b, binary), request_id="r-7")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    only = http.infer("add_sub", add_sub_inputs(a, b, binary), outputs=outputs)
    np.testing.assert_array_equal(only.as_numpy("OUTPUT1"), a - b)
    assert [o["name"] for o in only.get_response()["outputs"]] == ["OUTPUT1"]
    assert result.get_response()["id"] == "r-7"


@pytest.mark.parametrize("datatype", [*ONNX_TYPES, "BF16"])
def test_every_datatype_round_trips_over_http(
    http: httpclient.InferenceServerClient, datatype: str
) -> None:
    rng = np.random.default_rng(7)
    if datatype == "BYTES":
        data = np.array([[b"a", b"bc", b"", "é".encode()]], dtype=np.object_)
    elif datatype == "BOOL":
        data = rng.integers(0, 2, (2, 4)).astype(bool)
    elif datatype == "BF16":
        data = np.float32([[1.5, -2.0, 0.0, 3.25]])
    else:
        data = rng.integers(0, 100, (2, 4)).astype(httpclient.triton_to_np_dtype(datatype))
    binary_only = datatype in ("FP16", "BF16")
    for binary in (True, False) if not binary_only else (True,):
        tensor = httpclient.InferInput("INPUT", list(data.shape), datatype)
        tensor.set_data_from_numpy(data, binary_data=binary)
        out = httpclient.InferRequestedOutput("OUTPUT", binary_data=binary)
        result = http.infer(f"identity_{datatype.lower()}", [tensor], outputs=[out])
        got = result.as_numpy("OUTPUT")
        if datatype == "BF16":
            got = got.astype(np.float32)
        if datatype == "BYTES" and not binary:  # JSON carries BYTES as text
            got = np.vectorize(str.encode, otypes=[object])(got)
        np.testing.assert_array_equal(got, data)


def test_bytes_as_json_strings(server: Server) -> None:
    doc = {"inputs": [{"name": "TEXT", "shape": [2], "datatype": "BYTES", "data": ["ab", "çd"]}]}
    status, _, body = call(server, "/v2/models/text_stats/infer", json.dumps(doc).encode())
    assert status == 200, body
    outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
    assert outputs["UPPER"]["data"] == ["AB", "ÇD"]
    assert outputs["LENGTH"]["data"] == [2, 2]


def test_nested_and_flat_json_data_are_row_major(server: Server) -> None:
    rows = [[float(i + 16 * r) for i in range(16)] for r in range(2)]
    nested = {"name": "INPUT0", "shape": [2, 16], "datatype": "FP32", "data": rows}
    flat = {"name": "INPUT1", "shape": [2, 16], "datatype": "FP32", "data": [1.0] * 32}
    doc = {"inputs": [nested, flat], "outputs": [{"name": "OUTPUT0"}]}
    status, _, body = call(server, "/v2/models/add_sub/infer", json.dumps(doc).encode())
    assert status == 200, body
    (out,) = json.loads(body)["outputs"]
    assert out["shape"] == [2, 16]
    assert out["data"] == [v + 1 for row in rows for v in row]


def test_statistics_load_unload_and_extensions_that_need_setup(
    http: httpclient.InferenceServerClient,
) -> None:
    before = http.get_inference_statistics("add_sub")["model_stats"][0]["inference_count"]
    a = np.ones((3, 16), np.float32)
    http.infer("add_sub", add_sub_inputs(a, a, True))
    stats = http.get_inference_statistics("add_sub")["model_stats"][0]
    assert stats["inference_count"] == before + 3
    assert {"success", "queue", "compute_infer"} <= set(stats["inference_stats"])
    everything = http.get_inference_statistics()["model_stats"]
    assert {"add_sub", "failing"} <= {s["name"] for s in everything}
    with pytest.raises(InferenceServerException, match="explicit") as info:
        http.load_model("add_sub")
    assert info.value.status() == "400"
    # Trace settings read OFF without a trace destination, and cannot be turned on.
    assert http.get_trace_settings()["trace_level"] == ["OFF"]
    with pytest.raises(InferenceServerException, match="tracing is off") as info:
        http.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
    assert info.value.status() == "400"
    # CUDA shared memory is served (refused at registration without a GPU): nothing yet.
    assert http.get_cuda_shared_memory_status() == {"regions": {}}


def test_explicit_load_and_unload_over_http(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for name in ("first", "second"):
        identity_onnx(repo / name / "1" / "model.onnx", "FP32")
    server = start_server(
        repo, tmp_path / "log", "--model-control-mode", "explicit", "--load-model", "first"
    )
    try:
        http = httpclient.InferenceServerClient(server.http_url)
        assert not http.is_model_ready("second")
        http.load_model("second")
        assert http.is_model_ready("second")
        http.unload_model("second")
        assert not http.is_model_ready("second")
        index = {m["name"]: m for m in http.get_model_repository_index()}
        assert (index["second"]["state"], index["second"]["reason"]) == ("UNAVAILABLE", "unloaded")
        with pytest.raises(InferenceServerException, match="not in the repository") as info:
            http.load_model("third")
        assert info.value.status() == "404"
        http.load_model("first", config='{"max_batch_size": 2}')  # a config override
        assert http.get_model_config("first")["max_batch_size"] == 2
        with pytest.raises(InferenceServerException, match="is not a model config") as info:
            http.load_model("first", config='{"max_batch_size": "two"}')
        assert info.value.status() == "400"
    finally:
        assert server.stop() == 0, server.output()


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "message"),
    [
        ("/v2/models/add_sub/infer", b"{not json", {}, 400, "malformed JSON"),
        ("/v2/models/add_sub/infer", b"[1, 2]", {}, 400, "must be a JSON object"),
        ("/v2/models/add_sub/infer", b'{"inputs": 3}', {}, 400, "inputs must be an array"),
        (
            "/v2/models/nope/infer",
            b'{"inputs": []}',
            {},
            404,
            "unknown model",
        ),
        (
            "/v2/models/add_sub/infer",
            json.dumps(
                {
                    "inputs": [
                        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1] * 15}
                    ]
                }
            ).encode(),
            {},
            400,
            "15 elements in data",
        ),
        (
            "/v2/models/add_sub/infer",
            json.dumps(
                {
                    "inputs": [
                        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": ["x"] * 16}
                    ]
                }
            ).encode(),
            {},
            400,
            "holds strings",
        ),
        (
            "/v2/models/identity_uint8/infer",
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "INPUT",
                            "shape": [1, 4],
                            "datatype": "UINT8",
                            "data": [1, 2, 3, 300],
                        }
                    ]
                }
            ).encode(),
            {},
            400,
            "out of range for UINT8",
        ),
        (
            "/v2/models/identity_fp16/infer",
            json.dumps(
                {
                    "inputs": [
                        {"name": "INPUT", "shape": [1, 4], "datatype": "FP16", "data": [1, 2, 3, 4]}
                    ]
                }
            ).encode(),
            {},
            400,
            "no JSON form",
        ),
        (
            "/v2/models/add_sub/infer",
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "INPUT0",
                            "shape": [1, 16],
                            "datatype": "FP32",
                            "parameters": {"binary_data_size": 64},
                        }
                    ]
                }
            ).encode()
            + b"\0" * 10,
            {"Inference-Header-Content-Length": "0"},
            400,
            "malformed JSON",
        ),
        (
            "/v2/models/add_sub/infer",
            b"{}",
            {"Inference-Header-Content-Length": "999"},
            400,
            "the body has 2 bytes",
        ),
        (
            "/v2/models/add_sub/infer",
            b"{}",
            {"Content-Encoding": "br"},
            400,
            "unsupported Content-Encoding",
        ),
        ("/v2/repository/index", b'{"bogus": 1}', {}, 400, "bogus"),
        ("/v2/repository/index", b"\t", {}, 400, "malformed JSON body"),
        ("/v2/nothing/here", None, {}, 404, "no route"),
        ("/v2/models/add_sub/versions/%C2%B2/config", None, {}, 404, "version \u00b2 is not found"),
    ],
    ids=[
        "malformed-json",
        "not-an-object",
        "inputs-not-array",
        "unknown-model",
        "wrong-element-count",
        "wrong-json-type",
        "out-of-range",
        "fp16-as-json",
        "header-length-zero",
        "header-length-too-big",
        "unknown-encoding",
        "unknown-field",
        "blank-body",
        "unknown-route",
        "version-in-non-ascii-digits",
    ],
)
def test_bad_requests_get_precise_http_errors(
    server: Server,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    message: str,
) -> None:
    got, got_headers, payload = call(server, path, body, headers)
    assert got == status, payload
    assert got_headers["content-type"] == "application/json"
    assert message in json.loads(payload)["error"]


def _binary_add_sub(rows: int, declared: int, actual: int) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": [rows, 16],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": declared},
                }
                for n in ("INPUT0", "INPUT1")
            ]
        }
    ).encode()
    body = header + b"\0" * actual
    return body, {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize(
    ("declared", "actual", "message"),
    [
        (
            64,
            100,
            "declares 64 bytes of binary data at offset 64, but the body's binary part has 100",
        ),
        (64, 200, "200 bytes of binary data but the inputs' binary_data_size add up to 128"),
        (60, 120, "has 60 bytes of raw content"),
    ],
    ids=["truncated", "trailing-bytes", "size-mismatch"],
)
def test_inconsistent_binary_bodies_are_rejected(
    server: Server, declared: int, actual: int, message: str
) -> None:
    body, headers = _binary_add_sub(1, declared, actual)
    status, _, payload = call(server, "/v2/models/add_sub/infer", body, headers)
    assert status == 400
    assert message in json.loads(payload)["error"]


def test_wrong_method_is_405_with_allow(server: Server) -> None:
    status, headers, payload = call(server, "/v2/models/add_sub/infer", method="GET")
    assert status == 405 and headers["allow"] == "POST"
    assert "GET is not allowed" in json.loads(payload)["error"]


def test_body_over_the_limit_is_413(
    test_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with serving(test_repository, tmp_path_factory, "--http-max-body-bytes", "1000") as small:
        status, _, payload = call(small, "/v2/models/add_sub/infer", b"{" + b" " * 2000 + b"}")
        assert status == 413 and "exceeds the limit of 1000" in json.loads(payload)["error"]
        bomb = gzip.compress(b" " * 100_000)
        status, _, payload = call(
            small, "/v2/models/add_sub/infer", bomb, {"Content-Encoding": "gzip"}
        )
        assert status == 413 and "decompressed" in json.loads(payload)["error"]
        assert call(small, "/v2/health/ready")[0] == 200


def test_gzip_request_and_response(http: httpclient.InferenceServerClient) -> None:
    a = np.ones((8, 16), np.float32)
    result = http.infer(
        "add_sub",
        add_sub_inputs(a, a, True),
        request_compression_algorithm="gzip",
        response_compression_algorithm="gzip",
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)


def test_model_error_is_500_and_isolated(http: httpclient.InferenceServerClient) -> None:
    tensor = httpclient.InferInput("INPUT", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.full((1, 4), -1, np.float32))
    with pytest.raises(InferenceServerException, match="negative input") as info:
        http.infer("failing", [tensor])
    assert info.value.status() == "500"
    assert http.is_server_ready()


def test_openapi_and_browser_page_are_served(server: Server) -> None:
    status, headers, body = call(server, "/openapi.json")
    doc = json.loads(body)
    assert status == 200 and doc["openapi"].startswith("3.")
    assert "post" in doc["paths"]["/v2/models/{model_name}/infer"]
    assert "get" in doc["paths"]["/v2/scheduler"]
    status, headers, body = call(server, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"/static/app.js" in body
    assert call(server, "/static/app.js")[0] == 200
    assert call(server, "/static/missing.js")[0] == 404


def test_cors_only_for_allowed_origins(
    test_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with serving(
        test_repository, tmp_path_factory, "--cors-allow-origins", "http://app.example"
    ) as cors:
        _, headers, _ = call(cors, "/v2", headers={"Origin": "http://app.example"})
        assert headers["access-control-allow-origin"] == "http://app.example"
        _, headers, _ = call(cors, "/v2", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in headers
        status, headers, _ = call(
            cors,
            "/v2/models/add_sub/infer",
            method="OPTIONS",
            headers={
                "Origin": "http://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert status == 204 and "POST" in headers["access-control-allow-methods"]


def _add_sub_request(value: float, pad: int = 0, extra: bytes = b"") -> bytes:
    """A raw JSON infer request for add_sub, both inputs `value`; `pad` spaces after the
    document make its body as large as a test needs."""
    tensors = [
        {"name": n, "shape": [1, 16], "datatype": "FP32", "data": [value] * 16}
        for n in ("INPUT0", "INPUT1")
    ]
    body = json.dumps({"inputs": tensors}).encode() + b" " * pad
    head = b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n"
    return head % (len(body), extra) + body


def _read_response(reader: Any) -> tuple[int, bytes]:
    """One HTTP/1.1 response from a socket's file: its status and body."""
    status = int(reader.readline().split()[1])
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, reader.read(length)


def _sum_of(answer: tuple[int, bytes]) -> float:
    """OUTPUT0 (INPUT0 + INPUT1) of a 200 answer, all sixteen values the same."""
    status, body = answer
    assert status == 200, body
    (output,) = [o for o in json.loads(body)["outputs"] if o["name"] == "OUTPUT0"]
    assert len(set(output["data"])) == 1
    return float(output["data"][0])


def test_an_infer_body_in_pieces_and_pipelined_infer_requests_are_answered_in_order(
    server: Server,
) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
        reader = sock.makefile("rb")
        request = _add_sub_request(1.0)
        sock.sendall(request[:-20])
        time.sleep(0.1)  # the server has the head and part of the body
        sock.sendall(request[-20:])
        assert _sum_of(_read_response(reader)) == 2.0
        sock.sendall(b"".join(_add_sub_request(v) for v in (3.0, 4.0, 5.0)))
        assert [_sum_of(_read_response(reader)) for _ in range(3)] == [6.0, 8.0, 10.0]


def test_infer_requests_expecting_100_continue_or_over_64_kib_are_answered(
    server: Server,
) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
        reader = sock.makefile("rb")
        request = _add_sub_request(6.0, extra=b"Expect: 100-continue\r\n")
        head, _, body = request.partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        assert reader.readline().startswith(b"HTTP/1.1 100 ")
        assert reader.readline() == b"\r\n"
        sock.sendall(body)
        assert _sum_of(_read_response(reader)) == 12.0
        large = _add_sub_request(7.0, pad=300_000)  # past uvicorn's 64 KiB read-ahead
        for start in range(0, len(large), 50_000):
            sock.sendall(large[start : start + 50_000])
        assert _sum_of(_read_response(reader)) == 14.0
