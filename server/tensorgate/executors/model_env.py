"""A Python model's own packed environment, Triton's `EXECUTION_ENV_PATH` parameter: a
conda-pack archive (or a virtual environment packed with tar), or an unpacked directory.

The archive is unpacked once per archive version into the temporary directory, shared by
every model, instance and worker process that names it. The model's processes are started
with the environment's interpreter, which must be the server's Python version (the server's
own modules run beside the model in that process), and import from the environment's
packages first, then from the server's for what the environment lacks.

Imports only the standard library at module level: `in_env` runs in the new process before
the import path is set, and whatever is imported first is what the model gets.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import multiprocessing.spawn
import os
import shutil
import site
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tensorgate.errors import ModelLoadError

ENV_PARAMETER = "EXECUTION_ENV_PATH"
MODEL_DIRECTORY = "$$TRITON_MODEL_DIRECTORY"
_PROBE = "import json, sys; print(json.dumps([list(sys.version_info[:2]), sys.path]))"
# multiprocessing has one interpreter setting for every spawned process of the server: it is
# changed only while this lock is held, around one start.
_SPAWN_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelEnv:
    """An unpacked environment: its interpreter and the import path it starts with."""

    root: Path
    python: str
    sys_path: tuple[str, ...]
    # The server's site directories, whose .pth files its own packages may need (an
    # editable install's import hooks): read in the model's process after its own path.
    server_sites: tuple[str, ...]


def env_parameter(config: Any) -> str:
    """The model's EXECUTION_ENV_PATH, or "" when it has none (a Python model's only)."""
    param = config.parameters.get(ENV_PARAMETER)
    return param.string_value if param is not None and config.backend == "python" else ""


def model_env(config: Any, model_dir: Path) -> ModelEnv | None:
    """The model's environment, unpacked and checked; None when it names none."""
    value = env_parameter(config)
    if not value:
        return None
    path = Path(value.replace(MODEL_DIRECTORY, str(model_dir)))
    if not path.is_absolute():
        path = model_dir / path
    if path.is_dir():
        root = path
    elif path.is_file():
        root = _unpacked(path)
    else:
        raise ModelLoadError(f"parameter {ENV_PARAMETER}: {path} does not exist")
    candidates = (root / "bin" / "python3", root / "bin" / "python")
    python = next((p for p in candidates if p.exists()), None)
    if python is None:
        raise ModelLoadError(
            f"parameter {ENV_PARAMETER}: {path} has no bin/python3 or bin/python; pack a "
            "whole environment (conda-pack, or a virtual environment with its interpreter)"
        )
    version, sys_path = _probe(python, path)
    server = list(sys.version_info[:2])
    if version != server:
        raise ModelLoadError(
            f"parameter {ENV_PARAMETER}: {path} has Python {version[0]}.{version[1]}; the "
            f"server runs {server[0]}.{server[1]}, and the model's process runs the server's "
            "modules beside the model, so the environment needs the same version"
        )
    sites = site.getsitepackages()
    if site.ENABLE_USER_SITE:
        sites.append(site.getusersitepackages())
    return ModelEnv(root, str(python), tuple(sys_path), tuple(sites))


def _unpacked(archive: Path) -> Path:
    """Where `archive` is unpacked: once per archive version, shared by every process that
    names it (a new directory moved into place whole, so none sees half of one)."""
    stat = archive.stat()
    key = f"{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    cache = Path(tempfile.gettempdir()) / "tensorgate-envs"
    target = cache / hashlib.sha256(key).hexdigest()[:24]
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache, prefix=".unpacking-"))
    try:
        with tarfile.open(archive) as tar:
            # "tar": no member outside the directory, no set-id bits; an environment's
            # interpreter may be a link to an absolute path, which "data" would refuse.
            tar.extractall(staging, filter="tar")
        os.rename(staging, target)
    except (OSError, tarfile.TarError) as exc:
        if not target.is_dir():  # else another process moved its copy into place first
            raise ModelLoadError(
                f"parameter {ENV_PARAMETER}: cannot unpack {archive}: {exc}"
            ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _probe(python: Path, path: Path) -> tuple[list[int], list[str]]:
    """The interpreter's version and the import path it starts with on its own."""
    try:
        done = subprocess.run(
            [str(python), "-I", "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        version, sys_path = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise ModelLoadError(
            f"parameter {ENV_PARAMETER}: the interpreter of {path} does not run: {detail}"
        ) from None
    return version, [p for p in sys_path if p]


@contextlib.contextmanager
def spawning(env: ModelEnv | None) -> Iterator[None]:
    """Hold while starting spawned processes: with `env`, they run its interpreter."""
    with _SPAWN_LOCK:
        if env is None:
            yield
            return
        server = multiprocessing.spawn.get_executable()
        multiprocessing.spawn.set_executable(env.python)
        try:
            yield
        finally:
            multiprocessing.spawn.set_executable(server)


def entry(
    env: ModelEnv | None, function: Callable[..., Any], *args: Any
) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """What a spawned process is to call to run `function(*args)`: the function itself, or,
    with `env`, `in_env` naming it (its module imported only once the path is set)."""
    if env is None:
        return function, args
    return in_env, (env, f"{function.__module__}:{function.__qualname__}", *args)


def in_env(env: ModelEnv, target: str, *args: Any) -> Any:
    """In a process started with an environment's interpreter: its own import path ahead
    of the server's (which spawning handed over), then `target` ("module:function")."""
    own = list(env.sys_path)
    sys.path[:] = own + [p for p in sys.path if p not in own]
    for directory in env.server_sites:
        if os.path.isdir(directory):
            site.addsitedir(directory)
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)(*args)
