"""A Python model's packed environment (EXECUTION_ENV_PATH): unpacking, the interpreter's
checks, and the placement it forces."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import pytest
from tensorgate.errors import ModelLoadError
from tensorgate.executors import model_env
from tensorgate.runners.build import execution
from tensorgate_protos import model_config_pb2 as mc

SERVER_VERSION = f"[{sys.version_info[0]}, {sys.version_info[1]}]"


def _config(env: str, placement: str = "") -> mc.ModelConfig:
    config = mc.ModelConfig(name="m", backend="python")
    config.parameters[model_env.ENV_PARAMETER].string_value = env
    if placement:
        config.parameters["execution"].string_value = placement
    return config


def _interpreter(root: Path, version: str = SERVER_VERSION) -> None:
    """A stand-in interpreter that answers the probe with `version` and an import path."""
    (root / "bin").mkdir(parents=True)
    python = root / "bin" / "python3"
    here = '$(cd "$(dirname "$0")/.." && pwd)'  # where it was unpacked
    python.write_text(f'#!/bin/sh\necho "[{version}, [\\"{here}/lib\\"]]"\n')
    python.chmod(0o755)


def _pack(source: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=".")


def test_an_archive_is_unpacked_once_and_its_interpreter_and_path_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_env.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    _interpreter(tmp_path / "src")
    (tmp_path / "model").mkdir()
    _pack(tmp_path / "src", tmp_path / "model" / "env.tar.gz")
    config = _config("$$TRITON_MODEL_DIRECTORY/env.tar.gz")
    env = model_env.model_env(config, tmp_path / "model")
    assert env is not None
    assert env.python == str(env.root / "bin" / "python3")
    assert env.sys_path == (f"{env.root}/lib",)
    marker = env.root / "unpacked-before"
    marker.write_text("")
    again = model_env.model_env(config, tmp_path / "model")
    assert again is not None and again.root == env.root and marker.exists()


def test_an_unpacked_directory_is_used_where_it_is(tmp_path: Path) -> None:
    _interpreter(tmp_path / "model" / "env")
    env = model_env.model_env(_config("env"), tmp_path / "model")  # relative to the model
    assert env is not None and env.root == tmp_path / "model" / "env"


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: (root / "env").mkdir(), "has no bin/python3 or bin/python"),
        (lambda root: _interpreter(root / "env", "[2, 7]"), r"has Python 2\.7; the server runs"),
        (lambda root: (root / "env").write_bytes(b"not an archive"), "cannot unpack"),
    ],
)
def test_an_environment_that_cannot_run_the_model_fails_the_load_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepare: object, message: str
) -> None:
    monkeypatch.setattr(model_env.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    prepare(tmp_path)  # type: ignore[operator]
    with pytest.raises(ModelLoadError, match=f"parameter EXECUTION_ENV_PATH: .*{message}"):
        model_env.model_env(_config(str(tmp_path / "env")), tmp_path)


def test_an_archive_member_outside_its_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_env.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    archive = tmp_path / "env.tar"
    with tarfile.open(archive, "w") as tar:
        member = tarfile.TarInfo("../escaped")
        tar.addfile(member, io.BytesIO(b""))
    with pytest.raises(ModelLoadError, match="cannot unpack"):
        model_env.model_env(_config(str(archive)), tmp_path)
    assert not (tmp_path / "tmp" / "escaped").exists()
    assert not list((tmp_path / "tmp" / "tensorgate-envs").iterdir())  # nothing half-made


def test_a_model_with_an_environment_runs_in_processes_and_refuses_other_placements() -> None:
    assert execution(_config("env.tar.gz"), "thread") == "process"
    with pytest.raises(ModelLoadError, match=r"execution: thread is not possible.*EXECUTION_ENV"):
        execution(_config("env.tar.gz", "thread"), "thread")
    onnx = _config("env.tar.gz")
    onnx.backend = "onnxruntime"  # Triton reads the parameter for Python models only
    assert model_env.env_parameter(onnx) == "" and execution(onnx, "thread") == "thread"
