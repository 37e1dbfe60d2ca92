"""Iterative sequences, request rescheduling and decoupled sequence models, as Triton serves
them to Triton Python models, driven by tritonclient, the generate extension and both
instance placements."""

from __future__ import annotations

import json
import queue
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import Server, kill_children_and_await_failure, serving
from tests.e2e.iterative_models import build_iterative_models
from tests.e2e.stream_models import stream_client

pytestmark = pytest.mark.slow

IN_PROCESS = 'parameters { key: "execution" value { string_value: "process" } }\n'
PLACED = ("countdown", "countdown_one_slot", "iterate", "running_total")
# Each model in instance threads (its name) and in processes (its name with this suffix).
PLACEMENTS = ["", "_process"]
REFUSED: dict[str, str] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("iterative_repo")
    REFUSED.update(build_iterative_models(root))
    for name in PLACED:
        copy = root / f"{name}_process"
        (copy / "1").mkdir(parents=True)
        (copy / "1" / "model.py").write_bytes((root / name / "1" / "model.py").read_bytes())
        (copy / "config.pbtxt").write_text((root / name / "config.pbtxt").read_text() + IN_PROCESS)
    with serving(root, tmp_path_factory, "--no-strict-readiness") as running:
        yield running


def _count(value: int, client: Any = grpcclient) -> Any:
    tensor = client.InferInput("IN", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    return tensor


def _next(results: queue.Queue[Any]) -> Any:
    item = results.get(timeout=30)
    assert not isinstance(item, InferenceServerException), item
    return item


def _row(result: Any, name: str) -> int:
    return int(result.as_numpy(name).reshape(-1)[0])


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_a_rescheduled_request_streams_one_response_per_iteration_beside_new_requests(
    server: Server, placement: str
) -> None:
    model = f"countdown{placement}"
    client, results = stream_client(server.url)
    with client:
        client.async_stream_infer(model, [_count(6)], request_id="long")
        first = _next(results)
        # The second request arrives while the first iterates: it joins the first's batches.
        client.async_stream_infer(model, [_count(2)], request_id="short")
        seen: dict[str, list[tuple[int, int, int]]] = {"long": [], "short": []}
        seen["long"].append((_row(first, "OUT"), _row(first, "BATCH"), _row(first, "FLAGS")))
        for _ in range(7):
            item = _next(results)
            key = item.get_response().id
            seen[key].append((_row(item, "OUT"), _row(item, "BATCH"), _row(item, "FLAGS")))
        client.stop_stream()
    assert [out for out, _, _ in seen["long"]] == [5, 4, 3, 2, 1, 0]
    assert [out for out, _, _ in seen["short"]] == [1, 0]
    # START on a request's first execution only: a rescheduled request runs with no flags.
    assert [flags for _, _, flags in seen["long"]] == [1, 0, 0, 0, 0, 0]
    assert [flags for _, _, flags in seen["short"]] == [1, 0]
    assert all(batch == 2 for _, batch, _ in seen["short"]), seen
    assert seen["long"][0][1] == 1


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_an_iterative_model_answers_unary_requests_after_their_last_iteration(
    server: Server, placement: str
) -> None:
    model = f"iterate{placement}"
    http = httpclient.InferenceServerClient(server.http_url)
    try:
        result = http.infer(model, [_count(3, httpclient)])
    finally:
        http.close()
    assert _row(result, "RUNS") == 3
    assert result.as_numpy("FLAGS").tolist() == [[1, 0, 0]]
    # Requests of different lengths at once, each its own sequence, over one stream.
    client, results = stream_client(server.url)
    with client:
        for count in (4, 1, 2):
            client.async_stream_infer(model, [_count(count)], request_id=str(count))
        answers = {}
        for _ in range(3):
            item = _next(results)
            answers[int(item.get_response().id)] = _row(item, "RUNS")
        client.stop_stream()
    assert answers == {4: 4, 1: 1, 2: 2}


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_the_generate_extension_streams_an_iterative_model(server: Server, placement: str) -> None:
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/countdown{placement}/generate_stream",
        data=json.dumps({"IN": 2}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        events = [
            json.loads(line[len(b"data: ") :])
            for line in response.read().splitlines()
            if line.startswith(b"data: ")
        ]
    assert [event["OUT"] for event in events] == [1, 0]


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_a_decoupled_sequence_model_answers_each_request_of_client_sequences(
    server: Server, placement: str
) -> None:
    model = f"running_total{placement}"
    sequences = {77: [2, 3, 1], 78: [1, 1]}
    client, results = stream_client(server.url)
    with client:
        for step in range(3):  # interleaved
            for sequence_id, counts in sequences.items():
                if step < len(counts):
                    tensor = grpcclient.InferInput("IN", [1], "INT32")
                    tensor.set_data_from_numpy(np.array([counts[step]], dtype=np.int32))
                    client.async_stream_infer(
                        model,
                        [tensor],
                        sequence_id=sequence_id,
                        sequence_start=step == 0,
                        sequence_end=step == len(counts) - 1,
                    )
        totals: dict[int, list[int]] = {77: [], 78: []}
        for _ in range(sum(sum(c) for c in sequences.values())):
            item = _next(results)
            totals[_row(item, "CORRID")].append(_row(item, "TOTAL"))
        client.stop_stream()
    assert totals == {77: [1, 2, 3, 4, 5, 6], 78: [1, 2]}


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_a_client_leaving_mid_iteration_frees_its_sequence_slot(
    server: Server, placement: str
) -> None:
    model = f"countdown_one_slot{placement}"
    client, results = stream_client(server.url)
    with client:
        client.async_stream_infer(model, [_count(100_000)])
        assert [_row(_next(results), "OUT") for _ in range(2)] == [99_999, 99_998]
        client.stop_stream(cancel_requests=True)
    # The only slot is free again: a new sequence runs now, not after 100,000 iterations.
    client, results = stream_client(server.url)
    with client:
        client.async_stream_infer(model, [_count(2)])
        assert [_row(_next(results), "OUT") for _ in range(2)] == [1, 0]
        client.stop_stream()


def test_a_child_that_dies_mid_iteration_fails_its_requests_and_is_replaced(
    server: Server,
) -> None:
    model = "countdown_one_slot_process"
    client, results = stream_client(server.url)
    with client:
        client.async_stream_infer(model, [_count(100_000)])
        _next(results)
        assert "died" in kill_children_and_await_failure(server, results)
        client.stop_stream()
    client, results = stream_client(server.url)
    with client:
        client.async_stream_infer(model, [_count(2)])
        assert [_row(_next(results), "OUT") for _ in range(2)] == [1, 0]
        client.stop_stream()


def test_rescheduling_outside_an_iterative_sequence_fails_the_request(server: Server) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        with pytest.raises(InferenceServerException) as refused:
            client.infer("reschedules", [_count(1)])
        assert client.is_server_live()
    assert "Request is released with TRITONSERVER_REQUEST_RELEASE_RESCHEDULE" in str(
        refused.value.message()
    )
    assert "iterative_sequence: true" in str(refused.value.message())


def test_models_that_cannot_take_requests_one_by_one_fail_their_load_naming_why(
    server: Server,
) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        index = client.get_model_repository_index(as_json=True)["models"]
    reasons = {m["name"]: m.get("reason", "") for m in index if m.get("state") == "UNAVAILABLE"}
    assert set(reasons) == set(REFUSED)
    for name, reason in REFUSED.items():
        assert reason in reasons[name], reasons[name]
