"""The examples/ folder works as its README says: each repository served as it is, each
client run against it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.e2e.conftest import ROOT, Server, serving

pytestmark = pytest.mark.slow
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def triton_repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(EXAMPLES / "triton_repository", tmp_path_factory) as server:
        yield server


def run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_python_grpc_client_runs_against_the_triton_repository(
    triton_repository: Server,
) -> None:
    out = run([sys.executable, "examples/clients/python_grpc.py", triton_repository.url])
    assert "add_sub OUTPUT0: [1.0, 2.0," in out
    assert [line.split()[-1] for line in out.splitlines() if "repeat_int32" in line] == [
        "10",
        "20",
        "30",
    ]
    counted: dict[str, list[int]] = {}
    for line in out.splitlines():
        if line.startswith("countdown "):
            _, request, _, value = line.split()
            counted.setdefault(request, []).append(int(value))
    assert counted == {"from-3": [2, 1, 0], "from-5": [4, 3, 2, 1, 0]}


def test_the_python_http_client_runs_against_the_triton_repository(
    triton_repository: Server,
) -> None:
    out = run([sys.executable, "examples/clients/python_http.py", triton_repository.http_url])
    assert "server: tensorgate" in out
    assert "add_sub OUTPUT1: [-1.0, 0.0, 1.0," in out


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (Debian package curl)")
def test_the_curl_script_runs_against_the_triton_repository(triton_repository: Server) -> None:
    out = run(["bash", "examples/clients/curl.sh", triton_repository.http_url])
    answers = [line for line in out.splitlines() if line.startswith("{")]
    assert len(answers) == 2 and all('"OUTPUT0"' in a for a in answers)


def test_the_python_model_example_normalizes_rows(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    repository = EXAMPLES / "python_model" / "model_repository"
    with (
        serving(repository, tmp_path_factory) as server,
        grpcclient.InferenceServerClient(server.url) as client,
    ):
        x = np.array([[3, 4, 0]], dtype=np.float32)
        tensor = grpcclient.InferInput("X", [1, 3], "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("normalize", [tensor])
    np.testing.assert_allclose(result.as_numpy("Y"), [[0.6, 0.8, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("NORM"), [[5.0]])
