"""The dynamic batcher as a client sees it: batch sizes in ModelStatistics, execution order,
queue limits and timeouts as gRPC statuses, and requests that provably never ran.

Every model here is the same Python model with a different config.pbtxt. It appends one JSON
line per execution (the first element of each row, start and end times) to a log in its
model directory, which is how a test proves what ran, in which batch and in which order.
"""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import Server, serving

RECORDER = """
import json
import os
import time

import numpy as np


class Model:
    def load(self, context):
        params = context.config.parameters
        self.sleep_s = float(params["sleep_ms"].string_value) / 1000 if "sleep_ms" in params else 0
        self.sleep_from_input = "sleep_from_input" in params
        self.log = os.path.join(str(context.model_dir), "executions.log")
        self.started_log = os.path.join(str(context.model_dir), "started.log")

    def execute(self, inputs):
        x = inputs["INPUT"]
        started = time.time()
        with open(self.started_log, "a") as f:
            f.write("started\\n")
        time.sleep(float(x.reshape(-1)[0]) / 1000 if self.sleep_from_input else self.sleep_s)
        line = json.dumps({"rows": [float(r[0]) for r in x], "start": started, "end": time.time()})
        with open(self.log, "a") as f:  # one short O_APPEND write per line: atomic
            f.write(line + "\\n")
        if (x < 0).any():
            raise ValueError("negative input is not allowed")
        return {"OUTPUT": x.copy()}
"""

MODELS = {
    # 300 ms of delay: requests sent together land in one batch.
    "delayed": "max_batch_size: 8 dynamic_batching { max_queue_delay_microseconds: 300000 }",
    "preferred": (
        "max_batch_size: 8 dynamic_batching { preferred_batch_size: [2] "
        "max_queue_delay_microseconds: 20000000 }"
    ),
    "prioritized": (
        'max_batch_size: 1 parameters { key: "sleep_ms" value { string_value: "600" } } '
        "dynamic_batching { priority_levels: 2 default_priority_level: 2 }"
    ),
    "reject_timeout": (
        'max_batch_size: 1 parameters { key: "sleep_ms" value { string_value: "600" } } '
        "dynamic_batching { default_queue_policy { default_timeout_microseconds: 100000 } }"
    ),
    "delay_timeout": (
        'max_batch_size: 1 parameters { key: "sleep_ms" value { string_value: "600" } } '
        "dynamic_batching { default_queue_policy { timeout_action: DELAY "
        "default_timeout_microseconds: 60000000 allow_timeout_override: true } }"
    ),
    "small_queue": (
        'max_batch_size: 1 parameters { key: "sleep_ms" value { string_value: "600" } } '
        "dynamic_batching { default_queue_policy { max_queue_size: 1 } }"
    ),
    "slow": 'max_batch_size: 8 parameters { key: "sleep_ms" value { string_value: "600" } }',
    "ordered": (
        'max_batch_size: 1 parameters { key: "sleep_from_input" value { string_value: "1" } } '
        "instance_group { count: 2 kind: KIND_CPU } "
        "dynamic_batching { preserve_ordering: true }"
    ),
    "unordered": (
        'max_batch_size: 1 parameters { key: "sleep_from_input" value { string_value: "1" } } '
        "instance_group { count: 2 kind: KIND_CPU } dynamic_batching { }"
    ),
    "parallel": (
        'max_batch_size: 1 parameters { key: "sleep_ms" value { string_value: "400" } } '
        "instance_group { count: 2 kind: KIND_CPU }"
    ),
    "failing_batches": (
        'max_batch_size: 8 parameters { key: "sleep_ms" value { string_value: "300" } } '
        "dynamic_batching { max_queue_delay_microseconds: 100000 }"
    ),
}


def _write_repository(root: Path) -> None:
    for name, config in MODELS.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(RECORDER)
        (root / name / "config.pbtxt").write_text(
            f'backend: "python"\n{config}\n'
            'input [{ name: "INPUT", data_type: TYPE_FP32, dims: [-1] }]\n'
            'output [{ name: "OUTPUT", data_type: TYPE_FP32, dims: [-1] }]\n'
        )


@pytest.fixture(scope="module")
def batching_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batching_repo")
    _write_repository(root)
    return root


@pytest.fixture(scope="module")
def batching_server(
    batching_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    with serving(batching_repo, tmp_path_factory) as server:
        yield server


def executions(repo: Path, model: str) -> list[dict[str, Any]]:
    path = repo / model / "executions.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _input(*values: float, width: int = 1) -> grpcclient.InferInput:
    data = np.repeat(np.array(values, dtype=np.float32).reshape(-1, 1), width, axis=1)
    tensor = grpcclient.InferInput("INPUT", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return tensor


def _stats(client: grpcclient.InferenceServerClient, model: str) -> dict[str, Any]:
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return {
        "inference_count": int(stats.get("inference_count", 0)),
        "execution_count": int(stats.get("execution_count", 0)),
        "success": int(stats["inference_stats"]["success"].get("count", 0)),
        "queue": int(stats["inference_stats"]["queue"].get("count", 0)),
        "batches": {
            int(b["batch_size"]): int(b["compute_infer"]["count"])
            for b in stats.get("batch_stats", [])
        },
    }


async def _infer_together(
    url: str, model: str, inputs: list[grpcclient.InferInput], timeout: float = 30
) -> list[Any]:
    async with aioclient.InferenceServerClient(url) as client:
        return list(
            await asyncio.gather(
                *(client.infer(model, [tensor], client_timeout=timeout) for tensor in inputs)
            )
        )


def _in_background(fn: Any, *args: Any, **kwargs: Any) -> queue.Queue[Any]:
    """Run a blocking call on a thread; the queue receives its result or exception."""
    result: queue.Queue[Any] = queue.Queue()

    def run() -> None:
        try:
            result.put(fn(*args, **kwargs))
        except Exception as exc:
            result.put(exc)

    threading.Thread(target=run, daemon=True).start()
    return result


def _started(repo: Path, model: str) -> int:
    path = repo / model / "started.log"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _occupy(
    client: grpcclient.InferenceServerClient, repo: Path, model: str, value: float
) -> queue.Queue[Any]:
    """Send a request that takes the model's only instance, and wait until it runs."""
    before = _started(repo, model)
    running = _in_background(client.infer, model, [_input(value)])
    deadline = time.monotonic() + 30
    while _started(repo, model) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _started(repo, model) > before, f"{model} did not start a batch within 30 s"
    return running


def test_requests_sent_together_form_one_batch_counted_in_rows(
    batching_server: Server, batching_repo: Path
) -> None:
    inputs = [_input(1), _input(2, 2), _input(3, 3, 3)]
    results = asyncio.run(_infer_together(batching_server.url, "delayed", inputs))
    assert [r.as_numpy("OUTPUT").reshape(-1).tolist() for r in results] == [
        [1],
        [2, 2],
        [3, 3, 3],
    ]
    with grpcclient.InferenceServerClient(batching_server.url) as client:
        stats = _stats(client, "delayed")
    assert stats["execution_count"] == 1 and stats["inference_count"] == 6
    assert stats["batches"] == {6: 1} and stats["success"] == 3 and stats["queue"] == 3
    assert [sorted(e["rows"]) for e in executions(batching_repo, "delayed")] == [[1, 2, 2, 3, 3, 3]]


def test_requests_whose_shapes_differ_never_share_a_batch(
    batching_server: Server, batching_repo: Path
) -> None:
    before = len(executions(batching_repo, "delayed"))

    async def scenario() -> None:
        async with aioclient.InferenceServerClient(batching_server.url) as client:
            narrow = [
                asyncio.create_task(client.infer("delayed", [_input(v, width=2)])) for v in (10, 11)
            ]
            await asyncio.sleep(0.05)  # well inside the 300 ms delay: the batch is open
            wide = client.infer("delayed", [_input(20, width=3)])
            await asyncio.gather(*narrow, wide)

    asyncio.run(scenario())
    batches = [sorted(e["rows"]) for e in executions(batching_repo, "delayed")[before:]]
    assert batches == [[10, 11], [20]]


def test_preferred_batch_size_is_sent_without_waiting_for_the_delay(
    batching_server: Server,
) -> None:
    # The delay is 20 s; the client gives up after 10 s, so only the preferred-size rule
    # can answer in time.
    inputs = [_input(1), _input(2)]
    results = asyncio.run(_infer_together(batching_server.url, "preferred", inputs, 10))
    assert len(results) == 2
    with grpcclient.InferenceServerClient(batching_server.url) as client:
        assert _stats(client, "preferred")["batches"] == {2: 1}


def test_higher_priority_request_overtakes_queued_ones(
    batching_server: Server, batching_repo: Path
) -> None:
    with grpcclient.InferenceServerClient(batching_server.url) as client:
        pending = [_occupy(client, batching_repo, "prioritized", 0)]
        for value, priority in ((1, 2), (2, 0), (3, 1)):
            pending.append(
                _in_background(client.infer, "prioritized", [_input(value)], priority=priority)
            )
            time.sleep(0.05)
        for result in pending:
            outcome = result.get(timeout=30)
            assert not isinstance(outcome, Exception), outcome
        with pytest.raises(InferenceServerException, match="priority 5 is out of range"):
            client.infer("prioritized", [_input(9)], priority=5)
    order = [e["rows"][0] for e in executions(batching_repo, "prioritized")]
    assert order == [0, 3, 1, 2]


def test_queue_timeout_reject_fails_the_request_and_it_never_runs(
    batching_server: Server, batching_repo: Path
) -> None:
    with grpcclient.InferenceServerClient(batching_server.url) as client:
        blocker = _occupy(client, batching_repo, "reject_timeout", 1)
        with pytest.raises(InferenceServerException) as failure:
            client.infer("reject_timeout", [_input(2)])
        assert failure.value.status() == "StatusCode.UNAVAILABLE"
        assert "Request timeout expired" in str(failure.value)
        assert not isinstance(blocker.get(timeout=30), Exception)
        assert [e["rows"] for e in executions(batching_repo, "reject_timeout")] == [[1]]
        assert _stats(client, "reject_timeout")["success"] == 1


def test_queue_timeout_delay_runs_the_late_request_after_the_others(
    batching_server: Server, batching_repo: Path
) -> None:
    with grpcclient.InferenceServerClient(batching_server.url) as client:
        results = [_occupy(client, batching_repo, "delay_timeout", 1)]
        # 1 µs (the request may shorten the 60 s default): it is late before it could run.
        results.append(_in_background(client.infer, "delay_timeout", [_input(2)], timeout=1))
        time.sleep(0.05)
        results.append(_in_background(client.infer, "delay_timeout", [_input(3)]))
        for result in results:
            assert not isinstance(result.get(timeout=30), Exception)
    order = [e["rows"][0] for e in executions(batching_repo, "delay_timeout")]
    assert order == [1, 3, 2]


def test_full_queue_is_rejected_at_once_with_resource_exhausted(
    batching_server: Server, batching_repo: Path
) -> None:
    with grpcclient.InferenceServerClient(batching_server.url) as client:
        running = _occupy(client, batching_repo, "small_queue", 1)
        queued = _in_background(client.infer, "small_queue", [_input(2)])
        time.sleep(0.1)
        with pytest.raises(InferenceServerException) as failure:
            client.infer("small_queue", [_input(3)])
        assert failure.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "queue is full" in str(failure.value)
        for result in (running, queued):
            assert not isinstance(result.get(timeout=30), Exception)


def test_request_whose_deadline_passes_in_the_queue_is_never_executed(
    batching_server: Server, batching_repo: Path
) -> None:
    with grpcclient.InferenceServerClient(batching_server.url) as client:
        blocker = _occupy(client, batching_repo, "slow", 1)
        with pytest.raises(InferenceServerException) as failure:
            client.infer("slow", [_input(2)], client_timeout=0.2)
        assert failure.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert not isinstance(blocker.get(timeout=30), Exception)
        # A request queued after the expired one runs, and the expired one still does not.
        assert client.infer("slow", [_input(3)]).as_numpy("OUTPUT").tolist() == [[3]]
    assert [e["rows"] for e in executions(batching_repo, "slow")] == [[1], [3]]


def test_http_request_whose_client_disconnects_in_the_queue_is_never_executed(
    batching_server: Server, batching_repo: Path
) -> None:
    body = json.dumps(
        {"inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "FP32", "data": [7]}]}
    ).encode()
    request = b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    with grpcclient.InferenceServerClient(batching_server.url) as client:
        before = len(executions(batching_repo, "slow"))
        blocker = _occupy(client, batching_repo, "slow", 6)
        with socket.create_connection(("127.0.0.1", batching_server.http_port)) as sock:
            sock.sendall(request)
            time.sleep(0.2)  # queued behind the blocker; then the client goes away
        assert not isinstance(blocker.get(timeout=30), Exception)
        assert client.infer("slow", [_input(8)]).as_numpy("OUTPUT").tolist() == [[8]]
    assert [e["rows"] for e in executions(batching_repo, "slow")[before:]] == [[6], [8]]


def test_stream_request_queued_when_its_stream_is_cancelled_is_never_executed(
    batching_server: Server, batching_repo: Path
) -> None:
    with grpcclient.InferenceServerClient(batching_server.url) as client:
        before = len(executions(batching_repo, "slow"))
        blocker = _occupy(client, batching_repo, "slow", 6)
        streamed = grpcclient.InferenceServerClient(batching_server.url)
        answers: list[Any] = []
        streamed.start_stream(lambda result, error: answers.append(error or result))
        streamed.async_stream_infer("slow", [_input(7)])
        time.sleep(0.2)  # queued behind the blocker; then the client cancels its stream
        streamed.stop_stream(cancel_requests=True)
        streamed.close()
        assert not isinstance(blocker.get(timeout=30), Exception)
        assert client.infer("slow", [_input(8)]).as_numpy("OUTPUT").tolist() == [[8]]
    assert [e["rows"] for e in executions(batching_repo, "slow")[before:]] == [[6], [8]]
    assert not [a for a in answers if not isinstance(a, InferenceServerException)], answers


def test_request_cancelled_while_running_is_dropped_and_the_server_goes_on(
    batching_server: Server, batching_repo: Path
) -> None:
    with grpcclient.InferenceServerClient(batching_server.url) as client:
        before = len(executions(batching_repo, "slow"))
        with pytest.raises(InferenceServerException) as failure:
            client.infer("slow", [_input(4)], client_timeout=0.2)
        assert failure.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert client.infer("slow", [_input(5)]).as_numpy("OUTPUT").tolist() == [[5]]
    assert [e["rows"] for e in executions(batching_repo, "slow")[before:]] == [[4], [5]]


@pytest.mark.parametrize(("model", "expected"), [("ordered", [300, 10]), ("unordered", [10, 300])])
def test_preserve_ordering_decides_stream_response_order(
    batching_server: Server, model: str, expected: list[int]
) -> None:
    responses: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(batching_server.url) as client:
        client.start_stream(callback=lambda result, error: responses.put(error or result))
        # 300 ms then 10 ms of work on two instances: the second finishes first.
        client.async_stream_infer(model, [_input(300)])
        time.sleep(0.05)
        client.async_stream_infer(model, [_input(10)])
        got = [responses.get(timeout=30) for _ in range(2)]
        client.stop_stream()
    values = [int(r.as_numpy("OUTPUT")[0][0]) for r in got]
    assert values == expected


def test_instances_execute_batches_at_the_same_time(
    batching_server: Server, batching_repo: Path
) -> None:
    inputs = [_input(1), _input(2)]
    asyncio.run(_infer_together(batching_server.url, "parallel", inputs))
    first, second = executions(batching_repo, "parallel")
    assert first["start"] < second["end"] and second["start"] < first["end"]


def test_failing_batch_fails_only_its_own_requests(
    batching_server: Server, batching_repo: Path
) -> None:
    async def scenario() -> list[Any]:
        async with aioclient.InferenceServerClient(batching_server.url) as client:

            def call(value: float) -> Any:
                return asyncio.create_task(
                    client.infer("failing_batches", [_input(value, width=2)])
                )

            # The first two share a batch (100 ms delay); the next two arrive while it runs
            # (300 ms) and form the following batch.
            first_batch = [call(1), call(-1)]
            await asyncio.sleep(0.15)
            second_batch = [call(2), call(3)]
            return list(await asyncio.gather(*first_batch, *second_batch, return_exceptions=True))

    good_batchmate, bad, after, after_too = asyncio.run(scenario())
    for failed in (good_batchmate, bad):
        assert isinstance(failed, InferenceServerException)
        assert failed.status() == "StatusCode.INTERNAL"
        assert "negative input is not allowed" in str(failed)
    assert after.as_numpy("OUTPUT").tolist() == [[2, 2]]
    assert after_too.as_numpy("OUTPUT").tolist() == [[3, 3]]
    batches = [sorted(e["rows"]) for e in executions(batching_repo, "failing_batches")]
    assert batches == [[-1, 1], [2, 3]]
