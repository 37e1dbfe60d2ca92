"""Traces, seen through OpenTelemetry's in-memory exporter.

The server runs in this process (the exporter must be in-process too) on loopback ports, and
is called over real HTTP and gRPC. The span tree of a request is: a server span, under the
client's traceparent when one is sent, with decode, queue and encode children; each batch is
one `execute` span linked to every request in it.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra: pip install '.[otel]'")

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tensorgate.app import Servers
from tensorgate.observability.trace_settings import TraceSettings
from tensorgate.observability.tracing import SpanSink, Tracing
from tensorgate.settings import Settings
from tensorgate_protos import grpc_service_pb2 as pb
from tensorgate_protos import grpc_service_pb2_grpc as pb_grpc

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
MODEL = """
class Model:
    def execute(self, inputs):
        return {"OUTPUT": inputs["INPUT"] * 2}
"""


def _repository(root: Path) -> Path:
    (root / "batched" / "1").mkdir(parents=True)
    (root / "batched" / "1" / "model.py").write_text(MODEL)
    (root / "batched" / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 8\n'
        "dynamic_batching { max_queue_delay_microseconds: 300000 }\n"
        'input [{ name: "INPUT", data_type: TYPE_FP32, dims: [4] }]\n'
        'output [{ name: "OUTPUT", data_type: TYPE_FP32, dims: [4] }]\n'
    )
    return root


def _http_infer(port: int, headers: dict[str, str]) -> list[Any]:
    body = json.dumps(
        {"inputs": [{"name": "INPUT", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}
    ).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/batched/infer",
        data=body,
        method="POST",
        headers=headers,
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return list(json.loads(response.read())["outputs"][0]["data"])


def _grpc_infer(port: int, metadata: tuple[tuple[str, str], ...]) -> pb.ModelInferResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = pb.ModelInferRequest(model_name="batched")
        request.inputs.add(name="INPUT", datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return stub.ModelInfer(request, metadata=metadata, timeout=10)  # type: ignore[no-any-return]


async def _serve_and_call(settings: Settings, tracing: Tracing) -> None:
    servers = Servers(settings, tracing=tracing)
    ports = await servers.start()
    try:
        assert not await servers.load()
        traced = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "x-request-id": "traced-1"}
        outputs = await asyncio.gather(
            asyncio.to_thread(_http_infer, ports["http"], traced),
            asyncio.to_thread(_http_infer, ports["http"], {}),
            asyncio.to_thread(_http_infer, ports["http"], {}),
        )
        assert outputs == [[2.0] * 4] * 3
        metadata = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
        await asyncio.to_thread(_grpc_infer, ports["grpc"], metadata)
    finally:
        await servers.stop(1)


def test_traces_show_the_request_tree_and_the_batch_linking_requests(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    settings = Settings(
        model_repository=[_repository(tmp_path / "repo")],
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=-1,
        trace_exporter="console",
    )
    tracing = Tracing(TraceSettings(files=False), SpanSink("memory", exporter))
    asyncio.run(_serve_and_call(settings, tracing))
    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    http = [s for s in spans if s.name == "POST /v2/models/{model_name}/infer"]
    assert len(http) == 3
    grpc_span = next(s for s in spans if s.name == "inference.GRPCInferenceService/ModelInfer")

    # The client's traceparent makes the server span a child of the client's span.
    traced = next(s for s in http if s.attributes["tensorgate.request_id"] == "traced-1")
    assert f"{traced.context.trace_id:032x}" == TRACE_ID
    assert f"{traced.parent.span_id:016x}" == PARENT_ID
    assert f"{grpc_span.context.trace_id:032x}" == TRACE_ID
    others = [s for s in http if s is not traced]
    assert all(f"{s.context.trace_id:032x}" != TRACE_ID and s.parent is None for s in others)

    for server_span in [*http, grpc_span]:
        children = sorted(
            s.name for s in spans if s.parent and s.parent.span_id == server_span.context.span_id
        )
        assert {"decode", "queue", "encode"} <= set(children), children
        assert server_span.attributes["tensorgate.model"] == "batched"
        assert server_span.status.is_ok

    # The three HTTP requests rode in one batch: one execute span linked to all three.
    executes = [s for s in spans if s.name == "execute"]
    batch = next(s for s in executes if s.attributes["tensorgate.batch.rows"] == 3)
    linked = {link.context.span_id for link in batch.links}
    assert linked == {s.context.span_id for s in http}
    assert batch.parent is not None and by_id[batch.parent.span_id] in http
    assert batch.attributes["tensorgate.batch.requests"] == 3
    # Spans nest in time: queue ends where the batch starts.
    for server_span in http:
        queue = next(
            s
            for s in spans
            if s.name == "queue" and s.parent and s.parent.span_id == server_span.context.span_id
        )
        assert queue.end_time == batch.start_time
        assert server_span.start_time <= queue.start_time <= server_span.end_time


def test_an_ensemble_step_is_a_span_under_its_request() -> None:
    exporter = InMemorySpanExporter()
    sink = SpanSink("memory", exporter)
    trace = sink.start("infer", {}, "", "", "pipeline", ("TIMESTAMPS",))
    assert trace is not None
    step = trace.step("preprocess")
    step.end()
    trace.end()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["step preprocess"].parent.span_id == spans["infer"].context.span_id
    assert spans["step preprocess"].attributes["tensorgate.model"] == "preprocess"
