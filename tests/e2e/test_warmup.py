"""Model warmup: samples run on every instance before the model is ready; a sample the model
fails on fails the load with the reason."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.e2e.conftest import serving

# Appends one line per execution: the batch's first value and its rows.
COUNTING = """
import os

class Model:
    def execute(self, inputs):
        x = inputs["INPUT"]
        if (x < 0).any():
            raise ValueError("negative input")
        with open(os.environ["WARMUP_LOG"], "a") as log:
            log.write(f"{x.reshape(-1)[0]} {x.shape[0]}\\n")
        return {"OUTPUT": x}
"""


def _model(root: Path, name: str, warmup: str, instances: int = 1) -> Path:
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / "model.py").write_text(COUNTING)
    (root / name / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 4\n'
        'input [{ name: "INPUT", data_type: TYPE_FP32, dims: [2] }]\n'
        'output [{ name: "OUTPUT", data_type: TYPE_FP32, dims: [2] }]\n'
        f"instance_group [{{ count: {instances}, kind: KIND_CPU }}]\n" + warmup
    )
    return root / name


def test_warmup_runs_every_sample_on_every_instance_before_ready_and_failures_fail_the_load(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path_factory.mktemp("warmup")
    log = tmp_path / "executions.log"
    monkeypatch.setenv("WARMUP_LOG", str(log))
    _model(
        root,
        "warmed",
        'model_warmup [{ name: "zeros", batch_size: 2, count: 3,\n'
        '  inputs { key: "INPUT" value { data_type: TYPE_FP32, dims: [2], zero_data: true } } },\n'
        '{ name: "from_file", batch_size: 1,\n'
        '  inputs { key: "INPUT" value { data_type: TYPE_FP32, dims: [2],'
        ' input_data_file: "sample" } } }]\n',
        instances=2,
    )
    (root / "warmed" / "warmup").mkdir()
    (root / "warmed" / "warmup" / "sample").write_bytes(np.array([7, 8], np.float32).tobytes())
    _model(
        root,
        "fails",
        'model_warmup [{ name: "negative", batch_size: 1,\n'
        '  inputs { key: "INPUT" value { data_type: TYPE_FP32, dims: [2],'
        ' input_data_file: "negative" } } }]\n',
    )
    (root / "fails" / "warmup").mkdir()
    (root / "fails" / "warmup" / "negative").write_bytes(np.array([-1, -1], np.float32).tobytes())
    with serving(root, tmp_path_factory, wait_ready=False, wait_model="warmed") as server:
        # Ready only after the warmup: (3 zero batches of 2 + 1 file batch) per instance.
        executions = log.read_text().split()
        assert executions.count("0.0") == 3 * 2 and executions.count("7.0") == 2
        with grpcclient.InferenceServerClient(server.url) as client:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                index = {
                    m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]
                }
                if index.get("fails", {}).get("state") == "UNAVAILABLE":
                    break
                time.sleep(0.1)
            reason = index["fails"]["reason"]
            assert "warmup 'negative' failed on instance 0: ValueError: negative input" in reason
            tensor = grpcclient.InferInput("INPUT", [1, 2], "FP32")
            tensor.set_data_from_numpy(np.ones((1, 2), np.float32))
            client.infer("warmed", [tensor])
