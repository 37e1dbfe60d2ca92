"""The response cache: an identical request is answered without running the model, counted
as a cache hit in ModelStatistics and /metrics; anything that changes the answer misses."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.e2e.conftest import serving

COUNTING = """
import os

class Model:
    def execute(self, inputs):
        with open(os.environ["CACHE_TEST_LOG"], "a") as log:
            log.write("x\\n")
        return {"OUTPUT": inputs["INPUT"] * 2, "TWICE": inputs["INPUT"] * 4}
"""


def _model(root: Path, name: str, cached: bool = True) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / "model.py").write_text(COUNTING)
    cache = "response_cache { enable: true }\n" if cached else ""
    (root / name / "config.pbtxt").write_text(
        f'backend: "python"\nmax_batch_size: 4\n{cache}'
        'input [{ name: "INPUT", data_type: TYPE_FP32, dims: [3] }]\n'
        'output [{ name: "OUTPUT", data_type: TYPE_FP32, dims: [3] },'
        ' { name: "TWICE", data_type: TYPE_FP32, dims: [3] }]\n'
    )


def _input(values: list[float]) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("INPUT", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.array([values], np.float32))
    return [tensor]


def test_identical_requests_are_answered_from_the_cache(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "executions"
    monkeypatch.setenv("CACHE_TEST_LOG", str(log))
    root = tmp_path_factory.mktemp("cache")
    _model(root, "cached")

    def executions() -> int:
        return len(log.read_text().split()) if log.exists() else 0

    with serving(root, tmp_path_factory, "--cache-size", str(2**20)) as server:
        with grpcclient.InferenceServerClient(server.url) as client:
            first = client.infer("cached", _input([1, 2, 3]))
            second = client.infer("cached", _input([1, 2, 3]))
            assert executions() == 1  # the second came from the cache
            for name in ("OUTPUT", "TWICE"):
                np.testing.assert_array_equal(first.as_numpy(name), second.as_numpy(name))
            client.infer("cached", _input([1, 2, 4]))  # other input: a miss
            only = [grpcclient.InferRequestedOutput("TWICE")]
            answer = client.infer("cached", _input([1, 2, 3]), outputs=only)  # other outputs
            assert executions() == 3
            np.testing.assert_array_equal(answer.as_numpy("TWICE"), [[4, 8, 12]])
            stats = client.get_inference_statistics("cached").model_stats[0]
            assert stats.inference_stats.cache_hit.count == 1
            assert stats.inference_stats.cache_miss.count == 3
            assert stats.inference_stats.success.count == 4
            assert stats.execution_count == 3
        text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
        hits = re.search(r'tensorgate_cache_lookups_total\{outcome="hit"\} (\S+)', text)
        assert hits and float(hits.group(1)) == 1
        assert re.search(r'tensorgate_cache_bytes\{kind="used"\} [1-9]', text)


def test_a_cached_model_needs_a_server_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CACHE_TEST_LOG", str(tmp_path / "log"))
    root = tmp_path_factory.mktemp("nocache")
    _model(root, "cached")
    with (
        serving(root, tmp_path_factory, wait_ready=False) as server,
        grpcclient.InferenceServerClient(server.url) as client,
    ):
        index: list[dict[str, str]] = []
        for _ in range(300):
            index = client.get_model_repository_index(as_json=True)["models"]
            if index and index[0].get("state") == "UNAVAILABLE":
                break
            time.sleep(0.1)
        assert "start it with --cache-size" in index[0]["reason"]


def test_an_ensemble_answers_a_repeated_request_from_the_cache_without_its_steps(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "executions"
    monkeypatch.setenv("CACHE_TEST_LOG", str(log))
    root = tmp_path_factory.mktemp("cached_ensemble")
    _model(root, "step", cached=False)
    (root / "doubled" / "1").mkdir(parents=True)
    (root / "doubled" / "config.pbtxt").write_text(
        'platform: "ensemble"\nmax_batch_size: 4\nresponse_cache { enable: true }\n'
        'input [{ name: "X", data_type: TYPE_FP32, dims: [3] }]\n'
        'output [{ name: "Y", data_type: TYPE_FP32, dims: [3] }]\n'
        'ensemble_scheduling { step [{ model_name: "step", '
        'input_map { key: "INPUT" value: "X" }, output_map { key: "OUTPUT" value: "Y" } }] }\n'
    )
    with (
        serving(root, tmp_path_factory, "--cache-size", str(2**20)) as server,
        grpcclient.InferenceServerClient(server.url) as client,
    ):
        tensor = grpcclient.InferInput("X", [1, 3], "FP32")
        tensor.set_data_from_numpy(np.array([[1, 2, 3]], np.float32))
        answers = [client.infer("doubled", [tensor]).as_numpy("Y") for _ in range(3)]
        stats = client.get_inference_statistics("doubled").model_stats[0]
    assert len(log.read_text().split()) == 1  # the step ran once
    assert [a.tolist() for a in answers] == [[[2.0, 4.0, 6.0]]] * 3
    assert stats.inference_stats.cache_hit.count == 2
