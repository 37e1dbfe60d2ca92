"""Ragged batching: merging differently shaped requests, the batch inputs, the scatter back."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format
from tensorgate.batching.assemble import Staging
from tensorgate.batching.ragged import RaggedBatching
from tensorgate.errors import ModelExecutionError, ModelLoadError
from tensorgate_protos import model_config_pb2 as mc

CONFIG = """
max_batch_size: 8
input [{ name: "X", data_type: TYPE_FP32, dims: [ -1, 2 ], allow_ragged_batch: true },
       { name: "W", data_type: TYPE_FP32, dims: [ 1 ] }]
output [{ name: "Y", data_type: TYPE_FP32, dims: [ -1, 2 ] },
        { name: "Z", data_type: TYPE_FP32, dims: [ 1 ] }]
batch_input [
  { kind: BATCH_ELEMENT_COUNT, target_name: "N", data_type: TYPE_INT32, source_input: "X" },
  { kind: BATCH_ACCUMULATED_ELEMENT_COUNT, target_name: "END", data_type: TYPE_FP32,
    source_input: "X" },
  { kind: BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO, target_name: "START",
    data_type: TYPE_INT64, source_input: "X" },
  { kind: BATCH_MAX_ELEMENT_COUNT_AS_SHAPE, target_name: "MAX", data_type: TYPE_INT32,
    source_input: "X" },
  { kind: BATCH_ITEM_SHAPE, target_name: "SHAPES", data_type: TYPE_INT32, source_input: "X" }
]
batch_output [{ target_name: "Y", kind: BATCH_SCATTER_WITH_INPUT_SHAPE, source_input: "X" }]
"""


def _ragged(text: str = CONFIG) -> RaggedBatching:
    ragged = RaggedBatching.from_config(text_format.Parse(text, mc.ModelConfig()))
    assert ragged is not None
    return ragged


def test_a_batch_joins_ragged_inputs_flat_and_says_where_each_request_is() -> None:
    requests = [
        {"X": np.ones((1, 3, 2), np.float32), "W": np.full((1, 1), 1, np.float32)},
        {"X": np.full((2, 1, 2), 2, np.float32), "W": np.full((2, 1), 2, np.float32)},
    ]
    merged = _ragged().merge(Staging(), requests)
    assert merged["X"].tolist() == [1.0] * 6 + [2.0] * 4  # 6 + 4 elements, no padding
    assert merged["W"].shape == (3, 1)  # regular inputs stack by rows
    assert merged["N"].tolist() == [6, 4] and merged["N"].dtype == np.int32
    assert merged["END"].tolist() == [6.0, 10.0] and merged["END"].dtype == np.float32
    assert merged["START"].tolist() == [0, 6, 10]
    assert merged["MAX"].shape == (6,)
    assert merged["SHAPES"].tolist() == [[3, 2], [1, 2], [1, 2]]  # one row per batch item


def test_scattered_outputs_go_back_by_each_request_s_input_shape() -> None:
    requests = [{"X": np.zeros((1, 3, 2), np.float32)}, {"X": np.zeros((2, 1, 2), np.float32)}]
    outputs = {"Y": np.arange(10, dtype=np.float32), "Z": np.arange(3, dtype=np.float32)}
    parts = _ragged().split(outputs, requests, [1, 2])
    assert parts[0]["Y"].tolist() == [[[0, 1], [2, 3], [4, 5]]]
    assert parts[1]["Y"].tolist() == [[[6, 7]], [[8, 9]]]
    assert [p["Z"].tolist() for p in parts] == [[0], [1, 2]]
    with pytest.raises(ModelExecutionError, match=r"has 9 elements.*it needs 10"):
        _ragged().split({"Y": np.zeros(9, np.float32)}, requests, [1, 2])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("max_batch_size: 0", "needs a batching model"),
        ('batch_input [{ target_name: "N", data_type: TYPE_INT32, source_input: "Q" }]',
         "source_input 'Q' is not an input"),
        ('batch_input [{ target_name: "N", data_type: TYPE_FP16, source_input: "X" }]',
         "must be TYPE_INT32, TYPE_INT64 or TYPE_FP32"),
        ('batch_input [{ target_name: "W", data_type: TYPE_INT32, source_input: "X" }]',
         "'W' is also a client input"),
        ('batch_output [{ target_name: "Z", source_input: "X" }]', "needs as many"),
    ],
)  # fmt: skip
def test_configs_that_cannot_work_fail_the_load_by_name(change: str, message: str) -> None:
    config = text_format.Parse(CONFIG, mc.ModelConfig())
    text_format.Merge(change, config)
    with pytest.raises(ModelLoadError, match=message):
        RaggedBatching.from_config(config)
