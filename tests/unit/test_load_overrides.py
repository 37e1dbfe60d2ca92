"""A load's parameters: the config and files a client hands in instead of the repository's."""

from __future__ import annotations

import base64
from pathlib import Path, PurePosixPath

import pytest
from tensorgate.errors import InvalidArgument
from tensorgate.repository.overrides import load_override, remove_files

CONFIG = '{"backend": "onnxruntime", "max_batch_size": 2}'


def test_no_parameters_ask_for_nothing_and_a_config_alone_replaces_the_config() -> None:
    assert load_override({}) is None
    override = load_override({"config": CONFIG})
    assert override is not None and override.config.max_batch_size == 2 and not override.files


def test_files_arrive_as_bytes_or_base64_and_are_written_as_a_model_directory(
    tmp_path: Path,
) -> None:
    override = load_override(
        {
            "config": CONFIG,
            "file:1/model.onnx": b"onnx bytes",
            "file:1/extra/vocab.txt": base64.b64encode(b"a\nb\n").decode(),
        }
    )
    assert override is not None
    model_dir = override.materialize("uploaded")
    assert model_dir.name == "uploaded"
    assert (model_dir / "1" / "model.onnx").read_bytes() == b"onnx bytes"
    assert (model_dir / "1" / "extra" / "vocab.txt").read_text() == "a\nb\n"
    assert set(override.files) == {
        PurePosixPath("1/model.onnx"),
        PurePosixPath("1/extra/vocab.txt"),
    }
    remove_files(model_dir)
    assert not model_dir.parent.exists()


@pytest.mark.parametrize(
    ("parameters", "reason"),
    [
        ({"file:1/model.onnx": b"x"}, "need the model config beside them"),
        ({"config": CONFIG, "file:../escape": b"x"}, "must name a file inside the model"),
        ({"config": CONFIG, "file:/etc/passwd": b"x"}, "must name a file inside the model"),
        ({"config": CONFIG, "file:1/model.onnx": "not base64!"}, "is not valid base64"),
        ({"config": "{nope"}, "is not a model config"),
        ({"config": CONFIG, "overwrite": True}, "load parameter 'overwrite' is not supported"),
    ],
)
def test_parameters_that_cannot_work_are_invalid(
    parameters: dict[str, object], reason: str
) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        load_override(parameters)
