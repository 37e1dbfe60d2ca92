"""End-to-end fixtures: a real tensorgate process on loopback, driven by real clients.

These tests never import tensorgate's protos: tritonclient registers the same `inference`
protobuf package, and the client side here is Triton's own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient

from tests.e2e.models import build_test_repository
from tests.e2e.stream_models import build_stream_repository

ROOT = Path(__file__).resolve().parents[2]


def doc_block(path: str, name: str) -> str:
    """The command block between `<!-- name:begin -->` and `<!-- name:end -->` in a page of
    the documentation (a path from the repository root): the runnable examples."""
    text = (ROOT / path).read_text()
    block = text.split(f"<!-- {name}:begin -->")[1].split(f"<!-- {name}:end -->")[0]
    return block.split("```", 1)[1].split("\n", 1)[1].split("```")[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    http_port: int = 0
    metrics_port: int = 0

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """The server's JSON log lines, parsed (other output, like spans, is skipped)."""
        records = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and "event" in record:
                    records.append(record)
        return records

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


class PortTaken(RuntimeError):
    """A port chosen free was taken before the server bound it."""


def start_server(
    repo: Path,
    log: Path,
    *args: str,
    wait_ready: bool = True,
    wait_model: str | None = None,
    client_options: dict[str, Any] | None = None,
) -> Server:
    """Start `python -m tensorgate serve` and wait (bounded) until it answers;
    `client_options` go to the gRPC client that waits (TLS files)."""
    # A free port is chosen from the range outgoing connections take their ports from: one
    # of the test's own clients may take it before the server binds it. Then new ports.
    for _ in range(2):
        try:
            return _start_server(repo, log, args, wait_ready, wait_model, client_options)
        except PortTaken:
            pass
    return _start_server(repo, log, args, wait_ready, wait_model, client_options)


def _start_server(
    repo: Path,
    log: Path,
    args: tuple[str, ...],
    wait_ready: bool,
    wait_model: str | None,
    client_options: dict[str, Any] | None,
) -> Server:
    port, http_port, metrics_port = free_port(), free_port(), free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    handle = log.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorgate",
            "serve",
            "--model-repository",
            str(repo),
            "--host",
            "127.0.0.1",
            "--grpc-port",
            str(port),
            "--http-port",
            str(http_port),
            "--metrics-port",
            str(metrics_port),
            *args,
        ],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    server = Server(process, port, log, http_port, metrics_port)
    client = grpcclient.InferenceServerClient(server.url, **(client_options or {}))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = server.output()
            if process.returncode == 2 and "cannot listen on" in output:
                raise PortTaken(output)
            raise RuntimeError(f"server exited {process.returncode}:\n{output}")
        try:
            if wait_model is not None and client.is_model_ready(wait_model):
                return server
            ready = client.is_server_ready() if wait_ready else client.is_server_live()
            if wait_model is None and ready:
                return server
        except Exception:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server not ready after 120 s:\n{server.output()}")


@pytest.fixture(scope="session")
def test_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    build_test_repository(root)
    return root


@contextmanager
def serving(
    repo: Path, tmp_path_factory: pytest.TempPathFactory, *args: str, **kwargs: Any
) -> Iterator[Server]:
    """A server for a fixture's lifetime, which must end with a clean shutdown (exit 0)."""
    log = tmp_path_factory.mktemp("logs") / "server.log"
    server = start_server(repo, log, *args, **kwargs)
    try:
        yield server
    finally:
        assert server.stop() == 0, server.output()


@pytest.fixture(scope="session")
def server(test_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(test_repository, tmp_path_factory) as server:
        yield server


@pytest.fixture
def client(server: Server) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def counter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the repeat model counts its generator's steps and closes."""
    return tmp_path_factory.mktemp("counter") / "repeat.log"


@pytest.fixture(scope="session")
def stream_server(tmp_path_factory: pytest.TempPathFactory, counter: Path) -> Iterator[Server]:
    """A server of the decoupled and sequence models (refused configs make it not ready)."""
    root = tmp_path_factory.mktemp("stream_repo")
    build_stream_repository(root, counter)
    with serving(root, tmp_path_factory, "--no-strict-readiness") as server:
        yield server


def instance_children(pid: int) -> list[int]:
    """The server's spawned instance processes (multiprocessing's resource tracker aside)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == pid and b"spawn_main" in command:
            found.append(int(entry.name))
    return found


def kill_children_and_await_failure(server: Server, results: Any) -> str:
    """Kill every instance process of `server` and wait (at most 30 s) for the error that
    fails the stream whose `results` queue is given: that error's message."""
    from tritonclient.utils import InferenceServerException

    for pid in instance_children(server.process.pid):  # the stream's child is among them
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        item = results.get(timeout=30)
        if isinstance(item, InferenceServerException):
            return str(item.message())
    raise AssertionError("the stream was not failed within 30 s")
