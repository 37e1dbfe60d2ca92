"""The Python client against a real server: numbers, metadata, streaming, deadlines, retries,
request ids and TLS, over gRPC (sync and asyncio) and HTTP."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from conftest import Server, free_port, launch, python_model, wait_ready
from tensorgate_client import (
    NO_RETRY,
    AsyncInferenceClient,
    HttpInferenceClient,
    InferenceClient,
    InferenceServerError,
    RetryPolicy,
    TlsOptions,
)

A = np.arange(16, dtype=np.float32).reshape(1, 16)
B = np.full((1, 16), 3, dtype=np.float32)


def check_add_sub(outputs: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(outputs["OUTPUT0"], A + B)
    np.testing.assert_array_equal(outputs["OUTPUT1"], A - B)
    assert outputs["OUTPUT0"].dtype == np.float32


def test_grpc_client_infers_and_reads_metadata(server: Server) -> None:
    with InferenceClient(server.grpc) as client:
        assert client.server_live() and client.server_ready()
        assert client.model_ready("add_sub")
        check_add_sub(client.infer("add_sub", {"INPUT0": A, "INPUT1": B}))
        only = client.infer("add_sub", {"INPUT0": A, "INPUT1": B}, outputs=["OUTPUT1"])
        assert list(only) == ["OUTPUT1"]
        text = client.infer("text_stats", {"TEXT": np.array([b"hello", b"grpc!"], dtype=object)})
        assert text["UPPER"].tolist() == [b"HELLO", b"GRPC!"]
        assert text["LENGTH"].tolist() == [5, 5]

        assert client.server_metadata()["name"] == "tensorgate"
        metadata = client.model_metadata("add_sub")
        assert [t["name"] for t in metadata["inputs"]] == ["INPUT0", "INPUT1"]
        assert client.model_config("add_sub")["max_batch_size"] > 0
        stats = client.statistics("add_sub")
        assert stats[0]["name"] == "add_sub" and int(stats[0]["inference_count"]) >= 2
        names = {m["name"] for m in client.repository_index()}
        assert {"add_sub", "text_stats", "sleeper"} <= names


def test_grpc_errors_carry_the_status_and_the_request_id(server: Server) -> None:
    with InferenceClient(server.grpc) as client:
        with pytest.raises(InferenceServerError) as info:
            client.infer("no_such_model", {"INPUT0": A}, request_id="client-req-42")
        assert info.value.code == "NOT_FOUND" and info.value.request_id == "client-req-42"
        with pytest.raises(InferenceServerError) as info:
            client.infer("add_sub", {"INPUT0": A})
        assert info.value.code == "INVALID_ARGUMENT" and "INPUT1" in info.value.message
        # The deadline covers the call: a 2 s execution with a 0.5 s deadline.
        started = time.monotonic()
        with pytest.raises(InferenceServerError) as info:
            client.infer("sleeper", {"INPUT": np.full((1, 4), 2, np.float32)}, timeout=0.5)
        assert info.value.code == "DEADLINE_EXCEEDED"
        assert time.monotonic() - started < 1.5
        client.infer("add_sub", {"INPUT0": A, "INPUT1": B}, request_id="client-req-43")
    # The server logged each request under the id the client sent.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ids = {
            json.loads(line).get("request_id")
            for line in server.output().splitlines()
            if line.startswith("{")
        }
        if {"client-req-42", "client-req-43"} <= ids:
            break
        time.sleep(0.1)
    assert {"client-req-42", "client-req-43"} <= ids


def test_grpc_stream_returns_every_result_with_its_id(server: Server) -> None:
    requests = [{"INPUT0": A + i, "INPUT1": B} for i in range(20)]
    with InferenceClient(server.grpc) as client:
        results = {r.id: r for r in client.stream_infer("add_sub", requests)}
    assert sorted(results, key=int) == [str(i) for i in range(20)]
    for i, result in results.items():
        assert not result.error
        np.testing.assert_array_equal(result.outputs["OUTPUT0"], A + int(i) + B)


def test_asyncio_client_infers_concurrently_and_streams(server: Server) -> None:
    async def scenario() -> None:
        async with AsyncInferenceClient(server.grpc) as client:
            assert await client.server_ready()
            outputs = await asyncio.gather(
                *(client.infer("add_sub", {"INPUT0": A + i, "INPUT1": B}) for i in range(16))
            )
            for i, out in enumerate(outputs):
                np.testing.assert_array_equal(out["OUTPUT1"], A + i - B)
            assert (await client.model_metadata("text_stats"))["name"] == "text_stats"

            async def requests() -> AsyncIterator[dict[str, np.ndarray]]:
                for i in range(5):
                    yield {"INPUT0": A, "INPUT1": B * i}

            seen = {r.id: r.outputs async for r in client.stream_infer("add_sub", requests())}
            assert sorted(seen) == ["0", "1", "2", "3", "4"]
            np.testing.assert_array_equal(seen["4"]["OUTPUT0"], A + B * 4)
            with pytest.raises(InferenceServerError) as info:
                await client.infer("no_such_model", {"INPUT0": A})
            assert info.value.code == "NOT_FOUND"

    asyncio.run(scenario())


def test_http_client_uses_binary_tensors_and_maps_errors(server: Server) -> None:
    with HttpInferenceClient(server.http) as client:
        assert client.server_live() and client.server_ready() and client.model_ready("add_sub")
        check_add_sub(client.infer("add_sub", {"INPUT0": A, "INPUT1": B}))
        text = client.infer("text_stats", {"TEXT": np.array([b"over", b"http"], dtype=object)})
        assert text["UPPER"].tolist() == [b"OVER", b"HTTP"]
        assert client.model_metadata("add_sub")["name"] == "add_sub"
        assert client.model_config("add_sub")["name"] == "add_sub"
        assert client.statistics("add_sub")[0]["name"] == "add_sub"
        assert any(m["name"] == "add_sub" for m in client.repository_index())
        with pytest.raises(InferenceServerError) as info:
            client.infer("no_such_model", {"INPUT0": A}, request_id="http-req-1")
        assert info.value.code == "NOT_FOUND" and info.value.request_id == "http-req-1"
        with pytest.raises(InferenceServerError) as info:
            client.infer("sleeper", {"INPUT": np.full((1, 4), 2, np.float32)}, timeout=0.5)
        assert info.value.code == "DEADLINE_EXCEEDED"
        # The connection is re-opened after a timeout.
        check_add_sub(client.infer("add_sub", {"INPUT0": A, "INPUT1": B}))


def test_calls_are_retried_with_backoff_until_the_server_is_up(
    repository: Path, tmp_path: Path
) -> None:
    port = free_port()
    result: dict[str, object] = {}

    def call() -> None:
        retry = RetryPolicy(attempts=30, initial_backoff_s=0.2, max_backoff_s=1.0)
        with InferenceClient(f"127.0.0.1:{port}", retry=retry, timeout=60) as client:
            try:
                result["out"] = client.infer("add_sub", {"INPUT0": A, "INPUT1": B})
            except InferenceServerError as exc:
                result["error"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(1.0)  # the first attempts find nothing listening
    assert caller.is_alive()
    server = launch(repository, tmp_path / "log", grpc_port=port)
    try:
        caller.join(90)
        assert "out" in result, result
        check_add_sub(result["out"])  # type: ignore[arg-type]
    finally:
        assert server.stop() == 0

    with InferenceClient(f"127.0.0.1:{port}", retry=NO_RETRY) as client:
        with pytest.raises(InferenceServerError) as info:
            client.server_live()
        assert info.value.code == "UNAVAILABLE"


SLOW_LOAD = """
import time


class Model:
    def load(self, context):
        time.sleep(1.5)

    def execute(self, inputs):
        return {"OUTPUT": inputs["INPUT"] * 2}
"""


def test_a_model_still_loading_is_retried_until_ready(tmp_path: Path) -> None:
    python_model(tmp_path / "repo", "late", SLOW_LOAD)
    server = wait_ready(
        launch(tmp_path / "repo", tmp_path / "log", "--model-control-mode", "explicit")
    )
    try:
        loader = threading.Thread(target=lambda: InferenceClient(server.grpc).load_model("late"))
        loader.start()
        time.sleep(0.3)
        ones = {"INPUT": np.ones((1, 4), np.float32)}
        with InferenceClient(server.grpc, retry=NO_RETRY) as client:
            with pytest.raises(InferenceServerError) as info:
                client.infer("late", ones)
            assert info.value.code == "UNAVAILABLE" and "LOADING" in info.value.message
        retry = RetryPolicy(attempts=20, initial_backoff_s=0.1, max_backoff_s=0.5)
        with InferenceClient(server.grpc, retry=retry) as client:
            out = client.infer("late", ones)
        np.testing.assert_array_equal(out["OUTPUT"], 2 * ones["INPUT"])
        loader.join(30)
    finally:
        assert server.stop() == 0


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _certificates(root: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost / 127.0.0.1 and a client certificate."""
    files = {
        n: root / n
        for n in ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")
    }
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(files["ca.key"]),
        "-out",
        str(files["ca.pem"]),
    )
    for name, extra in (
        ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        csr = root / f"{name}.csr"
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(files[f"{name}.key"]),
            "-out",
            str(csr),
        )
        ext = root / f"{name}.ext"
        ext.write_text(extra + "\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(files["ca.pem"]),
            "-CAkey",
            str(files["ca.key"]),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            str(ext),
            "-out",
            str(files[f"{name}.pem"]),
        )
    return files


def test_mutual_tls_over_grpc_and_https(repository: Path, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command (Debian package openssl)")
    certs = _certificates(tmp_path)
    server = launch(
        repository,
        tmp_path / "log",
        "--tls-cert",
        str(certs["server.pem"]),
        "--tls-key",
        str(certs["server.key"]),
        "--tls-client-ca",
        str(certs["ca.pem"]),
    )
    tls = TlsOptions(
        root_certificates=certs["ca.pem"],
        certificate_chain=certs["client.pem"],
        private_key=certs["client.key"],
    )
    try:
        with InferenceClient(
            server.grpc, tls=tls, retry=RetryPolicy(attempts=60, max_backoff_s=0.5)
        ) as client:
            deadline = time.monotonic() + 120
            while not client.server_ready() and time.monotonic() < deadline:
                time.sleep(0.1)
            check_add_sub(client.infer("add_sub", {"INPUT0": A, "INPUT1": B}))
        with HttpInferenceClient(f"https://{server.http}", tls=tls) as client:
            check_add_sub(client.infer("add_sub", {"INPUT0": A, "INPUT1": B}))
        # Without a client certificate the handshake is refused.
        no_cert = TlsOptions(root_certificates=certs["ca.pem"])
        with InferenceClient(server.grpc, tls=no_cert, retry=NO_RETRY, timeout=5) as client:
            with pytest.raises(InferenceServerError) as info:
                client.server_live()
            assert info.value.code == "UNAVAILABLE"
        # Plain text to a TLS port fails too.
        plain = InferenceClient(server.grpc, retry=NO_RETRY, timeout=5)
        with plain, pytest.raises(InferenceServerError):
            plain.server_live()
    finally:
        assert server.stop() == 0
