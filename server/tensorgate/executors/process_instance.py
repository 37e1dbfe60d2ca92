"""A model instance in a process of its own (`parameters { key: "execution" value:
{ string_value: "process" } }`, or `--execution process`): model code that holds the GIL,
a pure-Python model above all, cannot then slow the event loop or the other instances.

The instance looks like any backend to the executor (`ProcessInstance.execute`), called on
its instance thread. Tensors cross through two shared-memory slabs that the server creates
and the child maps once: the inputs written into one, the outputs read from the other (the
slabs grow when a batch does not fit; an output that does not fit comes back through the
pipe once, and the output slab grows for next time). Only a few names, shapes and offsets
travel through the pipe. The instance thread waits on the pipe without the GIL.

A child that dies fails the batch it was running with a clear error; the next batch starts
a new child (loading the model again), so the instance heals itself. BYTES tensors travel as
length-prefixed elements; Triton's BLS calls are not available in a process instance.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np
from tensorgate_protos import model_config_pb2 as mc

from tensorgate.backends.base import InstanceContext, ModelSignature
from tensorgate.dataplane.types import Array
from tensorgate.errors import ModelExecutionError, ModelLoadError
from tensorgate.protocol.tensors import deserialize_bytes, serialize_bytes

log = logging.getLogger(__name__)

_SLAB_MIN = 1 << 20
# A tensor in a slab: name, numpy dtype string ("|O" for BYTES), shape, offset, size in bytes.
Placed = tuple[str, str, tuple[int, ...], int, int]


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """What the child needs to create the instance itself (all of it picklable)."""

    model_name: str
    version: int
    model_dir: str
    model_file: str
    config: bytes  # the ModelConfig, serialized
    device: str
    intra_op_threads: int
    index: int


def _place(arrays: dict[str, Array], slab: SharedMemory | None) -> tuple[list[Placed], int]:
    """Lay `arrays` out in `slab` (when it is big enough); returns their places and the
    bytes they need."""
    placed: list[Placed] = []
    offset = 0
    blobs = []
    for name, array in arrays.items():
        if array.dtype == np.object_:
            data: Any = np.frombuffer(serialize_bytes(array), np.uint8)
            dtype = "|O"
        else:
            data = np.ascontiguousarray(array)
            dtype = data.dtype.str
        size = data.nbytes
        placed.append((name, dtype, tuple(array.shape), offset, size))
        blobs.append((offset, data))
        offset += (size + 63) // 64 * 64  # cache-line aligned
    if slab is not None and offset <= slab.size:
        buffer = slab.buf
        assert buffer is not None
        for start, data in blobs:
            buffer[start : start + data.nbytes] = data.reshape(-1).view(np.uint8)
    return placed, offset


def _read(placed: list[Placed], buffer: Any, copy: bool) -> dict[str, Array]:
    arrays: dict[str, Array] = {}
    for name, dtype, shape, offset, size in placed:
        raw = buffer[offset : offset + size]
        if dtype == "|O":
            count = int(np.prod(shape))
            arrays[name] = deserialize_bytes(name, bytes(raw), count).reshape(shape)
        else:
            array = np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)
            arrays[name] = array.copy() if copy else array
    return arrays


def child_main(conn: Connection, spec: ChildSpec) -> None:
    """The instance's process: create the backend, then run batches until told to stop."""
    from tensorgate.backends.registry import resolve_backend

    config = mc.ModelConfig.FromString(spec.config)
    slabs: dict[str, SharedMemory] = {}
    try:
        factory = resolve_backend(config, Path(spec.model_dir) / str(spec.version))
        backend = factory.create(
            InstanceContext(
                spec.model_name,
                spec.version,
                Path(spec.model_dir),
                Path(spec.model_file),
                config,
                spec.device,
                spec.intra_op_threads,
                spec.index,
                None,
            )
        )
        conn.send(("ready", backend.signature()))
    except Exception as exc:
        conn.send(("error", type(exc).__name__, str(exc)))
        return
    while True:
        try:
            message = conn.recv()
        except EOFError:
            break
        if message[0] == "close":
            break
        _, in_name, inputs, out_name = message
        for name in (in_name, out_name):
            if name not in slabs:
                slabs[name] = SharedMemory(name=name)  # the server's; it unlinks them
        try:
            outputs = backend.execute(_read(inputs, slabs[in_name].buf, copy=False))
            placed, needed = _place({k: np.asarray(v) for k, v in outputs.items()}, slabs[out_name])
            if needed <= slabs[out_name].size:
                conn.send(("ok", placed))
            else:  # too big for the slab: through the pipe this once
                conn.send(("big", {k: np.asarray(v) for k, v in outputs.items()}, needed))
        except Exception as exc:
            conn.send(("error", type(exc).__name__, str(exc)))
    backend.close()
    for slab in slabs.values():
        slab.close()


class ProcessInstance:
    """The server's side of one process instance: a Backend to the executor."""

    def __init__(self, context: InstanceContext) -> None:
        self.spec = ChildSpec(
            context.model_name,
            context.version,
            str(context.model_dir),
            str(context.model_file),
            context.config.SerializeToString(),
            context.device,
            context.intra_op_threads,
            context.index,
        )
        self.name = f"{context.model_name}_{context.version}_{context.index}"
        self._lock = threading.Lock()  # one batch at a time, as any instance
        self._inputs: SharedMemory | None = None
        self._outputs: SharedMemory | None = None
        self._process: Any = None
        self._conn: Connection | None = None
        self._signature = self._start()

    def _start(self) -> ModelSignature | None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(
            target=child_main, args=(child, self.spec), name=f"tg-{self.name}", daemon=True
        )
        process.start()
        child.close()
        try:
            reply = parent.recv()
        except EOFError:
            process.join(5)
            raise ModelLoadError(
                f"the process instance {self.name} exited (code {process.exitcode}) while loading"
            ) from None
        if reply[0] == "error":
            process.join(5)
            raise ModelLoadError(f"{reply[1]}: {reply[2]}")
        self._process, self._conn = process, parent
        signature: ModelSignature | None = reply[1]
        return signature

    def signature(self) -> ModelSignature | None:
        return self._signature

    def _slab(self, current: SharedMemory | None, needed: int) -> SharedMemory:
        if current is not None and current.size >= needed:
            return current
        if current is not None:
            current.close()
            current.unlink()
        size = _SLAB_MIN
        while size < needed:
            size *= 2
        return SharedMemory(create=True, size=size)

    def execute(self, inputs: dict[str, Array]) -> dict[str, Array]:
        with self._lock:
            if self._conn is None:  # the last child died: a new one, with the model loaded
                log.warning("restarting process instance %s", self.name)
                self._signature = self._start()
            assert self._conn is not None
            _, needed = _place(inputs, None)
            self._inputs = self._slab(self._inputs, needed)
            self._outputs = self._slab(self._outputs, _SLAB_MIN)
            placed, _ = _place(inputs, self._inputs)
            try:
                self._conn.send(("run", self._inputs.name, placed, self._outputs.name))
                reply = self._conn.recv()
            except (EOFError, OSError, BrokenPipeError):
                code = self._died()
                raise ModelExecutionError(
                    f"its process instance {self.name} died (exit code {code}) while running "
                    "the batch; a new one starts with the next batch"
                ) from None
            if reply[0] == "ok":
                return _read(reply[1], self._outputs.buf, copy=True)
            if reply[0] == "big":
                self._outputs = self._slab(self._outputs, reply[2])
                outputs: dict[str, Array] = reply[1]
                return outputs
            raise ModelExecutionError(f"{reply[1]}: {reply[2]}")

    def _died(self) -> int | None:
        process, self._process = self._process, None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if process is None:
            return None
        process.join(5)
        return int(process.exitcode) if process.exitcode is not None else None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(OSError):
                    self._conn.send(("close",))
            process = self._process
            self._died()
            if process is not None and process.is_alive():
                process.kill()
            for slab in (self._inputs, self._outputs):
                if slab is not None:
                    slab.close()
                    slab.unlink()
            self._inputs = self._outputs = None
