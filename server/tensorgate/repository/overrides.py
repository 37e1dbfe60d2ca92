"""A model load's parameters, as Triton's repository extension takes them.

- `config`: the model config as JSON, used for this load instead of the config in the
  repository (tritonclient's `load_model(name, config=...)`).
- `file:<version>/<name>`: the content of a model file (bytes over gRPC, base64 text over
  HTTP); the model is then loaded from these files alone, written to a directory of its own,
  and needs no directory in the repository. Files need a `config` beside them.

A later load without parameters reads the repository again.
"""

from __future__ import annotations

import base64
import binascii
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from google.protobuf import json_format
from tensorgate_protos import model_config_pb2 as mc

from tensorgate.errors import InvalidArgument

CONFIG_PARAMETER = "config"
FILE_PREFIX = "file:"


@dataclass(slots=True)
class LoadOverride:
    """What a load's parameters replace: the config, and maybe the model's files."""

    config: mc.ModelConfig
    files: dict[PurePosixPath, bytes] = field(default_factory=dict)

    def materialize(self, name: str) -> Path:
        """Write the files into a new directory laid out as a repository's model directory
        (blocking); the caller removes it with `remove_files` when the model goes."""
        root = Path(tempfile.mkdtemp(prefix="tensorgate-load-"))
        model_dir = root / name
        for relative, content in self.files.items():
            path = model_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        return model_dir


def remove_files(model_dir: Path) -> None:
    """Remove a directory `materialize` made (its parent is the temporary root)."""
    shutil.rmtree(model_dir.parent, ignore_errors=True)


def load_override(parameters: dict[str, object] | None) -> LoadOverride | None:
    """The override a load's parameters ask for; None when they ask for none."""
    if not parameters:
        return None
    files: dict[PurePosixPath, bytes] = {}
    config_text = None
    for key, value in parameters.items():
        if key == CONFIG_PARAMETER:
            if not isinstance(value, str):
                raise InvalidArgument("load parameter 'config' must be a JSON string")
            config_text = value
        elif key.startswith(FILE_PREFIX):
            files[_relative(key)] = _content(key, value)
        else:
            raise InvalidArgument(
                f"load parameter '{key}' is not supported: the parameters are 'config' (the "
                "model config as JSON) and 'file:<version>/<name>' (model file content)"
            )
    if config_text is None:
        raise InvalidArgument(
            "load parameters 'file:...' need the model config beside them, in 'config'"
        )
    config = mc.ModelConfig()
    try:
        json_format.Parse(config_text, config)
    except json_format.ParseError as exc:
        raise InvalidArgument(f"load parameter 'config' is not a model config: {exc}") from None
    return LoadOverride(config, files)


def _relative(key: str) -> PurePosixPath:
    path = PurePosixPath(key[len(FILE_PREFIX) :])
    if path.is_absolute() or not path.parts or ".." in path.parts:
        raise InvalidArgument(
            f"load parameter '{key}' must name a file inside the model directory, such as "
            "'file:1/model.onnx'"
        )
    return path


def _content(key: str, value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):  # HTTP carries file content as base64 text
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            raise InvalidArgument(f"load parameter '{key}' is not valid base64") from None
    raise InvalidArgument(f"load parameter '{key}' must hold the file's bytes")
