"""A real tensorgate process on loopback for the client's tests (never a mock).

These tests import tensorgate_client's stubs, which define the protobuf package `inference`
as tritonclient's do, so they run in their own pytest process (`make test-clients`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "model_repository"
SERVE = [sys.executable, "-m", "tensorgate", "serve"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    grpc: str
    http: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return int(self.process.returncode)


def launch(repo: Path, log: Path, *args: str, grpc_port: int | None = None) -> Server:
    """Start `tensorgate serve` without waiting; callers wait with the client itself."""
    grpc_port = grpc_port or free_port()
    http_port = free_port()
    ports = ["--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", "-1"]
    process = subprocess.Popen(
        [*SERVE, "--model-repository", str(repo), "--host", "127.0.0.1", *ports, *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    return Server(process, f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}", log)


def wait_ready(server: Server, timeout: float = 120) -> Server:
    from tensorgate_client import NO_RETRY, InferenceClient, InferenceServerError

    deadline = time.monotonic() + timeout
    with InferenceClient(server.grpc, retry=NO_RETRY, timeout=2) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{server.output()}")
            try:
                if client.server_ready():
                    return server
            except InferenceServerError:
                pass
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server not ready:\n{server.output()}")


SLOW = """
import time


class Model:
    def execute(self, inputs):
        time.sleep(float(inputs["INPUT"].reshape(-1)[0]))
        return {"OUTPUT": inputs["INPUT"] * 2}
"""


def python_model(root: Path, name: str, code: str = SLOW) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / "model.py").write_text(code)
    (root / name / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 8\n'
        'input [{ name: "INPUT", data_type: TYPE_FP32, dims: [4] }]\n'
        'output [{ name: "OUTPUT", data_type: TYPE_FP32, dims: [4] }]\n'
    )


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled examples (add_sub, text_stats, cnn) plus a model that sleeps on demand."""
    if not (EXAMPLES / ".built").exists():
        pytest.skip("the example repository is not built: run `make test-clients`")
    root = tmp_path_factory.mktemp("repo")
    for model in ("add_sub", "text_stats"):
        os.symlink(EXAMPLES / model, root / model)
    python_model(root, "sleeper")
    return root


@pytest.fixture(scope="session")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("logs") / "server.log"
    running = wait_ready(launch(repository, log, "--access-log-rate", "1"))
    yield running
    assert running.stop() == 0, running.output()
