"""What an operator sees from outside: /metrics deltas, JSON request logs with request ids,
run-time log levels, and gRPC health transitions during loading and draining.
"""

from __future__ import annotations

import gzip
import json
import queue
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.service_pb2 as triton_pb
import tritonclient.grpc.service_pb2_grpc as triton_grpc
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import ROOT, Server, doc_block, serving, start_server

DOUBLER = """
import os
import time


class Model:
    def load(self, context):
        params = context.config.parameters
        time.sleep(float(params["load_s"].string_value) if "load_s" in params else 0)
        self.sleep_s = float(params["sleep_s"].string_value) if "sleep_s" in params else 0

    def execute(self, inputs):
        x = inputs["INPUT"]
        time.sleep(self.sleep_s)
        if (x < 0).any():
            raise ValueError("negative input is not allowed")
        return {"OUTPUT": x * 2}
"""

MODELS = {
    # 300 ms of delay: requests sent together land in one batch.
    "batched": "max_batch_size: 8 dynamic_batching { max_queue_delay_microseconds: 300000 }",
    "plain": "max_batch_size: 8",
    "slow_load": 'max_batch_size: 8 parameters { key: "load_s" value { string_value: "2" } }',
    "slow_infer": 'max_batch_size: 8 parameters { key: "sleep_s" value { string_value: "1.5" } }',
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def write_repository(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(DOUBLER)
        (root / name / "config.pbtxt").write_text(
            f'backend: "python"\n{MODELS[name]}\n'
            'input [{ name: "INPUT", data_type: TYPE_FP32, dims: [4] }]\n'
            'output [{ name: "OUTPUT", data_type: TYPE_FP32, dims: [4] }]\n'
        )
    return root


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    repo = write_repository(tmp_path_factory.mktemp("obs_repo"), ["batched", "plain"])
    with serving(repo, tmp_path_factory, "--access-log-rate", "1", "--allow-log-updates") as server:
        yield server


def scrape(server: Server) -> Samples:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def grpc_input(rows: int = 1, sign: float = 1.0) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("INPUT", [rows, 4], "FP32")
    tensor.set_data_from_numpy(np.full((rows, 4), sign, dtype=np.float32))
    return tensor


def http_input() -> httpclient.InferInput:
    tensor = httpclient.InferInput("INPUT", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    return tensor


def test_metrics_count_requests_outcomes_and_batches_exactly(observed: Server) -> None:
    grpc_client = grpcclient.InferenceServerClient(observed.url)
    http_client = httpclient.InferenceServerClient(observed.http_url)
    before = scrape(observed)

    # Four gRPC requests sent together: one batch of 4 rows.
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: grpc_client.infer("batched", [grpc_input()]), range(4)))
    assert all(r.as_numpy("OUTPUT").tolist() == [[2.0] * 4] for r in results)
    # Two HTTP requests one after the other: two batches of 1.
    for _ in range(2):
        http_client.infer("batched", [http_input()])
    # An unknown model, a wrong shape and a failing batch.
    with pytest.raises(InferenceServerException, match="unknown model"):
        grpc_client.infer("no_such_model", [grpc_input()])
    wrong = grpcclient.InferInput("INPUT", [1, 3], "FP32")
    wrong.set_data_from_numpy(np.ones((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="shape"):
        grpc_client.infer("batched", [wrong])
    with pytest.raises(InferenceServerException, match="negative input"):
        grpc_client.infer("plain", [grpc_input(sign=-1.0)])
    after = scrape(observed)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    model = {"model": "batched", "version": "1"}
    requests = "tensorgate_requests_total"
    assert delta(requests, **model, protocol="grpc", outcome="success") == 4
    assert delta(requests, **model, protocol="http", outcome="success") == 2
    assert delta(requests, **model, protocol="grpc", outcome="invalid_argument") == 1
    assert delta(requests, model="", version="", protocol="grpc", outcome="not_found") == 1
    assert delta(requests, model="plain", version="1", protocol="grpc", outcome="internal") == 1
    # Every request that reached the model's version is timed; only executed ones queued.
    assert delta("tensorgate_request_duration_seconds_count", **model) == 7
    assert delta("tensorgate_queue_duration_seconds_count", **model) == 6
    # Three batches: 4 rows, 1 row, 1 row.
    assert delta("tensorgate_batch_size_count", **model) == 3
    assert delta("tensorgate_batch_size_sum", **model) == 6
    assert delta("tensorgate_batch_size_bucket", **model, le="1.0") == 2
    assert delta("tensorgate_batch_size_bucket", **model, le="2.0") == 2
    assert delta("tensorgate_batch_size_bucket", **model, le="4.0") == 3
    for phase in ("input", "infer", "output"):
        assert delta("tensorgate_compute_duration_seconds_count", **model, phase=phase) == 3
    # The 300 ms batching delay shows in the queue histogram: nobody waited under 100 µs...
    assert delta("tensorgate_queue_duration_seconds_bucket", **model, le="0.0001") == 0
    # ...and every request is within 10 s.
    assert delta("tensorgate_request_duration_seconds_bucket", **model, le="10.0") == 7

    assert value(after, "tensorgate_queue_depth", **model) == 0
    assert value(after, "tensorgate_inflight_requests", **model) == 0
    assert value(after, "tensorgate_model_state", model="batched", state="READY") == 1
    assert value(after, "tensorgate_model_state", model="batched", state="LOADING") == 0
    assert value(after, "tensorgate_model_load_duration_seconds", model="batched") > 0
    assert value(after, "tensorgate_model_loads_total", model="batched", outcome="success") == 1
    assert value(after, "tensorgate_server_ready") == 1
    assert value(after, "process_resident_memory_bytes") > 10e6
    assert value(after, "process_cpu_seconds_total") > 0


def test_tritons_metric_families_agree_with_model_statistics(observed: Server) -> None:
    client = grpcclient.InferenceServerClient(observed.url)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: client.infer("batched", [grpc_input()]), range(4)))
    with pytest.raises(InferenceServerException, match="negative input"):
        client.infer("plain", [grpc_input(sign=-1.0)])
    with urllib.request.urlopen(observed.metrics_url, timeout=10) as response:
        text = response.read().decode()
    statistics = client.get_inference_statistics(as_json=True)["model_stats"]
    for stats in statistics:
        model = f'{{model="{stats["name"]}",version="{stats["version"]}"}}'

        def exposed(name: str, model: str = model) -> int:
            (line,) = [x for x in text.splitlines() if x.startswith(name + model + " ")]
            return int(float(line.split()[-1]))

        kinds = stats["inference_stats"]  # protobuf's JSON leaves zeros out

        def stat(kind: str, field: str, kinds: dict[str, Any] = kinds) -> int:
            return int(kinds.get(kind, {}).get(field, 0))

        assert exposed("nv_inference_request_success") == stat("success", "count")
        assert exposed("nv_inference_request_failure") == stat("fail", "count")
        assert exposed("nv_inference_count") == int(stats.get("inference_count", 0))
        assert exposed("nv_inference_exec_count") == int(stats.get("execution_count", 0))
        assert exposed("nv_inference_request_duration_us") == (
            (stat("success", "ns") + stat("fail", "ns")) // 1000
        )
        for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
            assert exposed(f"nv_inference_{phase}_duration_us") == stat(phase, "ns") // 1000
        assert exposed("nv_inference_pending_request_count") == 0
    assert "# TYPE nv_inference_request_success counter" in text
    plain = 'nv_inference_request_failure{model="plain",version="1"} '
    (failures,) = [float(x.split()[-1]) for x in text.splitlines() if x.startswith(plain)]
    assert failures >= 1  # the negative input above
    cpu = {x.split()[0]: float(x.split()[1]) for x in text.splitlines() if x.startswith("nv_cpu")}
    assert 0.0 <= cpu["nv_cpu_utilization"] <= 1.0
    assert 0 < cpu["nv_cpu_memory_used_bytes"] < cpu["nv_cpu_memory_total_bytes"]


def test_tritons_latency_summaries_follow_the_requests_when_configured(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    repo = write_repository(tmp_path_factory.mktemp("summary_repo"), ["plain"])
    with serving(
        repo,
        tmp_path_factory,
        "--metrics-config=summary_latencies=true",
        "--metrics-config",
        "counter_latencies=false",
    ) as server:
        client = grpcclient.InferenceServerClient(server.url)
        for _ in range(20):
            client.infer("plain", [grpc_input()])
        samples = scrape(server)
        labels = {"model": "plain", "version": "1"}
        assert value(samples, "nv_inference_request_summary_us_count", **labels) == 20
        statistics = client.get_inference_statistics("plain", as_json=True)["model_stats"][0]
        success_us = int(statistics["inference_stats"]["success"]["ns"]) / 1000
        assert value(samples, "nv_inference_request_summary_us_sum", **labels) == pytest.approx(
            success_us
        )
        quantiles = {
            q: value(samples, "nv_inference_request_summary_us", quantile=q, **labels)
            for q in ("0.5", "0.9", "0.95", "0.99")
        }
        assert 0 < quantiles["0.5"] <= quantiles["0.9"] <= quantiles["0.99"] <= success_us
        infer_p50 = value(
            samples, "nv_inference_compute_infer_summary_us", quantile="0.5", **labels
        )
        assert 0 < infer_p50 < quantiles["0.5"]
        assert not any(name.endswith("_duration_us") for name, _ in samples)


def test_metrics_endpoint_serves_only_metrics(observed: Server) -> None:
    base = observed.metrics_url.removesuffix("/metrics")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(base + "/other", timeout=10)
    assert info.value.code == 404
    request = urllib.request.Request(
        observed.metrics_url, headers={"Accept": "application/openmetrics-text"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        body = response.read()
        assert body.rstrip().endswith(b"# EOF")
        assert b"\nnv_inference_count_total{" in body  # OpenMetrics counters keep the suffix
    gzipped = urllib.request.Request(observed.metrics_url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(gzipped, timeout=10) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        assert b"\nnv_inference_count{" in gzip.decompress(response.read())


def test_request_id_is_echoed_and_on_every_log_line_of_its_request(observed: Server) -> None:
    channel = grpc.insecure_channel(observed.url)
    stub = triton_grpc.GRPCInferenceServiceStub(channel)
    _, call = stub.ServerLive.with_call(
        triton_pb.ServerLiveRequest(), metadata=(("x-request-id", "live-1"),), timeout=10
    )
    assert ("x-request-id", "live-1") in call.trailing_metadata()

    # A request that fails in the model writes two lines: the model's error and the access log.
    client = grpcclient.InferenceServerClient(observed.url)
    with pytest.raises(InferenceServerException, match="negative input"):
        client.infer("plain", [grpc_input(sign=-1.0)], headers={"x-request-id": "req-failing-7"})
    # An HTTP request without an id gets one, in the response header and in its log line.
    body = json.dumps(
        {"inputs": [{"name": "INPUT", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}
    ).encode()
    request = urllib.request.Request(
        f"http://{observed.http_url}/v2/models/plain/infer", data=body, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        generated = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]+", generated), generated

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = observed.log_records()
        mine = [r for r in records if r.get("request_id") == "req-failing-7"]
        if len(mine) >= 2 and any(r.get("request_id") == generated for r in records):
            break
        time.sleep(0.1)
    assert {r["event"] for r in mine} >= {"infer failed"}, mine
    assert any("negative input" in r["event"] for r in mine), mine
    failed = [r for r in records if r["event"] == "infer failed" and r.get("model") == "plain"]
    assert failed and all(r.get("request_id") for r in failed)
    # No line of another request carries this id.
    assert all(r.get("model") in (None, "plain") for r in mine)
    access = [r for r in records if r.get("request_id") == generated]
    assert [(r["event"], r["protocol"], r["outcome"]) for r in access] == [
        ("infer", "http", "success")
    ]
    assert all(r["level"] and r["timestamp"] for r in records)


def test_log_level_changes_at_run_time_through_log_settings(observed: Server) -> None:
    http_client = httpclient.InferenceServerClient(observed.http_url)
    grpc_client = grpcclient.InferenceServerClient(observed.url)
    assert grpc_client.get_log_settings(as_json=True)["settings"]["log_info"]["bool_param"]
    try:
        settings = http_client.update_log_settings({"log_info": False})
        assert settings["log_info"] is False and settings["log_warning"] is True
        http_client.infer("plain", [http_input()], headers={"x-request-id": "quiet-ok"})
        with pytest.raises(InferenceServerException):
            grpc_client.infer(
                "plain", [grpc_input(sign=-1.0)], headers={"x-request-id": "quiet-failed"}
            )
    finally:
        http_client.update_log_settings({"log_info": True})
    http_client.infer("plain", [http_input()], headers={"x-request-id": "loud-ok"})
    time.sleep(0.3)
    ids = {r.get("request_id") for r in observed.log_records()}
    assert "quiet-failed" in ids  # warnings still on
    assert "quiet-ok" not in ids  # info was off
    assert "loud-ok" in ids
    with pytest.raises(InferenceServerException, match="log_format"):
        http_client.update_log_settings({"log_format": "xml"})


def test_dev_mode_logs_for_humans_and_samples_successes_away(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    repo = write_repository(tmp_path_factory.mktemp("dev_repo"), ["plain"])
    with serving(repo, tmp_path_factory, "--dev", "--access-log-rate", "0") as server:
        client = grpcclient.InferenceServerClient(server.url)
        for _ in range(5):
            client.infer("plain", [grpc_input()])
        with pytest.raises(InferenceServerException):
            client.infer("plain", [grpc_input(sign=-1.0)])
        time.sleep(0.3)
        output = server.output()
    assert not any(line.startswith("{") for line in output.splitlines()), output
    assert "ready" in output
    assert output.count("infer failed") == 1
    assert "outcome=internal" in output
    assert "outcome=success" not in output  # rate 0: successes are not access-logged


# Health ----------------------------------------------------------------------------------


class Watcher:
    """Collects the statuses a grpc.health.v1 Watch stream reports, in a thread."""

    def __init__(self, address: str, service: str) -> None:
        self.statuses: list[str] = []
        self.channel = grpc.insecure_channel(address)
        stub = health_pb2_grpc.HealthStub(self.channel)
        self.stream = stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=60)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for response in self.stream:
                self.statuses.append(
                    health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
                )
        except grpc.RpcError:
            pass

    def wait_for(self, status: str, timeout: float = 30, since: int = 0) -> None:
        """Until `status` is reported (at or after position `since` of the stream)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and status not in self.statuses[since:]:
            time.sleep(0.05)
        assert status in self.statuses[since:], self.statuses

    def close(self) -> None:
        self.stream.cancel()
        self.channel.close()


def check(address: str, service: str) -> str:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def test_health_follows_loading_and_draining(tmp_path: Path) -> None:
    repo = write_repository(tmp_path / "repo", ["slow_load", "slow_infer"])
    server = start_server(repo, tmp_path / "log", wait_ready=False)
    try:
        overall = Watcher(server.url, "")
        model = Watcher(server.url, "slow_load")
        # Loading takes 2 s: live at once, ready only after.
        assert check(server.url, "liveness") == "SERVING"
        assert check(server.url, "readiness") == "NOT_SERVING"
        assert not httpclient.InferenceServerClient(server.http_url).is_server_ready()
        overall.wait_for("SERVING")
        model.wait_for("SERVING")
        assert overall.statuses[0] == "NOT_SERVING"
        assert model.statuses[0] == "NOT_SERVING"
        assert check(server.url, "readiness") == "SERVING"
        assert check(server.url, "inference.GRPCInferenceService") == "SERVING"
        assert httpclient.InferenceServerClient(server.http_url).is_server_ready()
        with pytest.raises(grpc.RpcError) as info:
            check(server.url, "no_such_model")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND

        # Drain: readiness drops at SIGTERM while the request in flight still completes.
        client = grpcclient.InferenceServerClient(server.url)
        result: dict[str, Any] = {}
        infer = threading.Thread(
            target=lambda: result.update(out=client.infer("slow_infer", [grpc_input()])),
        )
        infer.start()
        time.sleep(0.5)
        seen = len(overall.statuses)
        server.process.send_signal(signal.SIGTERM)
        overall.wait_for("NOT_SERVING", timeout=10, since=seen)
        infer.join(30)
        assert result["out"].as_numpy("OUTPUT").tolist() == [[2.0] * 4]
        assert server.process.wait(30) == 0
        overall.close()
        model.close()
    finally:
        server.stop()


def test_health_follows_explicit_load_and_unload(tmp_path: Path) -> None:
    repo = write_repository(tmp_path / "repo", ["slow_load"])
    server = start_server(repo, tmp_path / "log", "--model-control-mode", "explicit")
    try:
        overall = Watcher(server.url, "")
        model = Watcher(server.url, "slow_load")
        overall.wait_for("SERVING")  # nothing asked to load yet: ready
        model.wait_for("NOT_SERVING")
        client = grpcclient.InferenceServerClient(server.url)
        loading = threading.Thread(target=lambda: client.load_model("slow_load"))
        loading.start()
        # Strict readiness, as Triton: not ready while a model is loading.
        overall.wait_for("NOT_SERVING", since=1)
        loading.join(30)
        overall.wait_for("SERVING", since=2)
        model.wait_for("SERVING")
        client.unload_model("slow_load")
        model.wait_for("NOT_SERVING", since=2)
        # An unloaded model was asked for by the operator: the server stays ready.
        assert check(server.url, "") == "SERVING"
        assert client.is_server_ready()
        overall.close()
        model.close()
    finally:
        assert server.stop() == 0


def _referenced_metrics(text: str) -> set[str]:
    return set(re.findall(r"\b((?:tensorgate|process|python)_[a-z_]+)\b", text))


def test_dashboard_and_readme_queries_use_only_exported_metrics(observed: Server) -> None:
    exported = {name for name, _ in scrape(observed)}
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "tensorgate-dashboard.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    expressions += [v["query"] for v in dashboard["templating"]["list"] if "query" in v]
    promql = doc_block("docs/pages/observability.md", "promql")
    used = _referenced_metrics("\n".join(expressions)) | _referenced_metrics(promql)
    assert "tensorgate_request_duration_seconds_bucket" in used
    # GPU series exist only where NVML finds a GPU.
    missing = {m for m in used - exported if not m.startswith("tensorgate_gpu_")}
    assert not missing, f"not exported by the server: {sorted(missing)}"


# Traces over OTLP ------------------------------------------------------------------------


class Collector:
    """An OTLP/gRPC trace receiver on loopback: what an OpenTelemetry Collector would get."""

    def __init__(self) -> None:
        from concurrent import futures

        from opentelemetry.proto.collector.trace.v1 import (
            trace_service_pb2,
            trace_service_pb2_grpc,
        )

        self.spans: list[Any] = []
        received = self.spans

        class Receiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        received.extend((resource.resource, span) for span in scope.spans)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def wait_for(self, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.spans) < count:
            time.sleep(0.1)


def test_otlp_exporter_sends_the_span_tree_to_a_collector(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc", reason="needs the otel extra")
    collector = Collector()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
    repo = write_repository(tmp_path_factory.mktemp("otlp_repo"), ["plain"])
    trace_id, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    stream_trace_id = "1af7651916cd43dd8448eb211c80319c"
    try:
        with serving(repo, tmp_path_factory, "--trace-exporter", "otlp") as server:
            client = grpcclient.InferenceServerClient(server.url)
            unary = client.infer(
                "plain", [grpc_input()], headers={"traceparent": f"00-{trace_id}-{parent}-01"}
            )
            streamed: queue.Queue[Any] = queue.Queue()
            client.start_stream(
                lambda result, error: streamed.put(error or result),
                headers={"traceparent": f"00-{stream_trace_id}-{parent}-01"},
            )
            client.async_stream_infer("plain", [grpc_input()])
            answer = streamed.get(timeout=30)
            client.stop_stream()
            collector.wait_for(10)
    finally:
        collector.server.stop(0)
    # A traced request on a stream is answered like any other, and traced like one.
    assert not isinstance(answer, Exception), answer
    np.testing.assert_array_equal(answer.as_numpy("OUTPUT"), unary.as_numpy("OUTPUT"))
    streamed_spans = [s.name for _, s in collector.spans if s.trace_id.hex() == stream_trace_id]
    assert "inference.GRPCInferenceService/ModelStreamInfer" in streamed_spans
    assert "encode" in streamed_spans
    spans = {span.name: span for _, span in collector.spans if span.trace_id.hex() == trace_id}
    root = spans["inference.GRPCInferenceService/ModelInfer"]
    assert root.trace_id.hex() == trace_id and root.parent_span_id.hex() == parent
    for child in ("decode", "queue", "encode", "execute"):
        assert spans[child].trace_id.hex() == trace_id
        assert spans[child].parent_span_id == root.span_id, child
    assert [link.span_id for link in spans["execute"].links] == [root.span_id]
    resource = {a.key: a.value.string_value for a in collector.spans[0][0].attributes}
    assert resource["service.name"] == "tensorgate"


def test_tritons_opentelemetry_url_and_resource_send_spans_over_otlp_http(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="needs the otel extra")
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    received: list[tuple[str, Any, Any]] = []  # (path, resource, span)

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # an OTLP/HTTP collector's one route
            body = self.rfile.read(int(self.headers["content-length"]))
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    received.extend((self.path, resource.resource, span) for span in scope.spans)
            answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    collector = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
    repo = write_repository(tmp_path_factory.mktemp("otlp_http_repo"), ["plain"])
    try:
        with serving(
            repo,
            tmp_path_factory,
            "--trace-config=mode=opentelemetry",
            f"--trace-config=opentelemetry,url=127.0.0.1:{collector.server_port}/v1/traces",
            "--trace-config",
            "opentelemetry,resource=service.name=edge-svc",
            "--trace-config=opentelemetry,resource=pod_name=pod-7",
        ) as server:
            client = grpcclient.InferenceServerClient(server.url)
            client.infer("plain", [grpc_input()])
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(received) < 5:
                time.sleep(0.1)
    finally:
        collector.shutdown()
    names = {span.name for _, _, span in received}
    assert {"inference.GRPCInferenceService/ModelInfer", "execute"} <= names, names
    path, resource, _ = received[0]
    assert path == "/v1/traces"
    attributes = {a.key: a.value.string_value for a in resource.attributes}
    assert attributes["service.name"] == "edge-svc" and attributes["pod_name"] == "pod-7"
