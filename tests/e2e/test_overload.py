"""Overload and shutdown: load at four times capacity is shed with RESOURCE_EXHAUSTED / 429
and Retry-After while memory stays bounded, a request whose deadline is shorter than the
queue's wait is refused at once, SIGTERM under load loses no accepted request, and requests
still running when the exit timeout passes are answered UNAVAILABLE / 503.

The figures (capacity, shed share, latency percentiles, memory, recovery) are printed for
the record; latency is never a pass condition here (it is measured, not asserted).
"""

from __future__ import annotations

import collections
import contextlib
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import Server, serving, start_server

pytestmark = pytest.mark.slow
INFER = "/inference.GRPCInferenceService/ModelInfer"
BATCH_S = 0.02  # the model's time per batch, whatever its size (up to 2)
BURST_S = 30.0

SLOW = """
import time

class Model:
    def execute(self, inputs):
        time.sleep({seconds})
        return {{"OUTPUT": inputs["INPUT"]}}
"""


def _repository(root: Path, batch_s: float = BATCH_S) -> Path:
    (root / "slow" / "1").mkdir(parents=True)
    (root / "slow" / "1" / "model.py").write_text(SLOW.format(seconds=batch_s))
    (root / "slow" / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 2\ndynamic_batching { }\n'
        'input [{ name: "INPUT", data_type: TYPE_FP32, dims: [4] }]\n'
        'output [{ name: "OUTPUT", data_type: TYPE_FP32, dims: [4] }]\n'
    )
    return root


WIRE = pb.ModelInferRequest(
    model_name="slow",
    inputs=[pb.ModelInferRequest.InferInputTensor(name="INPUT", datatype="FP32", shape=[1, 4])],
    raw_input_contents=[np.ones(4, np.float32).tobytes()],
).SerializeToString()


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = _repository(tmp_path_factory.mktemp("overload"))
    with serving(root, tmp_path_factory, "--max-queue-size", "32") as server:
        yield server


def _rss_mib(server: Server) -> float:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


@pytest.fixture(scope="module")
def capped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Sheds what would wait longer than one batch, besides the bounded queue."""
    root = _repository(tmp_path_factory.mktemp("overload_capped"))
    flags = ("--max-queue-size", "32", "--max-queue-wait", str(BATCH_S))
    with serving(root, tmp_path_factory, *flags) as server:
        yield server


def _capacity(call: grpc.UnaryUnaryMultiCallable, seconds: float = 3.0) -> float:
    """Requests answered per second with 8 clients keeping the queue busy (those shed
    retry at once)."""
    done, stop = [0], time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < stop:
            try:
                call(WIRE, timeout=30)
                done[0] += 1
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done[0] / seconds


class Burst:
    """An open-loop burst: requests on schedule whatever the answers, and what came back."""

    def __init__(self, server: Server, call: grpc.UnaryUnaryMultiCallable) -> None:
        self.server, self.call = server, call
        self.statuses: collections.Counter[str] = collections.Counter()
        self.http: collections.Counter[str] = collections.Counter()
        self.accepted: list[float] = []
        self.sent = 0
        self.rss_peak = 0.0
        self._lock = threading.Lock()

    def _record(self, started: float, future: grpc.Future) -> None:
        try:
            future.result()
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
        with self._lock:
            self.statuses[code] += 1
            if code == "OK":
                self.accepted.append(time.perf_counter() - started)

    def _probe(self) -> None:
        """Once a second: memory, and one HTTP request (429 carries Retry-After)."""
        self.rss_peak = max(self.rss_peak, _rss_mib(self.server))
        reply = requests.post(
            f"http://{self.server.http_url}/v2/models/slow/infer",
            json={
                "inputs": [
                    {"name": "INPUT", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
                ]
            },
            timeout=30,
        )
        self.http[str(reply.status_code)] += 1
        if reply.status_code == 429:
            assert reply.headers["retry-after"] == "1"

    def run(self, rate: float, seconds: float) -> None:
        futures = []
        start = next_probe = time.perf_counter()
        while (now := time.perf_counter()) - start < seconds:
            while self.sent < int((now - start) * rate):
                future = self.call.future(WIRE, timeout=30)
                sent_at = time.perf_counter()
                future.add_done_callback(lambda f, t=sent_at: self._record(t, f))
                futures.append(future)
                self.sent += 1
            if now >= next_probe:
                next_probe += 1.0
                self._probe()
            time.sleep(0.002)
        for future in futures:
            with contextlib.suppress(grpc.RpcError):
                future.result(timeout=60)


def _recovery_s(call: grpc.UnaryUnaryMultiCallable) -> float:
    """From now to the first ten answers in a row (bounded)."""
    started, in_a_row = time.perf_counter(), 0
    while in_a_row < 10:
        assert time.perf_counter() - started < 30, "no recovery after the burst"
        try:
            call(WIRE, timeout=30)
            in_a_row += 1
        except grpc.RpcError:
            in_a_row = 0
    return time.perf_counter() - started


def test_four_times_capacity_is_shed_memory_stays_bounded_and_service_recovers(
    capped_server: Server,
) -> None:
    with grpc.insecure_channel(capped_server.url) as channel:
        call = channel.unary_unary(INFER, response_deserializer=pb.ModelInferResponse.FromString)
        unloaded = []
        for _ in range(50):
            started = time.perf_counter()
            call(WIRE, timeout=30)
            unloaded.append(time.perf_counter() - started)
        capacity = _capacity(call)
        rss_before = _rss_mib(capped_server)
        burst = Burst(capped_server, call)
        burst.run(4 * capacity, BURST_S)
        recovered_s = _recovery_s(call)
        after = _capacity(call, 2.0)
    statuses = burst.statuses
    print(
        f"\ncapacity {capacity:.0f} req/s; offered {4 * capacity:.0f} req/s for {BURST_S:.0f} s "
        f"({burst.sent} requests): {dict(statuses)}; HTTP probes {dict(burst.http)}\n"
        f"accepted latency p50 {_percentile(burst.accepted, 0.5) * 1e3:.1f} ms, "
        f"p99 {_percentile(burst.accepted, 0.99) * 1e3:.1f} ms; unloaded p99 "
        f"{_percentile(unloaded, 0.99) * 1e3:.1f} ms\n"
        f"resident memory {rss_before:.0f} MiB before, {burst.rss_peak:.0f} MiB at most "
        f"during; 10 answers in a row {recovered_s:.2f} s after the burst; then "
        f"{after:.0f} req/s"
    )
    assert set(statuses) <= {"OK", "RESOURCE_EXHAUSTED"}, statuses
    assert statuses["RESOURCE_EXHAUSTED"] > statuses["OK"] > 0
    assert sum(statuses.values()) == burst.sent
    assert set(burst.http) <= {"200", "429"}
    # The queue is bounded, so memory is too: what the burst adds is buffers, not requests.
    assert burst.rss_peak - rss_before < 150, (rss_before, burst.rss_peak)


def test_a_request_whose_deadline_is_shorter_than_the_queue_wait_is_refused_at_once(
    slow_server: Server,
) -> None:
    with grpc.insecure_channel(slow_server.url) as channel:
        call = channel.unary_unary(INFER, response_deserializer=pb.ModelInferResponse.FromString)
        for _ in range(10):  # the averages of batch time and size
            call(WIRE, timeout=30)
        backlog = [call.future(WIRE, timeout=30) for _ in range(24)]
        time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as info:
            call(WIRE, timeout=0.06)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # Refused by the server, which says why; not the client's own deadline passing.
        assert "requests queued" in info.value.details(), info.value.details()
        # A deadline the queue can meet is admitted and served.
        call(WIRE, timeout=20)
        for future in backlog:
            future.result(timeout=30)


def test_sigterm_under_load_finishes_every_accepted_request(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    # Batches slow enough that all 20 are surely in flight together (the drain's 5 s grace
    # still covers them: 10 batches of 0.2 s).
    root = _repository(tmp_path_factory.mktemp("drain"), batch_s=0.2)
    server = start_server(root, tmp_path / "log")
    try:
        with grpc.insecure_channel(server.url) as channel:
            call = channel.unary_unary(
                INFER, response_deserializer=pb.ModelInferResponse.FromString
            )
            accepted = [call.future(WIRE, timeout=60) for _ in range(20)]
            _wait_in_flight(server, "slow", 20)
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.05)
            with pytest.raises(grpc.RpcError) as info:
                call(WIRE, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            results = [f.result(timeout=60) for f in accepted]
        assert len(results) == 20
        assert server.process.wait(30) == 0
        records = {r["event"]: r for r in server.log_records()}
        assert records["shutting down: draining"]["in_flight"] == 20
        assert records["stopped"]["unfinished"] == 0 and records["stopped"]["cut_off"] == 0
    finally:
        server.stop()


def _wait_in_flight(server: Server, model: str, count: int) -> None:
    deadline = time.monotonic() + 20
    pattern = rf'tensorgate_inflight_requests\{{model="{model}",version="1"\}} (\S+)'
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
        found = re.search(pattern, text)
        if found and float(found.group(1)) == count:
            return
        time.sleep(0.01)
    pytest.fail(f"the {count} requests were never in flight together")


def _wait_not_ready(server: Server) -> None:
    """Until the draining server says it is not ready (HTTP: gRPC refuses new calls)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        answer = requests.get(f"http://{server.http_url}/v2/health/ready", timeout=5)
        if answer.status_code != 200:
            return
        time.sleep(0.01)
    pytest.fail("the server never stopped being ready")


def test_requests_unfinished_at_the_exit_timeout_are_answered_unavailable_and_not_waited_for(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    # A batch outlasts the test: the server must answer and exit without waiting for it.
    root = _repository(tmp_path_factory.mktemp("exit_timeout"), batch_s=600)
    server = start_server(root, tmp_path / "log", "--exit-timeout", "0.5")
    data = np.ones((1, 4), np.float32)
    try:
        outcomes: dict[str, object] = {}

        def over_http() -> None:
            client = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
            tensor = httpclient.InferInput("INPUT", [1, 4], "FP32")
            tensor.set_data_from_numpy(data, binary_data=True)
            try:
                client.infer("slow", [tensor])
                outcomes["http"] = "answered"
            except InferenceServerException as exc:
                outcomes["http"] = exc
            client.close()

        unary = grpcclient.InferenceServerClient(server.url)
        streamed = grpcclient.InferenceServerClient(server.url)
        tensor = grpcclient.InferInput("INPUT", [1, 4], "FP32")
        tensor.set_data_from_numpy(data)
        answered = threading.Event()
        unary.async_infer(
            "slow",
            [tensor],
            lambda result, error: (outcomes.setdefault("grpc", error or result), answered.set()),
            client_timeout=60,
        )
        stream_outcomes: list[object] = []
        streamed.start_stream(lambda result, error: stream_outcomes.append(error or result))
        streamed.async_stream_infer("slow", [tensor])
        http_thread = threading.Thread(target=over_http)
        http_thread.start()
        # One batch of two running, one request queued behind it.
        _wait_in_flight(server, "slow", 3)

        server.process.send_signal(signal.SIGTERM)
        _wait_not_ready(server)
        # The open stream may not start new work: refused at once, while its request in
        # flight goes on waiting.
        streamed.async_stream_infer("slow", [tensor])
        assert server.process.wait(30) == 0, server.output()
        http_thread.join(30)
        assert answered.wait(30)
        streamed.stop_stream()
        unary.close()
        streamed.close()
    finally:
        server.stop()

    said = "exit timeout (0.5 s, --exit-timeout) passed before this request finished"
    http_error = outcomes["http"]
    assert isinstance(http_error, InferenceServerException), http_error
    assert http_error.status() == "503" and said in http_error.message(), http_error
    grpc_error = outcomes["grpc"]
    assert isinstance(grpc_error, InferenceServerException), grpc_error
    assert grpc_error.status() == "StatusCode.UNAVAILABLE" and said in grpc_error.message()
    # A stream's errors travel in its responses (the stream's own end may follow them).
    errors = [e.message() for e in stream_outcomes if isinstance(e, InferenceServerException)]
    assert any("the server is shutting down: send new requests to" in e for e in errors), errors
    assert any(said in e for e in errors), errors
    records = server.log_records()
    events = {r["event"]: r for r in records}
    assert events["stopped"]["cut_off"] == 3 and events["stopped"]["unfinished"] == 0
    assert events["model still running a batch at exit; not waited for"]["model"] == "slow"
    assert not [r for r in records if r["level"] == "error"], records
