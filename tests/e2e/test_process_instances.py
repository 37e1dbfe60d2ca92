"""Instances in processes of their own (`execution: process`): tensors, BYTES included, cross
through shared memory; a child that dies fails only its batch and the next batch runs on a
new one; nothing is left in /dev/shm after shutdown."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import serving

MODEL = """
import os
import numpy as np

class Model:
    def execute(self, inputs):
        x = inputs["INPUT"]
        words = np.array([[str(os.getpid()).encode()]] * x.shape[0], dtype=object)
        return {"OUTPUT": x * 2, "PID": words}
"""
CONFIG = """
backend: "python"
max_batch_size: 8
input [{ name: "INPUT", data_type: TYPE_FP32, dims: [-1] }]
output [{ name: "OUTPUT", data_type: TYPE_FP32, dims: [-1] },
        { name: "PID", data_type: TYPE_STRING, dims: [1] }]
parameters { key: "execution" value { string_value: "process" } }
"""


def _infer(client: grpcclient.InferenceServerClient, width: int) -> tuple[np.ndarray, int]:
    tensor = grpcclient.InferInput("INPUT", [1, width], "FP32")
    tensor.set_data_from_numpy(np.arange(width, dtype=np.float32).reshape(1, width))
    result = client.infer("separate", [tensor])
    return result.as_numpy("OUTPUT"), int(result.as_numpy("PID")[0, 0])


def _shm_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").iterdir() if p.name.startswith("psm_")}


def test_a_process_instance_serves_heals_and_cleans_up(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("process_instances")
    (root / "separate" / "1").mkdir(parents=True)
    (root / "separate" / "1" / "model.py").write_text(MODEL)
    (root / "separate" / "config.pbtxt").write_text(CONFIG)
    before = _shm_segments()
    with (
        serving(root, tmp_path_factory) as server,
        grpcclient.InferenceServerClient(server.url) as client,
    ):
        small, pid = _infer(client, 4)
        np.testing.assert_array_equal(small, [[0, 2, 4, 6]])
        assert pid not in (os.getpid(), server.process.pid)  # another process ran it
        # Bigger than the first slabs: they grow, and the answer is still right.
        big, same_pid = _infer(client, 600_000)
        assert same_pid == pid and big[0, -1] == 2 * 599_999
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        with pytest.raises(InferenceServerException, match=r"process instance .* died") as info:
            _infer(client, 4)
        assert info.value.status() == "StatusCode.INTERNAL"
        again, new_pid = _infer(client, 4)
        assert new_pid != pid
        np.testing.assert_array_equal(again, small)
    assert _shm_segments() <= before
    assert re.search(r"restarting process instance", server.output())


def test_inline_execution_serves_an_onnx_model_and_is_refused_for_python_code(
    test_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import shutil

    root = tmp_path_factory.mktemp("inline")
    shutil.copytree(test_repository / "add_sub", root / "add_sub")
    config = root / "add_sub" / "config.pbtxt"
    config.write_text(
        config.read_text() + 'parameters { key: "execution" value { string_value: "inline" } }\n'
    )
    (root / "python_inline" / "1").mkdir(parents=True)
    (root / "python_inline" / "1" / "model.py").write_text(MODEL)
    (root / "python_inline" / "config.pbtxt").write_text(CONFIG.replace('"process"', '"inline"'))
    with (
        serving(root, tmp_path_factory, wait_model="add_sub") as server,
        grpcclient.InferenceServerClient(server.url) as client,
    ):
        inputs = []
        for name in ("INPUT0", "INPUT1"):
            tensor = grpcclient.InferInput(name, [1, 16], "FP32")
            tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
            inputs.append(tensor)
        result = client.infer("add_sub", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 16), 2.0))
        deadline = time.monotonic() + 30
        reason = ""
        while time.monotonic() < deadline and not reason:
            index = client.get_model_repository_index(as_json=True)["models"]
            reason = next((m.get("reason", "") for m in index if m["name"] == "python_inline"), "")
            time.sleep(0.1)
        assert "execution: inline is not possible" in reason
        assert "Python model code would hold the event loop" in reason
