"""Triton serving a repository a benchmark writes itself, for rows the peers' fixed models
do not cover (a pure-Python model, a 16 MB identity).

It runs the tritonserver that ../shared/peers/setup.sh installs (the pytriton build, whose
only backend is Triton's Python backend), started the way ../shared/peers/start.sh starts
it, on the ports given. Models are TritonPythonModel files: `python_model` wraps an
`execute` body that turns `inputs` (name -> numpy array, one request's) into outputs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

PEERS_DIR = Path(os.environ.get("PEERS_DIR", Path.home() / ".cache" / "tensorgate-peers"))
_VENV = PEERS_DIR / "venv-triton"

# Triton hands the model a list of requests; each gets the response of `run(inputs)`.
_MODEL = """
import sys
sys.path.insert(0, {site!r})
import numpy as np
import triton_python_backend_utils as pb_utils

{setup}

def run(inputs):
{body}


class TritonPythonModel:
    def initialize(self, args):
        import json
        config = json.loads(args["model_config"])
        self.inputs = [i["name"] for i in config["input"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            inputs = {{
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                for name in self.inputs
            }}
            outputs = run(inputs)
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outputs.items()])
            )
        return responses
"""


def _server_dir() -> Path | None:
    found = sorted(_VENV.glob("lib/python3*/site-packages/pytriton/tritonserver"))
    return found[0] if found else None


def available() -> bool:
    """Whether ../shared/peers/setup.sh has installed Triton on this machine."""
    server = _server_dir()
    return server is not None and (server / "bin" / "tritonserver").exists()


def python_model(body: str, setup: str = "") -> str:
    """A TritonPythonModel whose `run(inputs)` is `body` (indented by the caller's 4), with
    `setup` run once at import (the site-packages of Triton's interpreter are importable)."""
    server = _server_dir()
    assert server is not None, "Triton is not installed: run ../shared/peers/setup.sh"
    site = str(server.parent.parent)
    return _MODEL.format(site=site, body=body, setup=setup)


class Triton:
    """tritonserver on loopback over `repository`; `stop()` ends it and its stubs."""

    def __init__(
        self,
        repository: Path,
        grpc_port: int,
        http_port: int,
        metrics_port: int,
        *extra: str,
    ) -> None:
        server = _server_dir()
        if server is None:
            raise RuntimeError("Triton is not installed: run ../shared/peers/setup.sh")
        self.grpc = f"127.0.0.1:{grpc_port}"
        self._backends = Path(tempfile.mkdtemp(prefix="triton-backends-"))
        python = self._backends / "python"
        python.mkdir()
        version = server.parent.parent.parent.name.removeprefix("python")  # "3.12"
        for part in (
            server / "backends" / "python" / "libtriton_python.so",
            server / "backends" / "python" / "triton_python_backend_utils.py",
            server / "python_backend_stubs" / version / "triton_python_backend_stub",
        ):
            shutil.copy(part, python)
        interpreter = Path(os.path.realpath(_VENV / "bin" / "python"))
        libraries = [
            str(interpreter.parent.parent / "lib"),
            str(server.parent.parent / "nvidia_pytriton.libs"),
            os.environ.get("LD_LIBRARY_PATH", ""),
        ]
        env = dict(os.environ, LD_LIBRARY_PATH=":".join(filter(None, libraries)))
        command = [
            str(server / "bin" / "tritonserver"),
            f"--model-repository={repository}",
            f"--backend-directory={self._backends}",
            f"--cache-directory={server / 'caches'}",
            *("--http-address", "127.0.0.1", "--http-port", str(http_port)),
            *("--grpc-address", "127.0.0.1", "--grpc-port", str(grpc_port)),
            *("--metrics-port", str(metrics_port)),
            *extra,
        ]
        handle, log = tempfile.mkstemp(prefix="triton-", suffix=".log")
        self._log = Path(log)
        with os.fdopen(handle, "wb") as out:
            self.process = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait_ready(http_port)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_ready(self, http_port: int) -> None:
        import urllib.error
        import urllib.request

        url = f"http://127.0.0.1:{http_port}/v2/health/ready"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        log = self._log.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"Triton did not become ready:\n{log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(10)
        shutil.rmtree(self._backends, ignore_errors=True)
        self._log.unlink(missing_ok=True)
