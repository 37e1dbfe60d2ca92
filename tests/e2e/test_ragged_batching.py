"""Triton's ragged batching with tritonclient: requests of different lengths in one batch,
unpadded, with the batch inputs that locate them and an output scattered back by shape."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.e2e.conftest import serving

# An ONNX model as Triton's ragged batching guide describes it: INPUT is every request's
# values back to back, INDEX where each request ends; DOUBLED is INPUT * 2 (scattered back by
# INPUT's shapes), ENDS is INDEX as floats (one row per request).
ONNX_CONFIG = """
max_batch_size: 8
dynamic_batching { preferred_batch_size: [ 3 ] max_queue_delay_microseconds: 5000000 }
input [{ name: "INPUT", data_type: TYPE_FP32, dims: [ -1 ], allow_ragged_batch: true }]
batch_input [{
  kind: BATCH_ACCUMULATED_ELEMENT_COUNT
  target_name: "INDEX"
  data_type: TYPE_INT32
  source_input: "INPUT"
}]
output [
  { name: "DOUBLED", data_type: TYPE_FP32, dims: [ -1 ] },
  { name: "ENDS", data_type: TYPE_FP32, dims: [ 1 ] }
]
batch_output [{
  target_name: "DOUBLED"
  kind: BATCH_SCATTER_WITH_INPUT_SHAPE
  source_input: "INPUT"
}]
"""

# A Python model given the merged batch, reporting the batch inputs it received.
PYTHON = """
import numpy as np


class Model:
    def execute(self, inputs):
        starts = inputs["STARTS"]
        sums = np.add.reduceat(inputs["INPUT"], starts[:-1]) if len(starts) > 1 else []
        items = inputs["ITEMS"].reshape(-1, 1).astype(np.float32)
        return {
            "SUM": np.asarray(sums, np.float32).reshape(-1, 1),
            "LONGEST": np.array([[len(inputs["LONGEST_AS_SHAPE"])]] * (len(starts) - 1),
                                np.float32),
            "ITEM": items,
        }
"""
PYTHON_CONFIG = """
backend: "python"
max_batch_size: 8
dynamic_batching { preferred_batch_size: [ 2 ] max_queue_delay_microseconds: 5000000 }
input [{ name: "INPUT", data_type: TYPE_FP32, dims: [ -1 ], allow_ragged_batch: true }]
batch_input [
  { kind: BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO, target_name: "STARTS",
    data_type: TYPE_INT64, source_input: "INPUT" },
  { kind: BATCH_MAX_ELEMENT_COUNT_AS_SHAPE, target_name: "LONGEST_AS_SHAPE",
    data_type: TYPE_INT32, source_input: "INPUT" },
  { kind: BATCH_ITEM_SHAPE_FLATTEN, target_name: "ITEMS", data_type: TYPE_INT32,
    source_input: "INPUT" }
]
output [
  { name: "SUM", data_type: TYPE_FP32, dims: [ 1 ] },
  { name: "LONGEST", data_type: TYPE_FP32, dims: [ 1 ] },
  { name: "ITEM", data_type: TYPE_FP32, dims: [ 1 ] }
]
"""


def _ragged_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["INPUT", "two"], ["DOUBLED"]),
            helper.make_node("Cast", ["INDEX"], ["ENDS_FLAT"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["ENDS_FLAT", "axis"], ["ENDS"]),
        ],
        "ragged",
        [
            helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["elements"]),
            helper.make_tensor_value_info("INDEX", TensorProto.INT32, ["requests"]),
        ],
        [
            helper.make_tensor_value_info("DOUBLED", TensorProto.FLOAT, ["elements"]),
            helper.make_tensor_value_info("ENDS", TensorProto.FLOAT, ["requests", 1]),
        ],
        initializer=[two, helper.make_tensor("axis", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _together(url: str, model: str, lengths: list[int]) -> list[Any]:
    """One request per length, sent at once; each one's result. The models' preferred batch
    size is the number sent, so the batch goes when the last one arrives."""

    def call(length: int) -> Any:
        client = grpcclient.InferenceServerClient(url)
        tensor = grpcclient.InferInput("INPUT", [1, length], "FP32")
        tensor.set_data_from_numpy(np.arange(1, length + 1, dtype=np.float32).reshape(1, -1))
        return client.infer(model, [tensor])

    with ThreadPoolExecutor(len(lengths)) as pool:
        return list(pool.map(call, lengths))


def test_requests_of_different_lengths_share_a_batch_unpadded(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    repo = tmp_path_factory.mktemp("ragged")
    _ragged_onnx(repo / "ragged" / "1" / "model.onnx")
    (repo / "ragged" / "config.pbtxt").write_text(ONNX_CONFIG)
    (repo / "summed" / "1").mkdir(parents=True)
    (repo / "summed" / "1" / "model.py").write_text(PYTHON)
    (repo / "summed" / "config.pbtxt").write_text(PYTHON_CONFIG)
    with serving(repo, tmp_path_factory) as server:
        client = grpcclient.InferenceServerClient(server.url)
        metadata = client.get_model_metadata("ragged", as_json=True)
        assert [i["name"] for i in metadata["inputs"]] == ["INPUT"]  # INDEX is the batcher's

        results = _together(server.url, "ragged", [3, 4, 5])
        # One batch of 12 values, the requests in arrival order: each starts where another
        # ends (or at 0).
        lengths = [3, 4, 5]
        ends = {n: int(r.as_numpy("ENDS")[0, 0]) for r, n in zip(results, lengths, strict=True)}
        starts = sorted(end - length for length, end in ends.items())
        assert max(ends.values()) == 12 and starts == [0, *sorted(ends.values())[:-1]]
        for result, length in zip(results, [3, 4, 5], strict=True):
            doubled = result.as_numpy("DOUBLED")
            assert doubled.shape == (1, length)
            assert doubled.tolist() == [[2.0 * v for v in range(1, length + 1)]]
        stats = client.get_inference_statistics("ragged", as_json=True)["model_stats"][0]
        assert stats["execution_count"] == "1" and stats["inference_count"] == "3"

        summed = _together(server.url, "summed", [2, 6])
        assert [float(r.as_numpy("SUM")[0, 0]) for r in summed] == [3.0, 21.0]
        assert {float(r.as_numpy("LONGEST")[0, 0]) for r in summed} == {6.0}
        assert [float(r.as_numpy("ITEM")[0, 0]) for r in summed] == [2.0, 6.0]

        with pytest.raises(Exception, match="supplied by the batcher"):
            index = grpcclient.InferInput("INDEX", [1, 1], "INT32")
            index.set_data_from_numpy(np.zeros((1, 1), np.int32))
            tensor = grpcclient.InferInput("INPUT", [1, 2], "FP32")
            tensor.set_data_from_numpy(np.zeros((1, 2), np.float32))
            client.infer("ragged", [tensor, index])
