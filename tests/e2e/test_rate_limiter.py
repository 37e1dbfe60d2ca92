"""Triton's rate limiter with tritonclient: models that share a resource take turns."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import serving, start_server

# Reports when its execute began and ended (server clock), after holding on for 0.4 s.
TIMED = """
import time

import numpy as np


class Model:
    def execute(self, inputs):
        began = time.time()
        time.sleep(0.4)
        rows = len(inputs["INPUT"])
        return {"SPAN": np.tile(np.array([began, time.time()], np.float64), (rows, 1))}
"""


def _repository(root: Path, resource: str) -> Path:
    for name in ("first", "second"):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(TIMED)
        (root / name / "config.pbtxt").write_text(
            'backend: "python"\nmax_batch_size: 4\n'
            "instance_group [{ count: 1, kind: KIND_CPU, rate_limiter { "
            f"{resource} }} }}]\n"
            'input [{ name: "INPUT", data_type: TYPE_FP32, dims: [1] }]\n'
            'output [{ name: "SPAN", data_type: TYPE_FP64, dims: [2] }]\n'
        )
    return root


def _spans(url: str) -> list[tuple[float, float]]:
    def call(model: str) -> tuple[float, float]:
        client = grpcclient.InferenceServerClient(url)
        tensor = grpcclient.InferInput("INPUT", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 1), np.float32))
        span = client.infer(model, [tensor]).as_numpy("SPAN")
        assert span is not None
        return float(span[0, 0]), float(span[0, 1])

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(call, ["first", "second"]))


def _overlap(spans: list[tuple[float, float]]) -> bool:
    (a_start, a_end), (b_start, b_end) = spans
    return a_start < b_end and b_start < a_end


def test_models_sharing_one_resource_never_run_at_once(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    repo = _repository(tmp_path_factory.mktemp("limited"), 'resources [{ name: "R", count: 1 }]')
    with serving(
        repo, tmp_path_factory, "--rate-limit", "execution_count", "--rate-limit-resource", "R:1"
    ) as server:
        for _ in range(2):
            assert not _overlap(_spans(server.url))
    # The same models without the rate limiter run side by side.
    with serving(repo, tmp_path_factory) as server:
        assert _overlap(_spans(server.url))


def test_a_need_beyond_the_declared_count_fails_the_load_naming_the_resource(
    tmp_path: Path,
) -> None:
    repo = _repository(tmp_path / "repo", 'resources [{ name: "R", count: 2 }]')
    server = start_server(
        repo,
        tmp_path / "log",
        "--rate-limit",
        "execution_count",
        "--rate-limit-resource",
        "R:1",
        "--no-strict-readiness",
    )
    try:
        client = grpcclient.InferenceServerClient(server.url)
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["first"].state == "UNAVAILABLE"
        assert "needs 2 of resource 'R' (on host), but --rate-limit-resource gives it 1" in (
            index["first"].reason
        )
        with pytest.raises(InferenceServerException, match=r"StatusCode\.UNAVAILABLE"):
            client.infer("first", [])
    finally:
        server.stop()
