"""Triton's JSON trace file: the timestamps, and at level TENSORS the tensors, of traced requests.

The file is a JSON array in Triton's layout, so tools written for Triton's traces read it: per
trace an object naming the model, version and request id, one holding its timestamps, and at
level TENSORS one per input (`TENSOR_QUEUE_INPUT`) and output (`TENSOR_BACKEND_OUTPUT`).
Timestamps are nanoseconds of the monotonic clock, as Triton's are. tensorgate records:

- `GRPC_WAITREAD_END` / `HTTP_RECV_END`: the server holds the whole request;
- `REQUEST_START`: the request is decoded and handed to the data plane;
- `QUEUE_START`, `COMPUTE_START`, `COMPUTE_INPUT_END`, `COMPUTE_OUTPUT_START`, `COMPUTE_END`:
  queued, and its batch's merge, run and split (absent when no batch ran: a cache hit, an
  ensemble, a decoupled model);
- `REQUEST_END`, `GRPC_SEND_START` / `HTTP_SEND_START`: the answer is back at the transport;
- `GRPC_SEND_END` / `HTTP_SEND_END`: the answer is encoded for the transport to send.

The start of reading a request happens before tensorgate sees it and is not recorded. An
ensemble's steps are traced as requests of their own, with the ensemble's trace id as their
`parent_id`, from `REQUEST_START` to `REQUEST_END`.

With `log_frequency` 0 traces are appended to `trace_file` itself, a complete JSON array after
every write; with N they go N at a time to `trace_file.0`, `trace_file.1`, ... One thread of
its own writes, so the event loop never waits on the disk.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tensorgate.dataplane.types import Array, InferRequest, InferResponse
from tensorgate.observability.trace_settings import TraceSettings
from tensorgate.runners.base import BatchTiming

# Traces kept before they are appended to the file when log_frequency is 0: few enough that
# a crash loses little, enough that the file is not reopened for every request.
_APPEND_EVERY = 64


class TraceFileSink:
    """Collects finished traces and has them written, in order, by one thread."""

    def __init__(self, path: Path, settings: TraceSettings) -> None:
        self.path = path
        self.settings = settings
        self._ids = itertools.count(1)
        self._entries: list[bytes] = []  # JSON objects of the traces not yet written
        self._traces = 0  # traces in _entries
        self._numbered = 0  # the next trace_file.N
        self._appended = False  # trace_file was started by this server
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="trace-file")

    def start(
        self,
        name: str,
        attributes: Mapping[str, Any],
        traceparent: str,
        tracestate: str,
        model: str,
        levels: tuple[str, ...],
    ) -> FileTrace:
        transport = "GRPC" if attributes.get("rpc.system") == "grpc" else "HTTP"
        request_id = str(attributes.get("tensorgate.request_id", ""))
        return FileTrace(self, next(self._ids), model, request_id, transport, levels)

    def next_id(self) -> int:
        return next(self._ids)

    def finished(self, entries: list[bytes], model: str) -> None:
        self._entries.extend(entries)
        self._traces += 1
        frequency = int(self.settings.get(model)["log_frequency"][0])
        if frequency and self._traces >= frequency:
            self._write_numbered()
        elif not frequency and self._traces >= _APPEND_EVERY:
            self._append()

    def _write_numbered(self) -> None:
        path = self.path.with_name(f"{self.path.name}.{self._numbered}")
        self._numbered += 1
        self._writer.submit(_write, path, self._take(), False)

    def _append(self) -> None:
        self._writer.submit(_write, self.path, self._take(), self._appended)
        self._appended = True

    def _take(self) -> list[bytes]:
        entries, self._entries, self._traces = self._entries, [], 0
        return entries

    def shutdown(self) -> None:
        if self._traces:
            if int(self.settings.get()["log_frequency"][0]):
                self._write_numbered()
            else:
                self._append()
        self._writer.shutdown(wait=True)


def _write(path: Path, entries: list[bytes], append: bool) -> None:
    """Write `entries` as a JSON array, or add them to the array already in `path`."""
    body = b",".join(entries)
    if append and path.exists():
        with path.open("r+b") as file:
            file.seek(-1, 2)  # over the closing bracket, which the new entries end with
            file.write(b"," + body + b"]")
    else:  # whole or not at all, and hidden until then from whoever lists FILE.*
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(b"[" + body + b"]")
        partial.replace(path)


class FileTrace:
    """One request's timestamps and tensors, until it ends."""

    __slots__ = (
        "id",
        "levels",
        "model",
        "parent_id",
        "request_id",
        "sink",
        "stamps",
        "tensors",
        "transport",
        "version",
    )

    def __init__(
        self,
        sink: TraceFileSink,
        trace_id: int,
        model: str,
        request_id: str,
        transport: str,
        levels: tuple[str, ...],
        parent_id: int = 0,
    ) -> None:
        self.sink = sink
        self.id = trace_id
        self.parent_id = parent_id  # the ensemble request's trace, for a step's; 0: none
        self.model = model
        self.version = -1
        self.request_id = request_id
        self.transport = transport
        self.levels = levels
        self.stamps: list[tuple[str, int]] = []
        self.tensors: list[bytes] = []

    def child(self, name: str, start_ns: int, end_ns: int) -> None:
        if name == "decode":
            received = "GRPC_WAITREAD_END" if self.transport == "GRPC" else "HTTP_RECV_END"
            self.stamps += [(received, start_ns), ("REQUEST_START", end_ns)]
        elif name == "encode":
            self.stamps += [
                ("REQUEST_END", start_ns),
                (f"{self.transport}_SEND_START", start_ns),
                (f"{self.transport}_SEND_END", end_ns),
            ]

    def decoded(self, request: InferRequest) -> None:
        self.model = request.model_name
        self.request_id = request.id or self.request_id  # Triton's is the request's own id
        if "TENSORS" in self.levels:
            for name, array in request.inputs.items():
                self._tensor("TENSOR_QUEUE_INPUT", name, array, request.datatypes.get(name, ""))

    def answered(self, response: InferResponse) -> None:
        self.version = int(response.model_version) if response.model_version.isdigit() else -1
        if "TENSORS" in self.levels:
            for name, array in response.outputs.items():
                self._tensor("TENSOR_BACKEND_OUTPUT", name, array, response.datatypes[name])

    def _tensor(self, activity: str, name: str, array: Array, datatype: str) -> None:
        if array.dtype == np.object_:
            values = [
                v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                for v in array.ravel()
            ]
        else:
            values = [str(v) for v in array.ravel().tolist()]
        tensor = {
            "name": name,
            "data": ",".join(values),
            "shape": ",".join(str(d) for d in array.shape),
            "dtype": datatype,
        }
        self.tensors.append(orjson.dumps({"id": self.id, "activity": activity, "tensor": tensor}))

    def step(self, model: str) -> FileTrace:
        """A step's request, traced with this one's id as its parent: it is not received or
        sent by a transport, so its timestamps run from REQUEST_START to REQUEST_END."""
        trace = FileTrace(
            self.sink, self.sink.next_id(), model, self.request_id, "", self.levels, self.id
        )
        trace.stamps.append(("REQUEST_START", time.perf_counter_ns()))
        return trace

    def batch(self, timing: BatchTiming, queue_ns: int) -> None:
        self.stamps += [
            ("QUEUE_START", timing.dispatched_ns - queue_ns),
            ("COMPUTE_START", timing.dispatched_ns),
            ("COMPUTE_INPUT_END", timing.merged_ns),
            ("COMPUTE_OUTPUT_START", timing.inferred_ns),
            ("COMPUTE_END", timing.finished_ns),
        ]

    def end(self, error: BaseException | None = None, end_ns: int | None = None) -> None:
        # A step's request (or one no transport encoded an answer for) ends here.
        if self.parent_id or all(name != "REQUEST_END" for name, _ in self.stamps):
            self.stamps.append(("REQUEST_END", time.perf_counter_ns()))
        header: dict[str, object] = {
            "id": self.id,
            "model_name": self.model,
            "model_version": self.version,
            "request_id": self.request_id,
        }
        if self.parent_id:
            header["parent_id"] = self.parent_id
        stamps = [{"name": n, "ns": ns} for n, ns in sorted(self.stamps, key=lambda s: s[1])]
        entries = [orjson.dumps(header), orjson.dumps({"id": self.id, "timestamps": stamps})]
        self.sink.finished(entries + self.tensors, self.model)
