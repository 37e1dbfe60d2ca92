"""Poll mode's view of the repository: which edits count as a change to a model."""

from __future__ import annotations

import os
from pathlib import Path

from tensorgate.repository.polling import fingerprint, repository_fingerprints


def _model(root: Path) -> Path:
    (root / "m" / "1").mkdir(parents=True)
    (root / "m" / "1" / "model.onnx").write_bytes(b"graph")
    (root / "m" / "config.pbtxt").write_text('backend: "onnxruntime"\n')
    return root / "m"


def test_edits_additions_and_removals_inside_a_model_change_its_fingerprint(
    tmp_path: Path,
) -> None:
    model = _model(tmp_path)
    seen = [fingerprint(model)]
    (model / "config.pbtxt").write_text('backend: "onnxruntime"\nmax_batch_size: 8\n')
    seen.append(fingerprint(model))
    (model / "2").mkdir()
    (model / "2" / "model.onnx").write_bytes(b"graph")
    seen.append(fingerprint(model))
    os.utime(model / "1" / "model.onnx", ns=(0, 1))  # same size, replaced
    seen.append(fingerprint(model))
    (model / "config.pbtxt").unlink()
    seen.append(fingerprint(model))
    assert len(set(seen)) == len(seen)
    assert fingerprint(model) == seen[-1]  # nothing changed: the same


def test_hidden_files_and_directories_are_not_part_of_the_repository(tmp_path: Path) -> None:
    model = _model(tmp_path)
    before = fingerprint(model)
    (model / ".model.onnx.swp").write_bytes(b"editor")
    (model / ".cache").mkdir()
    (model / ".cache" / "x").write_bytes(b"x")
    assert fingerprint(model) == before
    (tmp_path / ".incoming").mkdir()  # a model being copied in under a hidden name
    assert list(repository_fingerprints([tmp_path])) == ["m"]
