"""Which backend serves a model: from the config's `backend` / `platform`, else the files."""

from __future__ import annotations

from pathlib import Path

from tensorgate_protos import model_config_pb2 as mc

from tensorgate.backends.base import BackendFactory
from tensorgate.backends.onnx_backend import OnnxFactory
from tensorgate.backends.python_model import PythonFactory
from tensorgate.backends.torch_backend import TorchFactory
from tensorgate.errors import ModelLoadError

FACTORIES: dict[str, BackendFactory] = {
    f.name: f for f in (OnnxFactory(), TorchFactory(), PythonFactory())
}
# Triton platform names that imply a backend.
PLATFORMS = {"onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch"}
# Model files that identify the backend when the config names none, in priority order.
FILE_HINTS = (
    ("model.onnx", "onnxruntime"),
    ("model.pt", "pytorch"),
    ("model.pt2", "pytorch"),
    ("model.py", "python"),
)
PLATFORM_OF = {"onnxruntime": "onnxruntime_onnx", "pytorch": "pytorch_libtorch", "python": ""}


def resolve_backend(config: mc.ModelConfig, version_dir: Path) -> BackendFactory:
    """The factory for this model; fills config.backend and config.platform when empty."""
    name = config.backend
    if not name and config.platform:
        name = PLATFORMS.get(config.platform, "")
        if not name:
            raise ModelLoadError(
                f"unknown platform '{config.platform}'; supported: {', '.join(PLATFORMS)}"
            )
    if not name:
        filename = config.default_model_filename
        for hint, backend in FILE_HINTS:
            if (filename and filename == hint) or (not filename and (version_dir / hint).is_file()):
                name = backend
                break
    if not name:
        raise ModelLoadError(
            f"cannot tell the backend: no backend/platform in config and none of "
            f"{', '.join(h for h, _ in FILE_HINTS)} in {version_dir.name}/"
        )
    factory = FACTORIES.get(name)
    if factory is None:
        raise ModelLoadError(f"unknown backend '{name}'; supported: {', '.join(FACTORIES)}")
    config.backend = name
    if not config.platform:
        config.platform = PLATFORM_OF[name]
    return factory


def model_file(config: mc.ModelConfig, factory: BackendFactory, version_dir: Path) -> Path:
    """The model file in a version directory, honouring default_model_filename."""
    candidates = (
        [config.default_model_filename]
        if config.default_model_filename
        else (
            [factory.default_filename, "model.pt2"]
            if factory.name == "pytorch"
            else [factory.default_filename]
        )
    )
    for name in candidates:
        if (version_dir / name).exists():
            return version_dir / name
    raise ModelLoadError(f"version {version_dir.name} has no {' or '.join(candidates)}")
