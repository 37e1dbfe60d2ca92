"""Python backend: a `Model` class in the version directory's `model.py`.

The contract is plain numpy in, numpy out:

    class Model(tensorgate.PythonModel):
        def load(self, context):            # optional: context.model_dir, .config, .version
            ...
        def execute(self, inputs):          # dict[str, np.ndarray] -> dict[str, np.ndarray]
            ...
        def unload(self):                   # optional
            ...

BYTES tensors arrive as object arrays of `bytes`; outputs may hold bytes or str. A decoupled
model (`model_transaction_policy { decoupled: true }`) makes `execute` a generator, or an
async generator, of output dicts: each one is a response, sent as it is yielded.

A `model.py` that defines Triton's `TritonPythonModel` instead is served by the Triton
adapter (backends/triton_python.py), unchanged.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import multiprocessing
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf import json_format
from tensorgate_protos import model_config_pb2 as mc

from tensorgate.backends import triton_utils
from tensorgate.backends.base import InstanceContext, ModelSignature
from tensorgate.backends.triton_python import TritonPythonInstance, config_dict
from tensorgate.dataplane.types import Array
from tensorgate.errors import ModelLoadError
from tensorgate.executors.model_env import ModelEnv, entry, spawning


class PythonModel:
    """Base class for Python models; subclassing it is optional (duck typing works)."""

    def load(self, context: InstanceContext) -> None:
        """Prepare the model; `context.model_dir` holds its files."""

    def execute(self, inputs: dict[str, Array]) -> dict[str, Array]:
        """Compute every output from the named inputs."""
        raise NotImplementedError

    def unload(self) -> None:
        """Release resources."""


def import_model_file(context: InstanceContext) -> ModuleType:
    """Import the version's model.py as a module of its own (Triton's utils importable)."""
    if not context.config.input or not context.config.output:
        raise ModelLoadError(
            "a Python model needs inputs and outputs: list them in config.pbtxt, or add them "
            "in TritonPythonModel.auto_complete_config"
        )
    return load_module(context.model_name, context.version, context.model_file)


def load_module(model_name: str, version: int, model_file: Path) -> ModuleType:
    """Execute a model.py as the module `tensorgate_models.<model>.v<version>`."""
    sys.modules.setdefault("triton_python_backend_utils", triton_utils)
    module_name = f"tensorgate_models.{model_name}.v{version}"
    spec = importlib.util.spec_from_file_location(module_name, model_file)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {model_file}")
    module = importlib.util.module_from_spec(spec)
    try:
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    except Exception as exc:  # user code may raise anything while importing
        sys.modules.pop(module_name, None)
        raise ModelLoadError(f"model.py failed to import: {type(exc).__name__}: {exc}") from None
    return module


class PythonInstance:
    """One instance of the user's Model class."""

    def __init__(self, module: ModuleType, context: InstanceContext) -> None:
        model_class = getattr(module, "Model", None)
        if model_class is None:
            raise ModelLoadError(
                "model.py defines no class named 'Model' (tensorgate) or 'TritonPythonModel' "
                "(Triton)"
            )
        self._model: Any = model_class()
        load = getattr(self._model, "load", None)
        if load is not None:
            try:
                load(context)
            except Exception as exc:  # user code may raise anything while loading
                raise ModelLoadError(f"Model.load failed: {type(exc).__name__}: {exc}") from None

    def signature(self) -> ModelSignature | None:
        return None

    def execute(self, inputs: dict[str, Array]) -> dict[str, Array]:
        result: dict[str, Array] = self._model.execute(inputs)
        return result

    def close(self) -> None:
        unload = getattr(self._model, "unload", None)
        if unload is not None:
            unload()


def auto_complete(
    config: mc.ModelConfig,
    model_name: str,
    version: int,
    model_file: Path,
    in_child: bool = False,
    env: ModelEnv | None = None,
) -> None:
    """Let a Triton Python model complete its config, as Triton calls
    `TritonPythonModel.auto_complete_config` before the model loads. Only a model.py that
    defines it is imported for it: once, in the server's process, or `in_child`, in a process
    of its own (a model whose instances run in processes never runs in the server's), with
    the interpreter of the model's own environment `env` if it has one."""
    if "auto_complete_config" not in model_file.read_text(encoding="utf-8", errors="replace"):
        return
    if in_child:
        spawn = multiprocessing.get_context("spawn")
        args = (config.SerializeToString(), model_name, version, str(model_file))
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as child:
            target, target_args = entry(env, _completed, *args)
            with spawning(env):  # the child starts at the first submit
                done = child.submit(target, *target_args)
            config.CopyFrom(mc.ModelConfig.FromString(done.result()))
        return
    module = load_module(model_name, version, model_file)
    complete = getattr(getattr(module, "TritonPythonModel", None), "auto_complete_config", None)
    if complete is None:
        return
    given = triton_utils.ModelConfig(config_dict(config), model_name)
    try:
        returned = complete(given)
    except Exception as exc:  # user code may raise anything
        raise ModelLoadError(
            f"TritonPythonModel.auto_complete_config failed: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(returned, triton_utils.ModelConfig):
        raise ModelLoadError(
            "TritonPythonModel.auto_complete_config must return the pb_utils.ModelConfig it "
            f"was given, got {type(returned).__name__}"
        )
    try:
        completed = json_format.ParseDict(returned.as_dict(), mc.ModelConfig())
    except json_format.ParseError as exc:
        raise ModelLoadError(f"TritonPythonModel.auto_complete_config: {exc}") from None
    config.CopyFrom(completed)


def _completed(config: bytes, model_name: str, version: int, model_file: str) -> bytes:
    """`auto_complete` in a child process: the config in and out as bytes."""
    completing = mc.ModelConfig.FromString(config)
    auto_complete(completing, model_name, version, Path(model_file))
    return completing.SerializeToString()


class PythonFactory:
    """Creates instances of `model.py` files: tensorgate `Model` or Triton `TritonPythonModel`."""

    name = "python"
    default_filename = "model.py"

    def create(self, context: InstanceContext) -> PythonInstance | TritonPythonInstance:
        module = import_model_file(context)
        if hasattr(module, "TritonPythonModel"):
            return TritonPythonInstance(module, context)
        return PythonInstance(module, context)
