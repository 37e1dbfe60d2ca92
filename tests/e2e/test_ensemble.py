"""Ensembles end to end: the DAG against its steps called one by one, load checks, readiness."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import Server, serving
from tests.e2e.stream_models import (
    BROKEN_ENSEMBLES,
    build_ensemble_models,
    build_refused_combinations,
    repeat_inputs,
    stream_client,
)

pytestmark = pytest.mark.slow


def infer(client: grpcclient.InferenceServerClient, model: str, **tensors: np.ndarray) -> dict:
    inputs = []
    for name, array in tensors.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer(model, inputs)
    return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}


def test_pipeline_equals_its_three_models_called_one_by_one(stream_server: Server) -> None:
    raw = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    with grpcclient.InferenceServerClient(stream_server.url) as client:
        pre = infer(client, "preprocess", RAW=raw)
        mid = infer(client, "add_sub", INPUT0=pre["DOUBLED"], INPUT1=pre["SHIFTED"])
        post = infer(client, "postprocess", SUM=mid["OUTPUT0"], DIFF=mid["OUTPUT1"])
        whole = infer(client, "pipeline", RAW=raw)
    assert list(whole) == ["RESULT"]
    np.testing.assert_array_equal(whole["RESULT"], post["RESULT"])


def test_pipeline_serves_over_http_too(stream_server: Server) -> None:
    client = httpclient.InferenceServerClient(stream_server.http_url)
    tensor = httpclient.InferInput("RAW", [1, 16], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 16), dtype=np.float32))
    result = client.infer("pipeline", [tensor]).as_numpy("RESULT")
    client.close()
    np.testing.assert_array_equal(result, np.zeros((1, 16), dtype=np.float32))  # (2+2)*(2-2)


def test_a_failing_step_fails_the_request_naming_its_model(stream_server: Server) -> None:
    with (
        grpcclient.InferenceServerClient(stream_server.url) as client,
        pytest.raises(InferenceServerException) as raised,
    ):
        infer(client, "pipeline", RAW=np.full((1, 16), -5000, dtype=np.float32))
    assert raised.value.status() == "StatusCode.INTERNAL"
    assert "step 1 ('preprocess')" in raised.value.message()
    assert "RAW below -1000" in raised.value.message()


@pytest.mark.parametrize("name", list(BROKEN_ENSEMBLES))
def test_a_broken_ensemble_fails_its_load_with_a_reason(stream_server: Server, name: str) -> None:
    with grpcclient.InferenceServerClient(stream_server.url) as client:
        index = client.get_model_repository_index(as_json=True)["models"]
    entry = next(m for m in index if m["name"] == name)
    assert entry["state"] == "UNAVAILABLE"
    assert BROKEN_ENSEMBLES[name][1] in entry["reason"]


@pytest.mark.parametrize("name", ["decoupled_batching", "ensemble_instances", "onnx_kind_model"])
def test_a_setting_the_runner_would_ignore_fails_the_load(
    stream_server: Server, name: str, tmp_path: Path
) -> None:
    reasons = build_refused_combinations(tmp_path)
    with grpcclient.InferenceServerClient(stream_server.url) as client:
        index = client.get_model_repository_index(as_json=True)["models"]
    entry = next(m for m in index if m["name"] == name)
    assert entry["state"] == "UNAVAILABLE"
    assert reasons[name] in entry["reason"]


@pytest.fixture(scope="module")
def explicit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("ensemble_repo")
    build_ensemble_models(root)
    args = ("--model-control-mode", "explicit", "--load-model", "pipeline")
    with serving(Path(root), tmp_path_factory, *args, wait_model="pipeline") as server:
        yield server


def test_loading_an_ensemble_loads_its_steps_and_unloading_one_makes_it_not_ready(
    explicit_server: Server,
) -> None:
    with grpcclient.InferenceServerClient(explicit_server.url) as client:
        for step in ("preprocess", "add_sub", "postprocess"):
            assert client.is_model_ready(step)
        client.unload_model("add_sub")
        assert not client.is_model_ready("pipeline")
        index = client.get_model_repository_index(as_json=True)["models"]
        entry = next(m for m in index if m["name"] == "pipeline")
        assert entry["state"] == "UNAVAILABLE"
        assert "step model 'add_sub'" in entry["reason"]
        with pytest.raises(InferenceServerException) as raised:
            infer(client, "pipeline", RAW=np.ones((1, 16), dtype=np.float32))
        assert raised.value.status() == "StatusCode.UNAVAILABLE"
        client.load_model("add_sub")
        assert client.is_model_ready("pipeline")
        assert infer(client, "pipeline", RAW=np.ones((1, 16), dtype=np.float32))[
            "RESULT"
        ].shape == (1, 16)


def test_each_response_of_a_decoupled_step_streams_through_the_steps_after_it(
    stream_server: Server,
) -> None:
    client, results = stream_client(stream_server.url)
    inputs = repeat_inputs([1, 2, 3], 0, 0)
    scale = grpcclient.InferInput("SCALE", [1], "INT32")
    scale.set_data_from_numpy(np.array([3], dtype=np.int32))
    before = _inference_counts(client)
    client.async_stream_infer("repeat_scaled", [*inputs, scale], enable_empty_final_response=True)
    received = []
    while True:
        item = results.get(timeout=30)
        assert not isinstance(item, InferenceServerException), item
        response = item.get_response()
        if response.parameters["triton_final_response"].bool_param and not response.outputs:
            break
        received.append((int(item.as_numpy("IDX")[0]), int(item.as_numpy("SCALED")[0])))
    with pytest.raises(InferenceServerException) as unary:
        client.infer("repeat_scaled", [*inputs, scale])
    after = _inference_counts(client)
    client.stop_stream()
    client.close()
    assert received == [(0, 9), (1, 18), (2, 27)]  # SCALE squared, times each IN
    assert after["square"] - before["square"] == 1  # it waits on no decoupled step
    assert after["multiply"] - before["multiply"] == 3
    assert unary.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "decoupled" in unary.value.message()


def _inference_counts(client: grpcclient.InferenceServerClient) -> dict[str, int]:
    stats = client.get_inference_statistics(as_json=True)["model_stats"]
    return {
        s["name"]: int(s.get("inference_count", 0))
        for s in stats
        if s["name"] in ("square", "multiply")
    }


def test_cancelling_a_decoupled_ensemble_closes_its_decoupled_step(
    stream_server: Server, counter: Path
) -> None:
    log = counter.parent / "ensemble_repeat.log"
    client, results = stream_client(stream_server.url)
    scale = grpcclient.InferInput("SCALE", [1], "INT32")
    scale.set_data_from_numpy(np.array([1], dtype=np.int32))
    before = log.read_text().split() if log.exists() else []
    client.async_stream_infer("repeat_scaled", [*repeat_inputs(list(range(50)), 50, 0), scale])
    for _ in range(2):
        assert not isinstance(results.get(timeout=30), InferenceServerException)
    client.stop_stream(cancel_requests=True)
    client.close()
    deadline = time.monotonic() + 10
    while log.read_text().split().count("closed") == before.count("closed"):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    lines = log.read_text().split()
    assert lines.count("closed") == before.count("closed") + 1
    assert lines.count("step") - before.count("step") < 50  # stopped early, not run to the end


def test_a_decoupled_ensemble_streams_over_http_generate_stream(stream_server: Server) -> None:
    reply = requests.post(
        f"http://{stream_server.http_url}/v2/models/repeat_scaled/generate_stream",
        json={"IN": [1, 2, 3], "DELAY": [0, 0, 0], "WAIT": [0], "SCALE": [2]},
        timeout=30,
    )
    events = [json.loads(line[len("data: ") :]) for line in reply.text.splitlines() if line]
    assert reply.status_code == 200
    assert [(e["IDX"], e["SCALED"]) for e in events] == [(0, 4), (1, 8), (2, 12)]
