"""Decoupled models end to end: tritonclient's stream, the generate routes, cancellation."""

from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import sseclient
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import Server, doc_block
from tests.e2e.stream_models import (
    REFUSED_FIELDS,
    cancel_after_two_responses,
    collect,
    repeat_inputs,
)

pytestmark = pytest.mark.slow


def test_repeat_model_streams_one_response_per_element_then_an_empty_final(
    stream_server: Server,
) -> None:
    results: queue.Queue[Any] = queue.Queue()
    values = list(range(100, 110))
    with grpcclient.InferenceServerClient(stream_server.url) as client:
        client.start_stream(callback=partial(collect, results))
        client.async_stream_infer(
            "repeat_int32",
            repeat_inputs(values, 5, 20),
            outputs=[grpcclient.InferRequestedOutput("OUT")],
            enable_empty_final_response=True,
        )
        received = [results.get(timeout=30) for _ in range(len(values) + 1)]
    for item in received:
        assert not isinstance(item, InferenceServerException), item
    finals = [r.get_response().parameters["triton_final_response"].bool_param for r in received]
    assert finals == [False] * len(values) + [True]
    assert [int(r.as_numpy("OUT")[0]) for r in received[:-1]] == values
    assert received[-1].as_numpy("OUT") is None


def test_responses_arrive_as_produced_not_collected(stream_server: Server) -> None:
    results: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(stream_server.url) as client:
        client.start_stream(callback=partial(collect, results))
        started = time.monotonic()
        client.async_stream_infer("repeat_int32", repeat_inputs([1, 2, 3], 300, 0))
        results.get(timeout=30)
        first = time.monotonic() - started
        for _ in range(2):
            results.get(timeout=30)
        last = time.monotonic() - started
    # The three responses are 300 ms apart: the first cannot have waited for the last.
    assert first < last - 0.4


def test_unary_infer_on_a_decoupled_model_names_the_stream_api(stream_server: Server) -> None:
    with (
        grpcclient.InferenceServerClient(stream_server.url) as client,
        pytest.raises(InferenceServerException) as raised,
    ):
        client.infer("repeat_int32", repeat_inputs([1], 0, 0))
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "ModelStreamInfer" in raised.value.message()
    body = {
        "inputs": [
            {"name": "IN", "shape": [1], "datatype": "INT32", "data": [1]},
            {"name": "DELAY", "shape": [1], "datatype": "UINT32", "data": [0]},
            {"name": "WAIT", "shape": [1], "datatype": "UINT32", "data": [0]},
        ]
    }
    reply = requests.post(
        f"http://{stream_server.http_url}/v2/models/repeat_int32/infer", json=body, timeout=10
    )
    assert reply.status_code == 400
    assert "generate_stream" in reply.json()["error"]
    # Refused before it entered the data plane: nothing is left counted in flight.
    metrics = requests.get(stream_server.metrics_url, timeout=10).text
    in_flight = [
        line
        for line in metrics.splitlines()
        if line.startswith("tensorgate_inflight_requests{") and 'model="repeat_int32"' in line
    ]
    assert in_flight and all(line.endswith(" 0.0") for line in in_flight), in_flight


def test_generate_stream_sends_one_event_per_response(stream_server: Server) -> None:
    reply = requests.post(
        f"http://{stream_server.http_url}/v2/models/words/generate_stream",
        json={"text_input": "tokens arrive one by one"},
        stream=True,
        timeout=30,
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "text/event-stream"
    events = [event.data for event in sseclient.SSEClient(reply).events()]
    words = [json.loads(data)["text_output"] for data in events]
    assert words == ["tokens", "arrive", "one", "by", "one"]


def test_generate_answers_with_the_one_response_of_a_model(stream_server: Server) -> None:
    reply = requests.post(
        f"http://{stream_server.http_url}/v2/models/words/versions/1/generate",
        json={"text_input": "single"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"model_name": "words", "model_version": "1", "text_output": "single"}
    streaming = requests.post(
        f"http://{stream_server.http_url}/v2/models/words/generate",
        json={"text_input": "two words"},
        timeout=30,
    )
    assert streaming.status_code == 400
    assert "generate_stream" in streaming.json()["error"]


def test_generate_stream_errors_before_the_stream_keep_their_status(stream_server: Server) -> None:
    base = f"http://{stream_server.http_url}/v2/models"
    missing = requests.post(f"{base}/nope/generate_stream", json={}, timeout=10)
    assert missing.status_code == 404
    bad = requests.post(f"{base}/words/generate_stream", json={"text_input": 3}, timeout=10)
    assert bad.status_code == 400
    assert "text_input" in bad.json()["error"]


def test_cancelled_stream_stops_the_generator_and_closes_it(
    stream_server: Server, counter: Path
) -> None:
    counter.write_text("")
    cancel_after_two_responses(stream_server.url, "repeat_int32", counter)
    time.sleep(0.3)  # a step still queued after the cancel would show up by now
    lines = counter.read_text().split()
    assert lines.count("closed") == 1
    assert 2 <= lines.count("step") < 6, lines


def test_a_stream_keeps_serving_after_a_request_fails(stream_server: Server) -> None:
    results: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(stream_server.url) as client:
        client.start_stream(callback=partial(collect, results))
        bad = repeat_inputs([1, 2], 0, 0)
        bad[1] = grpcclient.InferInput("DELAY", [1], "UINT32")
        bad[1].set_data_from_numpy(np.array([0], dtype=np.uint32))  # too short for IN
        client.async_stream_infer("repeat_int32", bad)
        first = results.get(timeout=30)
        error = results.get(timeout=30)
        assert isinstance(error, InferenceServerException)
        assert "repeat_int32" in error.message()
        client.async_stream_infer("repeat_int32", repeat_inputs([7], 0, 0))
        ok = results.get(timeout=30)
    assert int(first.as_numpy("OUT")[0]) == 1
    assert int(ok.as_numpy("OUT")[0]) == 7


@pytest.mark.parametrize("field", list(REFUSED_FIELDS))
def test_unsupported_config_field_fails_the_load_naming_it(
    stream_server: Server, field: str
) -> None:
    with grpcclient.InferenceServerClient(stream_server.url) as client:
        index = client.get_model_repository_index(as_json=True)["models"]
    name = "refused_" + field.replace(".", "_")
    entry = next(m for m in index if m["name"] == name)
    assert entry["state"] == "UNAVAILABLE"
    assert f"config field '{field}' is not supported" in entry["reason"]


def stream_page_examples() -> list[str]:
    script = doc_block("docs/pages/streams.md", "stream-examples")
    return ["curl " + c.strip() for c in re.split(r"^curl ", script, flags=re.M) if c.strip()]


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (Debian package curl)")
def test_streams_page_examples_run_and_answer(stream_server: Server) -> None:
    outputs = []
    for command in stream_page_examples():
        result = subprocess.run(
            ["bash", "-c", command.replace("localhost:8000", stream_server.http_url)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, (command, result.stderr)
        outputs.append(result.stdout.strip())
    assert len(outputs) == 3
    events = [json.loads(line[len("data: ") :]) for line in outputs[0].splitlines() if line]
    assert [e["text_output"] for e in events] == ["streamed", "word", "by", "word"]
    assert json.loads(outputs[1])["text_output"] == "single"
    assert json.loads(outputs[2])["outputs"][0]["name"] == "RESULT"


def test_a_stream_refuses_outputs_in_shared_memory_by_name(stream_server: Server) -> None:
    results: queue.Queue[Any] = queue.Queue()
    wanted = grpcclient.InferRequestedOutput("OUT")
    wanted.set_shared_memory("some-region", 64)
    with grpcclient.InferenceServerClient(stream_server.url) as client:
        client.start_stream(callback=partial(collect, results))
        client.async_stream_infer("repeat_int32", repeat_inputs([1, 2], 0, 0), outputs=[wanted])
        error = results.get(timeout=30)
        assert isinstance(error, InferenceServerException)
        assert "shared_memory_region" in str(error.message())
        # The stream still serves requests that ask for nothing of the kind.
        client.async_stream_infer("repeat_int32", repeat_inputs([7], 0, 0))
        assert int(results.get(timeout=30).as_numpy("OUT")[0]) == 7
