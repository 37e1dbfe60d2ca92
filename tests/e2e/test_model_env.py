"""A Triton Python model with its own packed environment (EXECUTION_ENV_PATH), served to
tritonclient: the model's process runs the environment's interpreter and imports its
packages first."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.e2e.conftest import Server, serving

pytestmark = pytest.mark.slow

# Imports a module only the environment has, and a package the server has too, whose copy in
# the environment must win; answers where it runs. auto_complete_config imports them too.
MODEL = """
import sys

import ghp_import
import numpy as np
import tg_probe
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.set_max_batch_size(tg_probe.MAX_BATCH_SIZE)
        return config

    def execute(self, requests):
        where = np.array([[sys.prefix, tg_probe.WHERE, ghp_import.__version__]], dtype=object)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("WHERE", where)]) for _ in requests]
"""
CONFIG = """
backend: "python"
input [{{ name: "INPUT", data_type: TYPE_FP32, dims: [1] }}]
output [{{ name: "WHERE", data_type: TYPE_STRING, dims: [3] }}]
parameters {{ key: "EXECUTION_ENV_PATH" value {{ string_value: "{env}" }} }}
{extra}"""
IN_THREAD = 'parameters { key: "execution" value { string_value: "thread" } }'
# Models that cannot run, and what their failed load must name.
REFUSED = {
    "env_missing": ("$$TRITON_MODEL_DIRECTORY/nowhere.tar.gz", "", "does not exist"),
    "env_in_thread": (
        "$$TRITON_MODEL_DIRECTORY/env.tar.gz",
        IN_THREAD,
        "execution: thread is not possible for this model: parameter EXECUTION_ENV_PATH",
    ),
}


def _environment(root: Path) -> Path:
    """A virtual environment of the server's Python with two packages of its own."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    (site,) = root.glob("lib/python*/site-packages")
    (site / "tg_probe.py").write_text('WHERE = "the environment"\nMAX_BATCH_SIZE = 3\n')
    (site / "ghp_import.py").write_text('__version__ = "0+environment"\n')
    return root


def _model(repo: Path, name: str, env: str, extra: str = "") -> Path:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(MODEL)
    (repo / name / "config.pbtxt").write_text(CONFIG.format(env=env, extra=extra))
    return repo / name


@pytest.fixture(scope="module")
def env_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    base = tmp_path_factory.mktemp("model_env")
    source = _environment(base / "source")
    repo = base / "repo"
    archived = _model(repo, "env_archive", "$$TRITON_MODEL_DIRECTORY/env.tar.gz")
    with tarfile.open(archived / "env.tar.gz", "w:gz") as tar:
        tar.add(source, arcname=".")
    unpacked = _model(repo, "env_directory", "$$TRITON_MODEL_DIRECTORY/env")
    shutil.copytree(source, unpacked / "env", symlinks=True)
    for name, (env, extra, _) in REFUSED.items():
        model = _model(repo, name, env, extra)
        shutil.copy(archived / "env.tar.gz", model)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(base))  # where the server unpacks archives
        # Serving once the loads end, two of them failed: live, not ready.
        with serving(repo, tmp_path_factory, wait_ready=False) as server:
            patch.undo()
            _await_loads(server)
            yield server, base


def _await_loads(server: Server) -> None:
    """Until no model is loading any more (bounded)."""
    with grpcclient.InferenceServerClient(server.url) as client:
        for _ in range(600):
            index = client.get_model_repository_index(as_json=True)["models"]
            if all(m.get("state") != "LOADING" for m in index):
                return
            time.sleep(0.1)
    raise AssertionError(f"models still loading after 60 s: {index}")


@pytest.mark.parametrize("model", ["env_archive", "env_directory"])
def test_a_model_runs_in_its_environment_with_its_packages_first(
    env_server: tuple[Server, Path], model: str
) -> None:
    server, base = env_server
    with httpclient.InferenceServerClient(server.http_url) as client:
        tensor = httpclient.InferInput("INPUT", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 1), dtype=np.float32))
        where = client.infer(model, [tensor]).as_numpy("WHERE")
        config = client.get_model_config(model)
    prefix, probe, version = (value.decode() for value in where[0])
    if model == "env_archive":  # unpacked under the server's temporary directory
        assert Path(prefix).parent == base / "tensorgate-envs"
    else:
        assert prefix == str(base / "repo" / "env_directory" / "env")
    assert (probe, version) == ("the environment", "0+environment")
    assert config["max_batch_size"] == 3  # auto_complete_config ran in the environment too


def test_a_model_whose_environment_cannot_serve_it_fails_its_load_naming_why(
    env_server: tuple[Server, Path],
) -> None:
    server, _ = env_server
    with grpcclient.InferenceServerClient(server.url) as client:
        index = client.get_model_repository_index(as_json=True)["models"]
    reasons = {m["name"]: m.get("reason", "") for m in index if m.get("state") == "UNAVAILABLE"}
    assert set(reasons) == set(REFUSED)
    for name, (_, _, reason) in REFUSED.items():
        assert reason in reasons[name], reasons[name]
