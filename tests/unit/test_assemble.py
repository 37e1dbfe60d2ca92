"""Batch assembly: concatenation into reused buffers, row-slice splitting, aliasing outputs."""

from __future__ import annotations

import numpy as np
import pytest
from tensorgate.batching.assemble import STAGED_MIN_BYTES, Staging, split_outputs
from tensorgate.errors import ModelExecutionError

# Columns enough that two rows pass the size from which inputs are staged.
WIDE = STAGED_MIN_BYTES // 4


def _req(*values: float, width: int = WIDE) -> dict[str, np.ndarray]:
    return {"X": np.repeat(np.array(values, dtype=np.float32).reshape(-1, 1), width, axis=1)}


def test_large_requests_are_stacked_into_one_reused_buffer() -> None:
    staging = Staging()
    first = staging.merge([_req(1), _req(2, 3)])["X"]
    assert first[:, 0].tolist() == [1, 2, 3]
    second = staging.merge([_req(4), _req(5)])["X"]
    assert second[:, 0].tolist() == [4, 5]
    assert np.shares_memory(first, second)  # same buffer, no new allocation


def test_small_requests_are_stacked_into_a_new_array_that_outputs_may_alias() -> None:
    staging = Staging()
    first = staging.merge([_req(1, width=16), _req(2, width=16)])["X"]
    second = staging.merge([_req(4, width=16), _req(5, width=16)])["X"]
    assert first[:, 0].tolist() == [1, 2] and second[:, 0].tolist() == [4, 5]
    assert not np.shares_memory(first, second)
    outputs = {"Y": second}
    assert staging.detach(outputs)["Y"] is second  # nothing reused, nothing to copy out


def test_single_request_passes_through_without_a_copy() -> None:
    request = _req(1, 2)
    assert Staging().merge([request]) is request


def test_output_aliasing_the_buffer_is_copied_before_reuse() -> None:
    staging = Staging()
    merged = staging.merge([_req(1), _req(2)])
    kept = staging.detach({"Y": merged["X"]})["Y"]
    staging.merge([_req(7), _req(8)])
    assert kept[:, 0].tolist() == [1, 2]


def test_bytes_inputs_concatenate_as_objects() -> None:
    parts = [{"S": np.array([[b"a"]], dtype=object)}, {"S": np.array([[b"b"]], dtype=object)}]
    assert Staging().merge(parts)["S"].reshape(-1).tolist() == [b"a", b"b"]


def test_outputs_split_into_views_per_request() -> None:
    outputs = {"Y": np.arange(3, dtype=np.float32).reshape(3, 1)}
    parts = split_outputs(outputs, [1, 2])
    assert [p["Y"].reshape(-1).tolist() for p in parts] == [[0], [1, 2]]
    assert np.shares_memory(parts[1]["Y"], outputs["Y"])


def test_output_without_one_row_per_input_row_is_a_model_error() -> None:
    with pytest.raises(ModelExecutionError, match="batch of 3 rows"):
        split_outputs({"Y": np.zeros((2, 1))}, [1, 2])
