"""Sequence batching end to end, driven the way Triton's sequence client examples drive it."""

from __future__ import annotations

import queue
import time
import uuid
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import Server

pytestmark = pytest.mark.slow

VALUES = [11, 7, 5, 3, 2, 0, 1]


def value(module: Any, v: int) -> Any:
    tensor = module.InferInput("INPUT", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.full([1, 1], v, dtype=np.int32))
    return tensor


def test_stream_sequences_with_integer_and_string_ids_keep_apart(stream_server: Server) -> None:
    results: queue.Queue[Any] = queue.Queue()
    string_id = str(uuid.uuid4())
    sequences = {
        1000: [0, *VALUES],
        1001: [100, *(-v for v in VALUES)],
        string_id: [20, *(-v for v in VALUES)],
    }
    with grpcclient.InferenceServerClient(stream_server.url) as client:
        client.start_stream(callback=lambda result, error: results.put(error or result))
        for sequence_id, values in sequences.items():
            for count, v in enumerate(values, 1):
                client.async_stream_infer(
                    "simple_sequence",
                    [value(grpcclient, v)],
                    request_id=f"{sequence_id}_{count}",
                    sequence_id=sequence_id,
                    sequence_start=count == 1,
                    sequence_end=count == len(values),
                )
        received: dict[str, list[int]] = {}
        for _ in range(sum(len(v) for v in sequences.values())):
            item = results.get(timeout=30)
            assert not isinstance(item, InferenceServerException), item
            key = item.get_response().id.rsplit("_", 1)[0]
            received.setdefault(key, []).append(int(item.as_numpy("OUTPUT")[0][0]))
    # OUTPUT = INPUT + START: the first of each sequence is one more than its input.
    for sequence_id, values in sequences.items():
        assert received[str(sequence_id)] == [values[0] + 1, *values[1:]]


@pytest.mark.parametrize("module", [grpcclient, httpclient], ids=["grpc", "http"])
def test_sync_sequence_requests_see_start_only_on_the_first(
    stream_server: Server, module: Any
) -> None:
    url = stream_server.url if module is grpcclient else stream_server.http_url
    client = module.InferenceServerClient(url)
    values = [0, *VALUES]
    outputs = [
        int(
            client.infer(
                "simple_sequence",
                [value(module, v)],
                sequence_id=42 if module is grpcclient else 43,
                sequence_start=count == 1,
                sequence_end=count == len(values),
            ).as_numpy("OUTPUT")[0][0]
        )
        for count, v in enumerate(values, 1)
    ]
    client.close()
    assert outputs == [1, *VALUES]


def test_interleaved_sequences_on_two_instances_keep_their_state_apart(
    stream_server: Server,
) -> None:
    client = grpcclient.InferenceServerClient(stream_server.url)
    totals: dict[int, list[int]] = {7: [], 8: []}
    for step in range(4):
        for sequence_id, v in ((7, 1), (8, 10)):
            result = client.infer(
                "accumulate",
                [value(grpcclient, v)],
                sequence_id=sequence_id,
                sequence_start=step == 0,
                sequence_end=step == 3,
            )
            totals[sequence_id].append(int(result.as_numpy("OUTPUT")[0][0]))
    client.close()
    assert totals == {7: [1, 2, 3, 4], 8: [10, 20, 30, 40]}


def test_a_sequence_waits_for_a_slot_and_runs_when_one_frees(stream_server: Server) -> None:
    # accumulate has two instances of one slot each: a third sequence waits for one.
    client = grpcclient.InferenceServerClient(stream_server.url)
    for sequence_id in (21, 22):
        client.infer(
            "accumulate", [value(grpcclient, 1)], sequence_id=sequence_id, sequence_start=True
        )
    results: queue.Queue[Any] = queue.Queue()
    client.async_infer(
        "accumulate",
        [value(grpcclient, 5)],
        callback=lambda result, error: results.put(error or result),
        sequence_id=23,
        sequence_start=True,
        sequence_end=True,
    )
    time.sleep(0.3)
    assert results.empty()
    client.infer("accumulate", [value(grpcclient, 1)], sequence_id=21, sequence_end=True)
    waited = results.get(timeout=30)
    assert not isinstance(waited, InferenceServerException), waited
    assert int(waited.as_numpy("OUTPUT")[0][0]) == 5
    client.infer("accumulate", [value(grpcclient, 1)], sequence_id=22, sequence_end=True)
    client.close()


@pytest.mark.parametrize(
    ("parameters", "reason"),
    [
        ({}, "needs a sequence_id"),
        ({"sequence_id": 9999}, "has not started or has expired"),
    ],
)
def test_requests_outside_a_sequence_are_invalid(
    stream_server: Server, parameters: dict[str, Any], reason: str
) -> None:
    client = grpcclient.InferenceServerClient(stream_server.url)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("simple_sequence", [value(grpcclient, 1)], **parameters)
    client.close()
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert reason in raised.value.message()


def test_a_second_start_for_a_running_sequence_is_invalid(stream_server: Server) -> None:
    client = grpcclient.InferenceServerClient(stream_server.url)
    client.infer("simple_sequence", [value(grpcclient, 1)], sequence_id=77, sequence_start=True)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("simple_sequence", [value(grpcclient, 1)], sequence_id=77, sequence_start=True)
    client.infer("simple_sequence", [value(grpcclient, 1)], sequence_id=77, sequence_end=True)
    client.close()
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "already running" in raised.value.message()


def test_an_idle_sequence_expires(stream_server: Server) -> None:
    # simple_sequence sets max_sequence_idle_microseconds to 300 ms.
    client = grpcclient.InferenceServerClient(stream_server.url)
    client.infer("simple_sequence", [value(grpcclient, 1)], sequence_id=88, sequence_start=True)
    time.sleep(0.8)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("simple_sequence", [value(grpcclient, 1)], sequence_id=88)
    client.close()
    assert "has not started or has expired" in raised.value.message()


def test_http_sequence_error_is_400(stream_server: Server) -> None:
    body = {"inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "INT32", "data": [1]}]}
    reply = requests.post(
        f"http://{stream_server.http_url}/v2/models/simple_sequence/infer", json=body, timeout=10
    )
    assert reply.status_code == 400
    assert "sequence_id" in reply.json()["error"]


def test_the_oldest_strategy_batches_two_sequences_at_its_preferred_size(
    stream_server: Server,
) -> None:
    results: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(stream_server.url) as client:
        client.start_stream(callback=lambda result, error: results.put(error or result))
        for step in range(3):
            for sequence_id in (4001, 4002):
                client.async_stream_infer(
                    "paired_sequence",
                    [value(grpcclient, sequence_id + step)],
                    sequence_id=sequence_id,
                    sequence_start=step == 0,
                    sequence_end=step == 2,
                )
        outputs = []
        for _ in range(6):
            item = results.get(timeout=30)
            assert not isinstance(item, InferenceServerException), item
            outputs.append(int(item.as_numpy("OUTPUT")[0][0]))
        client.stop_stream()
        stats = client.get_inference_statistics("paired_sequence", as_json=True)
    assert sorted(outputs) == [4002, 4002, 4003, 4003, 4003, 4004]  # START adds 1 at step 0
    batches = stats["model_stats"][0]["batch_stats"]
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in batches] == [("2", "3")]


# Implicit state -------------------------------------------------------------------------


def _int32(module: Any, name: str, v: int) -> Any:
    tensor = module.InferInput(name, [1, 1], "INT32")
    tensor.set_data_from_numpy(np.full([1, 1], v, dtype=np.int32))
    return tensor


def test_implicit_state_keeps_a_running_sum_per_sequence_over_a_stream(
    stream_server: Server,
) -> None:
    results: queue.Queue[Any] = queue.Queue()
    sequences = {3001: [5, 1, 1, 1], 3002: [100, 10, 10], 3003: [-7, -7, -7, -7, -7]}
    with grpcclient.InferenceServerClient(stream_server.url) as client:
        client.start_stream(callback=lambda result, error: results.put(error or result))
        longest = max(len(v) for v in sequences.values())
        for step in range(longest):  # interleaved, so the batcher batches sequences together
            for sequence_id, values in sequences.items():
                if step < len(values):
                    client.async_stream_infer(
                        "running_sum",
                        [_int32(grpcclient, "INPUT", values[step])],
                        request_id=f"{sequence_id}_{step}",
                        sequence_id=sequence_id,
                        sequence_start=step == 0,
                        sequence_end=step == len(values) - 1,
                    )
        received: dict[int, list[int]] = {}
        for _ in range(sum(len(v) for v in sequences.values())):
            item = results.get(timeout=30)
            assert not isinstance(item, InferenceServerException), item
            key = int(item.get_response().id.split("_")[0])
            received.setdefault(key, []).append(int(item.as_numpy("OUTPUT")[0][0]))
    assert received == {
        sequence_id: np.cumsum(values).tolist() for sequence_id, values in sequences.items()
    }


def test_implicit_state_starts_from_its_initial_state_file_and_is_readable_when_listed(
    stream_server: Server,
) -> None:
    client = httpclient.InferenceServerClient(stream_server.http_url)
    outputs = [httpclient.InferRequestedOutput(n) for n in ("OUTPUT", "OUTPUT_STATE")]
    seen = []
    for sequence_id in (51, 52):  # the second sequence starts from the file again
        for count, v in enumerate([1, 2, 3], 1):
            result = client.infer(
                "running_sum_from_file",
                [_int32(httpclient, "INPUT", v)],
                outputs=outputs,
                sequence_id=sequence_id,
                sequence_start=count == 1,
                sequence_end=count == 3,
            )
            assert result.as_numpy("OUTPUT_STATE").tolist() == result.as_numpy("OUTPUT").tolist()
            seen.append(int(result.as_numpy("OUTPUT")[0][0]))
    client.close()
    assert seen == [1001, 1003, 1006, 1001, 1003, 1006]


def test_the_state_tensors_are_the_servers_not_the_clients(stream_server: Server) -> None:
    client = grpcclient.InferenceServerClient(stream_server.url)
    metadata = client.get_model_metadata("running_sum", as_json=True)
    assert [t["name"] for t in metadata["inputs"]] == ["INPUT"]
    assert [t["name"] for t in metadata["outputs"]] == ["OUTPUT"]
    with pytest.raises(InferenceServerException) as sent_state:
        client.infer(
            "running_sum",
            [_int32(grpcclient, "INPUT", 1), _int32(grpcclient, "INPUT_STATE", 1)],
            sequence_id=61,
            sequence_start=True,
        )
    with pytest.raises(InferenceServerException) as asked_state:
        client.infer(
            "running_sum",
            [_int32(grpcclient, "INPUT", 1)],
            outputs=[grpcclient.InferRequestedOutput("OUTPUT_STATE")],
            sequence_id=62,
            sequence_start=True,
        )
    client.close()
    assert sent_state.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "'INPUT_STATE' of model 'running_sum' is supplied by the batcher" in (
        sent_state.value.message()
    )
    assert asked_state.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "has no outputs ['OUTPUT_STATE']" in asked_state.value.message()
