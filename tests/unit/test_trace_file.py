"""Triton's JSON trace file as traces finish: appended in place, or N traces per numbered file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tensorgate.dataplane.types import InferRequest
from tensorgate.observability.trace_file import TraceFileSink
from tensorgate.observability.trace_settings import TraceSettings


def _finish(sink: TraceFileSink, model: str, traces: int) -> None:
    for _ in range(traces):
        trace = sink.start("infer", {"rpc.system": "grpc"}, "", "", model, ("TIMESTAMPS",))
        trace.decoded(InferRequest(model, inputs={"X": np.zeros(2, np.float32)}))
        trace.child("decode", 10, 20)
        trace.end()


def test_appended_traces_leave_a_whole_json_array_after_every_write(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    sink = TraceFileSink(path, TraceSettings(trace_file=str(path)))
    _finish(sink, "m", 64)  # one write's worth
    sink._writer.submit(lambda: None).result()  # the writer has caught up
    assert len(json.loads(path.read_bytes())) == 2 * 64
    _finish(sink, "m", 70)
    sink._writer.submit(lambda: None).result()
    written = json.loads(path.read_bytes())
    assert len(written) == 2 * 128
    sink.shutdown()
    written = json.loads(path.read_bytes())
    ids = [e["id"] for e in written if "model_name" in e]
    assert ids == list(range(1, 135))
    stamps = written[1]["timestamps"]
    assert stamps[:2] == [
        {"name": "GRPC_WAITREAD_END", "ns": 10},
        {"name": "REQUEST_START", "ns": 20},
    ]
    # No transport encoded an answer for it: it ends where its trace ended.
    assert [s["name"] for s in stamps[2:]] == ["REQUEST_END"]


def test_a_log_frequency_writes_that_many_traces_per_numbered_file(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    settings = TraceSettings(trace_file=str(path), log_frequency=3)
    sink = TraceFileSink(path, settings)
    _finish(sink, "m", 7)
    sink.shutdown()  # the last one goes to a numbered file of its own
    sizes = [len(json.loads(path.with_name(f"trace.json.{i}").read_bytes())) for i in range(3)]
    assert sizes == [6, 6, 2]
    assert not path.exists() and not path.with_name("trace.json.3").exists()


def test_each_worker_process_writes_a_trace_file_of_its_own(tmp_path: Path) -> None:
    from tensorgate.app import _tracing
    from tensorgate.settings import Settings
    from tensorgate.workers.role import WorkerRole

    settings = Settings(model_repository=[tmp_path], trace_file=tmp_path / "trace.json")
    alone = _tracing(settings, None)
    worker = _tracing(settings, WorkerRole(1, 2, tmp_path))
    assert alone is not None and worker is not None
    assert isinstance(alone.sink, TraceFileSink) and isinstance(worker.sink, TraceFileSink)
    assert (alone.sink.path.name, worker.sink.path.name) == ("trace.json", "trace.json.worker1")
    for tracing in (alone, worker):
        tracing.shutdown()
    assert _tracing(Settings(model_repository=[tmp_path]), None) is None  # nowhere to trace to
