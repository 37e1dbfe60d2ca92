"""The CUDA-stream path: exercised on a GPU machine, a clear load error everywhere else."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.e2e.conftest import Server, serving


def _cuda_devices() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _ort_has_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


NEEDS_GPU = pytest.mark.skipif(
    _cuda_devices() == 0, reason="no CUDA device visible to torch (GPU tests run on a lent GPU)"
)

CONFIG = """backend: "{backend}"
max_batch_size: 16
dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
instance_group [{{ kind: KIND_GPU, count: 2, gpus: [0] }}]
input [{{ name: "{inp}", data_type: TYPE_FP32, dims: [4] }}]
output [{{ name: "{out}", data_type: TYPE_FP32, dims: [4] }}]
"""


def _torch_model(root: Path) -> None:
    import torch

    class TwoXPlusOne(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 + 1

    (root / "gpu_torch" / "1").mkdir(parents=True)
    torch.jit.save(torch.jit.script(TwoXPlusOne()), str(root / "gpu_torch" / "1" / "model.pt"))
    (root / "gpu_torch" / "config.pbtxt").write_text(
        CONFIG.format(backend="pytorch", inp="X", out="Y")
    )


def _onnx_model(root: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["X", "two"], ["t"]),
            helper.make_node("Add", ["t", "one"], ["Y"]),
        ],
        "two_x_plus_one",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[two, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / "gpu_onnx" / "1").mkdir(parents=True)
    onnx.save(model, str(root / "gpu_onnx" / "1" / "model.onnx"))
    (root / "gpu_onnx" / "config.pbtxt").write_text(
        CONFIG.format(backend="onnxruntime", inp="X", out="Y")
    )


@pytest.fixture(scope="module")
def gpu_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("gpu_repo")
    _torch_model(root)
    _onnx_model(root)
    # Not ready on a machine without a GPU: strict readiness waits for every model.
    with serving(root, tmp_path_factory, wait_ready=False) as server:
        yield server


def _settled_index(client: grpcclient.InferenceServerClient) -> dict[str, dict[str, str]]:
    """The repository index once no model is still loading (bounded wait)."""
    deadline = time.monotonic() + 120
    while True:
        models = client.get_model_repository_index(as_json=True).get("models", [])
        index = {m["name"]: m for m in models}
        settled = {"gpu_torch", "gpu_onnx"} <= index.keys() and all(
            m.get("state") in ("READY", "UNAVAILABLE") for m in index.values()
        )
        if settled or time.monotonic() > deadline:
            return index
        time.sleep(0.1)


def _infer(client: grpcclient.InferenceServerClient, model: str, x: np.ndarray) -> np.ndarray:
    tensor = grpcclient.InferInput("X", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(model, [tensor])
    return np.asarray(result.as_numpy("Y"))


@pytest.mark.skipif(_cuda_devices() > 0, reason="this machine has a GPU")
def test_gpu_instance_without_a_gpu_fails_its_load_with_the_reason(gpu_server: Server) -> None:
    with grpcclient.InferenceServerClient(gpu_server.url) as client:
        index = _settled_index(client)
        assert index["gpu_torch"]["state"] == "UNAVAILABLE"
        assert "no CUDA device" in index["gpu_torch"]["reason"]
        assert index["gpu_onnx"]["state"] == "UNAVAILABLE"
        assert "CUDA" in index["gpu_onnx"]["reason"]
        assert client.is_server_live()


@NEEDS_GPU
@pytest.mark.parametrize("model", ["gpu_torch", "gpu_onnx"])
def test_gpu_instances_compute_concurrent_batches_correctly(gpu_server: Server, model: str) -> None:
    if model == "gpu_onnx" and not _ort_has_cuda():
        pytest.skip("onnxruntime has no CUDA provider: install the 'gpu' extra")
    inputs = [np.full((1 + i % 3, 4), float(i), dtype=np.float32) for i in range(64)]
    with grpcclient.InferenceServerClient(gpu_server.url) as client:
        assert _settled_index(client)[model]["state"] == "READY"
        with ThreadPoolExecutor(16) as pool:
            outputs = list(pool.map(lambda x: _infer(client, model, x), inputs))
        for x, y in zip(inputs, outputs, strict=True):
            np.testing.assert_array_equal(y, x * 2 + 1)
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        assert int(stats["inference_count"]) == sum(len(x) for x in inputs)


@pytest.mark.skipif(_cuda_devices() > 0, reason="this machine has a GPU")
def test_cuda_shared_memory_without_a_gpu_is_refused_plainly(gpu_server: Server) -> None:
    import base64

    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    handle = bytes(64)  # the size of a cudaIpcMemHandle_t; no device behind it
    with grpcclient.InferenceServerClient(gpu_server.url) as client:
        with pytest.raises(
            InferenceServerException, match="CUDA shared memory needs a GPU"
        ) as info:
            client.register_cuda_shared_memory("gpu-region", handle, 0, 1024)
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert client.get_cuda_shared_memory_status(as_json=True).get("regions", {}) == {}
        with pytest.raises(InferenceServerException, match="no cuda shared-memory region"):
            client.get_cuda_shared_memory_status("gpu-region")
        client.unregister_cuda_shared_memory()  # nothing registered: nothing to do
        assert client.is_server_live()
    with httpclient.InferenceServerClient(gpu_server.http_url) as client:
        with pytest.raises(
            InferenceServerException, match="CUDA shared memory needs a GPU"
        ) as info:
            client.register_cuda_shared_memory("gpu-region", base64.b64encode(handle), 0, 1024)
        assert info.value.status() == "503"


@NEEDS_GPU
def test_inputs_and_outputs_in_cuda_shared_memory(gpu_server: Server) -> None:
    cudashm = pytest.importorskip(
        "tritonclient.utils.cuda_shared_memory", reason="needs the cuda-python package"
    )
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    size = x.nbytes
    inputs_region = cudashm.create_shared_memory_region("gpu-in", size, 0)
    outputs_region = cudashm.create_shared_memory_region("gpu-out", size, 0)
    try:
        cudashm.set_shared_memory_region(inputs_region, [x])
        with grpcclient.InferenceServerClient(gpu_server.url) as client:
            assert _settled_index(client)["gpu_torch"]["state"] == "READY"
            client.register_cuda_shared_memory(
                "gpu-in", cudashm.get_raw_handle(inputs_region), 0, size
            )
            client.register_cuda_shared_memory(
                "gpu-out", cudashm.get_raw_handle(outputs_region), 0, size
            )
            status = client.get_cuda_shared_memory_status(as_json=True)["regions"]
            assert {"gpu-in", "gpu-out"} <= status.keys()
            tensor = grpcclient.InferInput("X", [2, 4], "FP32")
            tensor.set_shared_memory("gpu-in", size)
            wanted = grpcclient.InferRequestedOutput("Y")
            wanted.set_shared_memory("gpu-out", size)
            client.infer("gpu_torch", [tensor], outputs=[wanted])
            y = cudashm.get_contents_as_numpy(outputs_region, np.float32, [2, 4])
            np.testing.assert_array_equal(y, x * 2 + 1)
            client.unregister_cuda_shared_memory()
            assert client.get_cuda_shared_memory_status(as_json=True).get("regions", {}) == {}
    finally:
        cudashm.destroy_shared_memory_region(inputs_region)
        cudashm.destroy_shared_memory_region(outputs_region)
