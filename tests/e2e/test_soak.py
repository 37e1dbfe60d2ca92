"""Soak: steady traffic at 70 % of capacity over gRPC and HTTP, unary and streamed, for 60 s in
`make test` and 30 minutes in `make soak` (SOAK_SECONDS): no errors, and resident memory
grows less than 5 % after warm-up. The figures are printed for the record."""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import grpc
import pytest
import requests
from tritonclient.grpc import service_pb2 as pb

from tests.e2e.conftest import Server, serving
from tests.e2e.test_overload import INFER, WIRE, _capacity, _repository, _rss_mib

pytestmark = pytest.mark.slow
SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
WARM_UP_S = min(15.0, SECONDS / 4)
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


@pytest.fixture(scope="module")
def soaked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = _repository(tmp_path_factory.mktemp("soak"))
    with serving(root, tmp_path_factory, "--access-log-rate", "0") as server:
        yield server


class Traffic:
    """Requests on schedule: 60 % unary gRPC, 30 % HTTP, 10 % on one long-lived stream."""

    def __init__(self, server: Server, channel: grpc.Channel) -> None:
        self.server = server
        self.unary = channel.unary_unary(
            INFER, response_deserializer=pb.ModelInferResponse.FromString
        )
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.samples: list[tuple[float, float]] = []  # (seconds, resident MiB)
        self.sent = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._posting = ThreadPoolExecutor(4)
        self._pending: list[Future[None] | grpc.Future] = []
        self._sends: queue.Queue[bytes | None] = queue.Queue(maxsize=100)
        stream = channel.stream_stream(
            STREAM, response_deserializer=pb.ModelStreamInferResponse.FromString
        )(iter(self._sends.get, None))
        self._reader = threading.Thread(target=self._read, args=(stream,))
        self._reader.start()

    def _count(self, what: str) -> None:
        with self._lock:
            self.outcomes[what] += 1

    def _read(self, stream: Iterator[pb.ModelStreamInferResponse]) -> None:
        for message in stream:
            self._count("stream OK" if not message.error_message else "stream error")

    def _post(self) -> None:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        reply = self._local.session.post(
            f"http://{self.server.http_url}/v2/models/slow/infer",
            json={
                "inputs": [{"name": "INPUT", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]
            },
            timeout=30,
        )
        self._count(f"http {reply.status_code}")

    def _one(self) -> None:
        self.sent += 1
        if self.sent % 10 == 0:
            self._sends.put(WIRE)
        elif self.sent % 10 in (1, 2, 3):
            self._pending.append(self._posting.submit(self._post))
        else:
            future = self.unary.future(WIRE, timeout=30)
            future.add_done_callback(
                lambda f: self._count("grpc OK" if f.exception() is None else "grpc error")
            )
            self._pending.append(future)

    def run(self, rate: float, seconds: float) -> None:
        start = next_sample = time.perf_counter()
        while (now := time.perf_counter()) - start < seconds:
            while self.sent < int((now - start) * rate):
                self._one()
            if now >= next_sample:
                next_sample += 1.0
                self.samples.append((now - start, _rss_mib(self.server)))
                self._pending = [f for f in self._pending if not f.done()]
            time.sleep(0.002)
        for pending in self._pending:
            pending.result(timeout=60)
        self._posting.shutdown()
        self._sends.put(None)
        self._reader.join(60)


# The suite's per-test limit (300 s) is for tests that hang; a soak runs as long as it is told.
@pytest.mark.timeout(SECONDS + 300)
def test_steady_load_for_a_long_time_has_no_errors_and_memory_stays_flat(
    soaked: Server,
) -> None:
    with grpc.insecure_channel(soaked.url) as channel:
        capacity = _capacity(
            channel.unary_unary(INFER, response_deserializer=pb.ModelInferResponse.FromString),
            2.0,
        )
        traffic = Traffic(soaked, channel)
        traffic.run(0.7 * capacity, SECONDS)
    samples = traffic.samples
    warm = [rss for at, rss in samples if at >= WARM_UP_S]
    growth = (warm[-1] - warm[0]) / warm[0]
    print(
        f"\nsoak {SECONDS:.0f} s at {0.7 * capacity:.0f} req/s (70 % of {capacity:.0f}): "
        f"{dict(traffic.outcomes)}; resident memory {samples[0][1]:.1f} MiB at start, "
        f"{warm[0]:.1f} MiB after warm-up, {warm[-1]:.1f} MiB at the end "
        f"({growth * 100:+.1f} %), peak {max(r for _, r in samples):.1f} MiB"
    )
    assert set(traffic.outcomes) == {"grpc OK", "http 200", "stream OK"}, traffic.outcomes
    assert sum(traffic.outcomes.values()) == traffic.sent
    assert growth < 0.05
    assert soaked.process.poll() is None
