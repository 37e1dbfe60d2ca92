"""Megabyte tensors over gRPC, unary and streamed, as tritonclient sends and reads them: the
responses whose outputs the server serializes by hand come back whole and in order."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.e2e.conftest import Server, serving

ELEMENTS = 300_000  # 1.2 MB of FP32: far past the size served by protobuf's own path


def _wide_identity(root: Path) -> None:
    """Identity over a 1-D FP32 tensor of any length, no batching."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT"], ["OUTPUT"])],
        "wide",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / "wide" / "1").mkdir(parents=True)
    onnx.save(model, str(root / "wide" / "1" / "model.onnx"))
    (root / "wide" / "config.pbtxt").write_text(
        'backend: "onnxruntime"\nmax_batch_size: 0\n'
        'input [{ name: "INPUT", data_type: TYPE_FP32, dims: [-1] }]\n'
        'output [{ name: "OUTPUT", data_type: TYPE_FP32, dims: [-1] }]\n'
    )


@pytest.fixture(scope="module")
def wide_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("wide-repo")
    _wide_identity(root)
    with serving(root, tmp_path_factory, wait_model="wide") as server:
        yield server


def _input(data: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("INPUT", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return tensor


def test_a_megabyte_output_comes_back_whole_over_unary_grpc(wide_server: Server) -> None:
    data = np.random.default_rng(1).random(ELEMENTS, dtype=np.float32)
    with grpcclient.InferenceServerClient(wide_server.url) as client:
        result = client.infer("wide", [_input(data)], request_id="big")

    assert result.get_response().id == "big"
    assert result.get_output("OUTPUT").shape == [ELEMENTS]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT"), data)


def test_large_and_small_outputs_on_one_stream_each_come_back_whole(wide_server: Server) -> None:
    rng = np.random.default_rng(2)
    sent = {
        f"r{index}": rng.random(ELEMENTS if index % 2 else 16, dtype=np.float32)
        for index in range(6)
    }
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client = grpcclient.InferenceServerClient(wide_server.url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for request_id, data in sent.items():
            client.async_stream_infer("wide", [_input(data)], request_id=request_id)
        received = {}
        for _ in sent:
            result, error = answers.get(timeout=60)
            assert error is None, error
            received[result.get_response().id] = result.as_numpy("OUTPUT")  # type: ignore[attr-defined]
    finally:
        client.stop_stream()
        client.close()

    assert received.keys() == sent.keys()
    for request_id, data in sent.items():
        np.testing.assert_array_equal(received[request_id], data)
