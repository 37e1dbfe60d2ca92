"""The classification extension: top classes per row, labels, and the parameter's checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tensorgate.dataplane.classification import classify, read_labels, top_classes
from tensorgate.dataplane.response_cache import ResponseCache
from tensorgate.dataplane.types import InferRequest
from tensorgate.errors import InvalidArgument, ModelLoadError
from tensorgate.repository.config import parse_config


def _texts(array: np.ndarray) -> list[object]:
    return np.vectorize(bytes.decode, otypes=[object])(array).tolist()


def test_each_row_is_ranked_highest_first_with_its_labels() -> None:
    logits = np.array([[1.1, 3.3, 0.5, 2.4], [0.0, -1.0, 5.0, 5.0]], dtype=np.float32)
    top = top_classes("OUT", logits, 2, batched=True, labels=("a", "b", "c"))
    assert top.shape == (2, 2)
    # Ties keep the lower index first; index 3 has no label line, so none is written.
    assert _texts(top) == [
        ["3.300000:1:b", "2.400000:3"],
        ["5.000000:2:c", "5.000000:3"],
    ]


def test_an_unbatched_output_is_ranked_whole_and_integers_print_plainly() -> None:
    values = np.array([[4, 9], [1, 7]], dtype=np.int64)
    assert _texts(top_classes("OUT", values, 10, batched=False, labels=None)) == [
        "9:1",
        "7:3",
        "4:0",
        "1:2",
    ]


@pytest.mark.parametrize("dtype", [np.float16, np.bool_, np.object_])
def test_outputs_that_do_not_rank_are_invalid(dtype: type) -> None:
    with pytest.raises(InvalidArgument, match="integer and 32- or 64-bit float outputs only"):
        top_classes("OUT", np.zeros((1, 2), dtype=dtype), 1, batched=True, labels=None)


@pytest.mark.parametrize("count", [-1, 1.5, "3", True])
def test_a_count_that_is_not_a_whole_number_is_invalid(count: object) -> None:
    with pytest.raises(InvalidArgument, match="must be a whole number of classes"):
        classify(InferRequest("m"), "OUT", count)


def test_a_count_of_zero_asks_for_the_values() -> None:
    request = InferRequest("m")
    classify(request, "OUT", 0)
    assert request.classifications is None
    classify(request, "OUT", 3)
    assert request.classifications == {"OUT": 3}


def test_classification_changes_the_cache_key() -> None:
    inputs = {"X": np.ones((1, 2), dtype=np.float32)}
    plain = InferRequest("m", inputs=inputs, datatypes={"X": "FP32"})
    ranked = InferRequest("m", inputs=inputs, datatypes={"X": "FP32"}, classifications={"Y": 2})
    assert ResponseCache.key("m", 1, plain) != ResponseCache.key("m", 1, ranked)


def test_labels_are_read_from_the_model_directory_or_fail_the_load(tmp_path: Path) -> None:
    config = parse_config(
        'output [{ name: "Y", data_type: TYPE_FP32, dims: [3], label_filename: "labels.txt" }]'
    )
    with pytest.raises(ModelLoadError, match=r"cannot read label_filename labels\.txt"):
        read_labels(config, tmp_path)
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    assert read_labels(config, tmp_path) == {"Y": ("cat", "dog", "bird")}
    config.output[0].label_filename = "../labels.txt"
    with pytest.raises(ModelLoadError, match="must name a file in the model directory"):
        read_labels(config, tmp_path)
