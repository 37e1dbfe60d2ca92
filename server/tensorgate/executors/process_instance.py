"""A model instance in a process of its own (`parameters { key: "execution" value:
{ string_value: "process" } }`, or `--execution process`): model code that holds the GIL,
a pure-Python model above all, cannot then slow the event loop or the other instances.

The instance looks like any backend to the executor (`ProcessInstance.execute`, and
`execute_requests` for Triton Python-backend models), called on its instance thread.
Tensors cross through two shared-memory slabs that the server creates and the child maps
once: the inputs written into one, the outputs read from the other (the slabs grow when a
batch does not fit; an output that does not fit comes back through the pipe once, and the
output slab grows for next time). Only names, shapes and offsets travel through the pipe.
The instance thread waits on the pipe without the GIL.

The pipe is also the control channel for model code's calls to other models (Triton's BLS):
the child sends the request, the instance thread submits it to the server's data plane and
sends the answer back (or each response of a decoupled model, in order) while the batch that
made the call is still running. Calls from one batch may be in flight together
(`async_exec` with `asyncio.gather`). BLS tensors travel pickled through the pipe: they are
model-to-model traffic, usually small, and it keeps the slabs for the batch itself.

A decoupled model's instance runs no batches: `execute_decoupled` sends the request to the
child and returns, and a reader thread forwards each response the child sends to the
stream's channel. The child keeps each stream's window (it sends on only when the server
says the client has read a response) and stops a stream whose client has left.

A sequence batch for a model that takes its requests one by one (a Triton Python model under
the sequence batcher) travels as one "steps" message: the tensors in the slab, each
request's correlation id, flags and, for a decoupled model, the stream its responses go to
(a request rescheduled by an iterative model keeps its stream from execution to execution).
The child answers which requests were rescheduled beside the outputs.

A child that dies fails the batch (or the streams) it was running with a clear error; the
next batch starts a new child (loading the model again), so the instance heals itself. BYTES
tensors travel as length-prefixed elements.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing
import os
import pickle
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection, wait
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np
from tensorgate_protos import model_config_pb2 as mc

from tensorgate.backends.base import InstanceContext, ModelSignature, SequenceStep, StepOutcome
from tensorgate.dataplane.calls import STREAM_END, ModelCalls
from tensorgate.dataplane.types import Array, InferRequest, InferResponse
from tensorgate.errors import (
    ErrorKind,
    FailedPrecondition,
    InvalidArgument,
    ModelExecutionError,
    ModelLoadError,
    TensorgateError,
    Unavailable,
)
from tensorgate.executors.instance_threads import thread_event_loop, wait_for_room
from tensorgate.executors.model_env import ModelEnv, entry, spawning
from tensorgate.protocol.tensors import deserialize_bytes, serialize_bytes

log = logging.getLogger(__name__)

_SLAB_MIN = 1 << 20
# Responses a decoupled request may have in flight ahead of its reader (the decoupled
# runner's window for models in threads).
_WINDOW = 4
_DONE = object()
# A tensor in a slab: name, numpy dtype string ("|O" for BYTES), shape, offset, size in bytes.
Placed = tuple[str, str, tuple[int, ...], int, int]
# An exception, portable between the processes: its type's name, its ErrorKind's name (""
# when it is not a TensorgateError) and its message.
Failure = tuple[str, str, str]
# A sequence step in a "steps" message: the request (its tensors in the slab), its
# correlation id, its flags, and its stream (0: not decoupled).
StepMeta = tuple[InferRequest, int | str, int, int]


def _failure(exc: BaseException) -> Failure:
    if isinstance(exc, TensorgateError):
        return (type(exc).__name__, exc.kind.name, exc.message)
    return (type(exc).__name__, "", str(exc))


def _raised(failure: Failure) -> TensorgateError:
    name, kind, message = failure
    if kind:
        return TensorgateError(message, ErrorKind[kind])
    return ModelExecutionError(f"{name}: {message}")


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
    nice: int  # added to the child's niceness


Blob = tuple[int, Any]  # where in the slab, and the bytes (a uint8-viewable array)


def _layout(
    parts: Sequence[dict[str, Array] | Failure],
) -> tuple[list[list[Placed] | Failure], list[Blob], int]:
    """Where each part's arrays go in a slab, one after the other: their places (failures
    passed through), the bytes to write there, and the slab size they need."""
    placed: list[list[Placed] | Failure] = []
    blobs: list[Blob] = []
    offset = 0
    for part in parts:
        if not isinstance(part, dict):
            placed.append(part)
            continue
        places: list[Placed] = []
        for name, array in part.items():
            if array.dtype == np.object_:
                data: Any = np.frombuffer(serialize_bytes(array), np.uint8)
                dtype = "|O"
            else:
                data = np.ascontiguousarray(array)
                dtype = data.dtype.str
            size = data.nbytes
            places.append((name, dtype, tuple(array.shape), offset, size))
            blobs.append((offset, data))
            offset += (size + 63) // 64 * 64  # cache-line aligned
        placed.append(places)
    return placed, blobs, offset


def _write(blobs: list[Blob], slab: SharedMemory) -> None:
    buffer = slab.buf
    assert buffer is not None
    for start, data in blobs:
        buffer[start : start + data.nbytes] = data.reshape(-1).view(np.uint8)


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


class _ChildChannel:
    """The child's end of the pipe. One reader thread sorts what arrives: batches to run
    (and "close") for the main thread, answers to the model-code calls waiting for them."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.batches: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._send_lock = threading.Lock()
        self._waiting: dict[int, queue.SimpleQueue[tuple[str, Any]]] = {}
        self._ids = itertools.count(1)
        self.streams: dict[int, _ChildSender] = {}  # decoupled requests still answering
        threading.Thread(target=self._sort, name="tg-channel", daemon=True).start()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self.conn.send(message)

    def open_call(self) -> tuple[int, queue.SimpleQueue[tuple[str, Any]]]:
        call_id = next(self._ids)
        answers: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._waiting[call_id] = answers
        return call_id, answers

    def close_call(self, call_id: int) -> None:
        self._waiting.pop(call_id, None)

    def _sort(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            if message[0] in ("run", "steps", "open", "close"):
                self.batches.put(message)
                continue
            if message[0] in ("room", "cancel-stream"):
                sender = self.streams.get(message[1])
                if sender is not None:
                    sender.room() if message[0] == "room" else sender.cancel()
                continue
            kind, call_id, payload = message
            answers = self._waiting.get(call_id)
            if answers is not None:  # else its caller stopped waiting: dropped
                answers.put((kind, payload))
        gone = _failure(Unavailable("the server closed the process instance's channel"))
        for answers in list(self._waiting.values()):
            answers.put(("error", gone))
        for sender in list(self.streams.values()):
            sender.cancel()
        self.batches.put(("close",))


class _ChildSender:
    """A decoupled request's response sender in the child (the `ResponseSender` the model
    sees): responses go through the pipe, at most `_WINDOW` ahead of the client's reader,
    whose server side grants room as it reads."""

    def __init__(self, channel: _ChildChannel, stream_id: int) -> None:
        self._channel = channel
        self._id = stream_id
        self._room = threading.Semaphore(_WINDOW)
        self._cancelled = threading.Event()
        self._final_sent = False

    def send(self, outputs: dict[str, Array] | None, final: bool) -> None:
        if self._final_sent:
            raise InvalidArgument("the response sender is closed: the final flag was sent")
        if not wait_for_room(self._room, self._cancelled):  # the client is gone
            return
        self._final_sent = final
        if final:
            self._channel.streams.pop(self._id, None)
        portable = None if outputs is None else {k: np.asarray(v) for k, v in outputs.items()}
        self._channel.send(("respond", self._id, portable, final))

    def fail(self, error: BaseException) -> None:
        """The stream ends with `error` (the model raised while producing it)."""
        self._final_sent = True
        self._channel.streams.pop(self._id, None)
        if not self._cancelled.is_set():
            self._channel.send(("stream-failed", self._id, _failure(error)))

    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()

    def room(self) -> None:
        self._room.release()

    def cancel(self) -> None:
        self._cancelled.set()
        self._channel.streams.pop(self._id, None)


def _drain(source: Any, sender: _ChildSender, steps: threading.Lock) -> None:
    """A pull-style decoupled model's responses (a dict, a generator or an async generator),
    pushed through `sender` from a thread of the child. Steps of every stream take `steps`,
    so the instance runs one at a time, as on an instance thread."""
    try:
        if isinstance(source, dict):
            sender.send(source, False)
        else:
            while not sender.is_cancelled():
                with steps:
                    if hasattr(source, "__anext__"):
                        try:
                            item = thread_event_loop().run_until_complete(source.__anext__())
                        except StopAsyncIteration:
                            break
                    else:
                        item = next(source, _DONE)
                        if item is _DONE:
                            break
                if not isinstance(item, dict):
                    kind = type(item).__name__
                    raise ModelExecutionError(
                        f"a decoupled model yields dicts of output arrays, got {kind}"
                    )
                sender.send(item, False)
        if not sender.is_cancelled():
            sender.send(None, True)
    except Exception as exc:
        sender.fail(exc)
    finally:
        with contextlib.suppress(Exception), steps:  # the model's cleanup must not kill us
            if hasattr(source, "aclose"):
                thread_event_loop().run_until_complete(source.aclose())
            elif hasattr(source, "close"):
                source.close()


class _ChildCalls:
    """Model code's calls to other models, from a process instance: over the channel to the
    server's data plane (the `Caller` that Triton's `InferenceRequest.exec` uses)."""

    def __init__(self, channel: _ChildChannel) -> None:
        self._channel = channel

    @property
    def channel(self) -> _ChildChannel:
        return self._channel

    def cancelled(self, index: int) -> bool:
        """Whether the client of the running batch's `index`-th request stopped waiting."""
        call_id, answers = self._channel.open_call()
        try:
            self._channel.send(("cancelled", call_id, index))
            answer, payload = answers.get()
        finally:
            self._channel.close_call(call_id)
        return answer == "answer" and bool(payload)

    def infer(self, request: InferRequest, timeout_s: float | None = None) -> InferResponse:
        call_id, answers = self._channel.open_call()
        try:
            self._channel.send(("call", call_id, request))
            try:
                kind, payload = answers.get(timeout=timeout_s)
            except queue.Empty:
                self._channel.send(("cancel", call_id))
                raise TensorgateError(
                    f"the call to model '{request.model_name}' took over {timeout_s} s",
                    ErrorKind.DEADLINE_EXCEEDED,
                ) from None
        finally:
            self._channel.close_call(call_id)
        if kind == "error":
            raise _raised(payload)
        response: InferResponse = payload
        return response

    def control(self, operation: str, *arguments: Any) -> Any:
        return self._ask("control", operation, arguments)

    def metrics(self, operation: str, *arguments: Any) -> Any:
        if operation in ("increment", "set", "observe"):  # checked already: nothing to await
            self._channel.send(("metric", 0, (operation, arguments)))
            return None
        return self._ask("metric", operation, arguments)

    def _ask(self, kind: str, operation: str, arguments: tuple[Any, ...]) -> Any:
        """Send one operation to the server's side and wait for its answer (or error)."""
        call_id, answers = self._channel.open_call()
        try:
            self._channel.send((kind, call_id, (operation, arguments)))
            answer, payload = answers.get()
        finally:
            self._channel.close_call(call_id)
        if answer == "error":
            raise _raised(payload)
        return payload

    async def infer_async(self, request: InferRequest) -> InferResponse:
        # A thread per waiting call lets `asyncio.gather` keep several in flight.
        return await asyncio.get_running_loop().run_in_executor(None, self.infer, request)

    def stream(self, request: InferRequest) -> Iterator[InferResponse]:
        call_id, answers = self._channel.open_call()
        ended = False
        try:
            self._channel.send(("stream", call_id, request))
            while True:
                kind, payload = answers.get()
                if kind == "item":
                    yield payload
                    continue
                ended = True
                if kind == "error":
                    raise _raised(payload)
                return
        finally:
            self._channel.close_call(call_id)
            if not ended:  # left early: the server stops the stream
                self._channel.send(("cancel", call_id))


def _as_parts(results: Sequence[Any]) -> list[dict[str, Array] | Failure]:
    return [
        _failure(r) if isinstance(r, BaseException) else {k: np.asarray(v) for k, v in r.items()}
        for r in results
    ]


def _open_stream(
    backend: Any, channel: _ChildChannel, stream_id: int, request: InferRequest, steps: Any
) -> None:
    """Start a decoupled request: push-style models answer through the sender from their
    own threads; pull-style ones are drained by a thread of ours."""
    sender = _ChildSender(channel, stream_id)
    channel.streams[stream_id] = sender
    try:
        execute_decoupled = getattr(backend, "execute_decoupled", None)
        if execute_decoupled is not None:
            execute_decoupled(request, sender)
            return
        with steps:
            source = backend.execute(request.inputs)
    except Exception as exc:
        sender.fail(exc)
        return
    threading.Thread(target=_drain, args=(source, sender, steps), daemon=True).start()


@dataclass(frozen=True, slots=True)
class BatchTrace:
    """In the child, the trace of the running batch's `index`-th request, which stays in
    the server: a call its model code makes under it is traced there."""

    index: int


@dataclass(frozen=True, slots=True)
class StreamTrace:
    """In the child, the trace of the decoupled request answering on stream `stream_id`."""

    stream_id: int


def _portable(request: InferRequest | None, index: int) -> InferRequest | None:
    """What of the batch's `index`-th request crosses the pipe beside its tensors (those go
    through the slab): its id, parameters, requested outputs and whether it is traced."""
    if request is None:
        return None
    trace = BatchTrace(index) if request.trace is not None else None
    return dataclasses.replace(request, inputs={}, trace=trace, output_regions=None, cancelled=None)


def _steps_of(
    channel: _ChildChannel, inputs: list[dict[str, Array]], metas: list[StepMeta]
) -> list[SequenceStep]:
    """The steps of a "steps" message; a decoupled step answers through its stream's sender,
    the same one on every execution of a rescheduled request."""
    steps = []
    for arrays, (request, corrid, flags, stream_id) in zip(inputs, metas, strict=True):
        request.inputs = arrays
        sender = None
        if stream_id:
            sender = channel.streams.get(stream_id)
            if sender is None:
                sender = channel.streams[stream_id] = _ChildSender(channel, stream_id)
        steps.append(SequenceStep(arrays, request, corrid, flags, sender))
    return steps


def _outcome_parts(
    outcomes: list[StepOutcome],
) -> tuple[list[dict[str, Array] | Failure], list[tuple[bool, bool]]]:
    """Outcomes as what crosses the pipe: outputs (or failures) for the slab, and for each
    whether it was rescheduled and whether it has outputs."""
    parts: list[dict[str, Array] | Failure] = []
    shapes = []
    for outcome in outcomes:
        if outcome.error is not None:
            parts.append(_failure(outcome.error))
        else:
            parts.append({k: np.asarray(v) for k, v in (outcome.outputs or {}).items()})
        shapes.append((outcome.rescheduled, outcome.outputs is not None))
    return parts, shapes


def _execute(
    backend: Any,
    calls: _ChildCalls,
    message: tuple[Any, ...],
    inputs: list[dict[str, Array]],
    steps_lock: threading.Lock,
) -> tuple[list[dict[str, Array] | Failure], list[tuple[bool, bool]]]:
    """In the child: run a "run" or "steps" message's batch, whose tensors are `inputs`.
    Each request's `cancelled` asks the server about the request at its place in the batch."""
    if message[0] == "steps":
        steps = _steps_of(calls.channel, inputs, message[4])
        for index, step in enumerate(steps):
            step.request.cancelled = partial(calls.cancelled, index)
        with steps_lock:
            return _outcome_parts(backend.execute_steps(steps, message[5]))
    if getattr(backend, "execute_requests", None) is None:
        return _as_parts([backend.execute(inputs[0])]), []
    sent = message[4] or ()
    for index, (request, arrays) in enumerate(zip(sent, inputs, strict=False)):
        if request is not None:
            request.inputs = arrays
            request.cancelled = partial(calls.cancelled, index)
    return _as_parts(backend.execute_requests(inputs, sent)), []


def child_main(conn: Connection, spec: ChildSpec | bytes) -> None:
    """The instance's process: create the backend, then run batches until told to stop.
    `spec` comes pickled into a model's own environment, unpickled once its path is set."""
    from tensorgate.backends.registry import resolve_backend

    if isinstance(spec, bytes):
        spec = pickle.loads(spec)
        assert isinstance(spec, ChildSpec)
    if spec.nice:
        os.nice(spec.nice)
    config = mc.ModelConfig.FromString(spec.config)
    channel = _ChildChannel(conn)
    calls = _ChildCalls(channel)
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
                calls,
            )
        )
        separate = getattr(backend, "execute_requests", None) is not None
        stepped = getattr(backend, "execute_steps", None) is not None
        channel.send(("ready", backend.signature(), separate, stepped))
    except Exception as exc:
        channel.send(("error", type(exc).__name__, str(exc)))
        return
    steps_lock = threading.Lock()
    while (message := channel.batches.get())[0] != "close":
        if message[0] == "open":
            _open_stream(backend, channel, message[1], message[2], steps_lock)
            continue
        in_name, requests, out_name = message[1:4]
        for name in (in_name, out_name):
            if name not in slabs:
                slabs[name] = SharedMemory(name=name)  # the server's; it unlinks them
        try:
            inputs = [_read(places, slabs[in_name].buf, copy=False) for places in requests]
            parts, shapes = _execute(backend, calls, message, inputs, steps_lock)
            placed, blobs, needed = _layout(parts)
            if needed <= slabs[out_name].size:
                _write(blobs, slabs[out_name])
                channel.send(("ok", placed, shapes))
            else:  # too big for the slab: through the pipe this once
                channel.send(("big", parts, needed, shapes))
        except Exception as exc:
            channel.send(("failed", _failure(exc)))
    backend.close()
    for slab in slabs.values():
        slab.close()


class ProcessInstance:
    """The server's side of one process instance: a Backend to the executor."""

    def __init__(
        self, context: InstanceContext, nice: int = 0, env: ModelEnv | None = None
    ) -> None:
        """`nice`: added to the child's niceness, so that the server's event loop, whose
        work per request is short and waited on, gets a shared core before model code.
        `env`: the model's own environment (EXECUTION_ENV_PATH), whose interpreter runs it."""
        self._env = env
        self.spec = ChildSpec(
            context.model_name,
            context.version,
            str(context.model_dir),
            str(context.model_file),
            context.config.SerializeToString(),
            context.device,
            context.intra_op_threads,
            context.index,
            nice,
        )
        self.name = f"{context.model_name}_{context.version}_{context.index}"
        self._calls = context.calls if isinstance(context.calls, ModelCalls) else None
        self._lock = threading.Lock()  # one batch at a time, as any instance
        self._inputs: SharedMemory | None = None
        self._outputs: SharedMemory | None = None
        self._process: Any = None
        self._conn: Connection | None = None
        # Model code's calls in flight, and what is to be sent to the child about them: the
        # server's loop fills the outbox and wakes the instance thread through the pipe.
        self._open_calls: dict[int, concurrent.futures.Future[Any]] = {}
        self._outbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        # Triton Python-backend models take a batch's requests one by one, as in a thread,
        # and a sequence batch's with their flags (execute_steps).
        self.execute_requests: Any = None
        self.execute_steps: Any = None
        # A decoupled instance's batch of steps waits here for its reply from the reader.
        self._step_reply: queue.SimpleQueue[tuple[Any, ...] | None] | None = None
        # The requests of the batch in the child, which its model code may ask about.
        self._batch: Sequence[InferRequest | None] = ()
        # A decoupled model's instance: a reader thread takes everything the child sends and
        # forwards each response to its stream's channel (no batches run).
        self._decoupled = context.config.model_transaction_policy.decoupled
        self._streams: dict[int, Any] = {}
        self._stream_ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._signature = self._start()

    def _start(self) -> ModelSignature | None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        env = self._env
        # In its own environment the spec travels pickled: unpickling it imports this module.
        spec = self.spec if env is None else pickle.dumps(self.spec)
        target, args = entry(env, child_main, child, spec)
        process = context.Process(target=target, args=args, name=f"tg-{self.name}", daemon=True)
        with spawning(env):
            process.start()
        child.close()
        try:
            # Model code may define its metrics while it loads, and wait for the answer.
            while (reply := parent.recv())[0] == "metric":
                self._metric(reply[1], reply[2], parent.send)
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
        self.execute_requests = self._execute_requests if reply[2] else None
        self.execute_steps = self._execute_steps if reply[3] else None
        if self._decoupled:
            # Each child's streams in a dict of their own: the reader of a dead child fails
            # its streams, never those of the child that replaced it.
            self._streams = {}
            threading.Thread(
                target=self._read_streams,
                args=(parent, self._streams),
                name=f"tg-{self.name}-streams",
                daemon=True,
            ).start()
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
        (outputs,) = self._run([inputs])
        if isinstance(outputs, Exception):
            raise outputs
        return outputs

    def _execute_requests(
        self, batch: list[dict[str, Array]], sent: Sequence[InferRequest | None] = ()
    ) -> list[dict[str, Array] | Exception]:
        return self._run(batch, sent)

    def _run(
        self, batch: list[dict[str, Array]], sent: Sequence[InferRequest | None] = ()
    ) -> list[dict[str, Array] | Exception]:
        with self._lock:
            self._live_child()
            self._batch = sent
            portable = [_portable(r, i) for i, r in enumerate(sent)] if sent else None
            parts, _ = self._exchange(batch, ("run", portable))
            return parts

    def _execute_steps(self, steps: list[SequenceStep], iterative: bool) -> list[StepOutcome]:
        """A sequence batch in the child, each request with its flags; a decoupled step's
        responses come back through the reader thread to its channel."""
        with self._lock:
            self._live_child()  # first: a new child comes with new streams
            self._batch = [step.request for step in steps]
            metas: list[StepMeta] = []
            for index, step in enumerate(steps):
                portable = _portable(step.request, index)
                assert portable is not None
                stream = self._stream_of(step.sender) if step.sender is not None else 0
                metas.append((portable, step.correlation_id, step.flags, stream))
            parts, shapes = self._exchange([s.inputs for s in steps], ("steps", metas, iterative))
        return [
            StepOutcome(None, part, rescheduled)
            if isinstance(part, Exception)
            else StepOutcome(part if has_outputs else None, rescheduled=rescheduled)
            for part, (rescheduled, has_outputs) in zip(parts, shapes, strict=True)
        ]

    def _await_steps(self, message: tuple[Any, ...]) -> tuple[Any, ...]:
        """Send a batch of steps to a decoupled instance's child and wait for the reader
        thread to hand over the reply; EOFError when the child dies first."""
        waiting: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._step_reply = waiting
        try:
            self._send_quietly(message)
            while True:
                try:
                    reply = waiting.get(timeout=1.0)
                except queue.Empty:  # the reader may have ended before it saw the wait
                    if self._process is not None and self._process.is_alive():
                        continue
                    reply = None
                if reply is None:
                    raise EOFError
                return reply
        finally:
            self._step_reply = None

    def _stream_of(self, channel: Any) -> int:
        """The id a decoupled step's responses travel under: its channel's, kept while the
        request runs again (rescheduled), a new one for a new request."""
        streams = self._streams
        stream_id: int | None = channel.route
        if stream_id is None or streams.get(stream_id) is not channel:
            stream_id = channel.route = next(self._stream_ids)
            streams[stream_id] = channel
            channel.on_read = lambda: self._send_quietly(("room", stream_id))
            channel.on_cancel = lambda: self._cancel_stream(streams, stream_id)
        return stream_id

    def _exchange(
        self, batch: list[dict[str, Array]], head: tuple[Any, ...]
    ) -> tuple[list[dict[str, Array] | Exception], list[tuple[bool, bool]]]:
        """Under the lock: the batch's tensors into the slab, `head` and the slabs' names to
        the child, its outputs (or errors) back, with the steps' shapes."""
        assert self._conn is not None
        requests, blobs, needed = _layout(batch)
        self._inputs = self._slab(self._inputs, needed)
        self._outputs = self._slab(self._outputs, _SLAB_MIN)
        _write(blobs, self._inputs)
        message = (head[0], self._inputs.name, requests, self._outputs.name, *head[1:])
        try:
            if self._decoupled:  # the reader thread reads the reply and hands it over
                reply = self._await_steps(message)
            else:
                self._conn.send(message)
                reply = self._reply(self._conn)
        except (EOFError, OSError):
            code = self._died()
            raise ModelExecutionError(
                f"its process instance {self.name} died (exit code {code}) while running "
                "the batch; a new one starts with the next batch"
            ) from None
        if reply[0] == "ok":
            buffer = self._outputs.buf
            return [
                _read(part, buffer, copy=True) if isinstance(part, list) else _raised(part)
                for part in reply[1]
            ], reply[2]
        if reply[0] == "big":
            self._outputs = self._slab(self._outputs, reply[2])
            return [part if isinstance(part, dict) else _raised(part) for part in reply[1]], reply[
                3
            ]
        raise _raised(reply[1])

    def _live_child(self) -> None:
        """Under the lock: start a new child (the model loaded again) if the last one died."""
        alive = self._process is not None and self._process.is_alive()
        if self._conn is None or (self._decoupled and not alive):
            code = self._died()
            log.warning("restarting process instance %s (exit code %s)", self.name, code)
            self._signature = self._start()

    def execute_decoupled(self, request: InferRequest, channel: Any) -> None:
        """Start a decoupled request in the child; its responses reach `channel` (the
        runner's ResponseChannel) from the reader thread. The request and its responses
        travel pickled through the pipe."""
        with self._lock:
            self._live_child()
            stream_id = next(self._stream_ids)
            streams = self._streams
            streams[stream_id] = channel
            channel.on_read = lambda: self._send_quietly(("room", stream_id))
            channel.on_cancel = lambda: self._cancel_stream(streams, stream_id)
            channel.trace = request.trace
            trace = StreamTrace(stream_id) if request.trace is not None else None
            portable = dataclasses.replace(request, trace=trace, output_regions=None)
            self._send_quietly(("open", stream_id, portable))

    def _send_quietly(self, message: tuple[Any, ...]) -> None:
        """Send to the child from any thread; a dead child's streams are failed by the reader."""
        conn = self._conn
        if conn is None:
            return
        with self._send_lock, contextlib.suppress(OSError, ValueError):
            conn.send(message)

    def _cancel_stream(self, streams: dict[int, Any], stream_id: int) -> None:
        if streams.pop(stream_id, None) is not None:  # still answering: stop it
            self._send_quietly(("cancel-stream", stream_id))

    def _read_streams(self, conn: Connection, streams: dict[int, Any]) -> None:
        """A decoupled instance's reader thread: responses to `streams`, model code's calls
        to the data plane, until the child's end of the pipe closes. It owns `conn` and
        closes it: closed from another thread while this one reads, its descriptor could be
        reused by the next child's pipe and read here."""
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "respond":
                _, stream_id, outputs, final = message
                channel = streams.pop(stream_id) if final else streams.get(stream_id)
                if channel is not None:
                    channel.push(outputs, final)
            elif kind == "stream-failed":
                channel = streams.pop(message[1], None)
                if channel is not None:
                    channel.fail(_raised(message[2]))
            elif kind in ("ok", "big", "failed"):  # a batch of steps is done
                waiting = self._step_reply
                if waiting is not None:
                    waiting.put(message)
            else:
                self._model_call(message)
        conn.close()
        waiting = self._step_reply
        if waiting is not None:  # a batch of steps waits, holding the lock, for a dead child
            waiting.put(None)
        # Under the lock that opens streams: a stream opened before this point is failed
        # here; one opened after it finds the connection gone and starts a new child (the
        # child's process may still be exiting, alive to `is_alive`).
        with self._lock:
            if self._conn is conn:
                self._conn = None
            failed = list(streams.values())
            streams.clear()
        for channel in failed:
            channel.fail(
                ModelExecutionError(
                    f"its process instance {self.name} died while answering; a new one starts "
                    "with the next request"
                )
            )

    def _reply(self, conn: Connection) -> tuple[Any, ...]:
        """The batch's result; meanwhile, the calls its model code makes to other models."""
        while True:
            while not self._outbox.empty():
                conn.send(self._outbox.get())
            if self._open_calls:  # an answer may come before the child's next message
                ready = wait([conn, self._wake_read])
                if self._wake_read in ready:
                    os.read(self._wake_read, 4096)
                if conn not in ready:
                    continue
            message = conn.recv()
            if not self._model_call(message):
                return tuple(message)

    def _model_call(self, message: tuple[Any, ...]) -> bool:
        """Start (or cancel) a call the child's model code makes; False: not such a message."""
        kind = message[0]
        if kind in ("call", "stream", "control"):
            call_id, request = message[1], message[2]
            if kind != "control" and isinstance(request.trace, BatchTrace | StreamTrace):
                # Made under a traced request of the running batch or of a decoupled stream:
                # traced under it.
                request.trace = self._traced_under(request.trace)
            calls = self._calls
            if calls is None:
                self._refuse(call_id, FailedPrecondition("models can only call models in a server"))
            elif kind == "call":
                self._start_call(call_id, lambda: calls.submit(request))
            elif kind == "control":
                self._start_call(call_id, lambda: calls.submit_control(*request))
            else:
                self._start_stream(calls, call_id, request)
        elif kind == "cancel":
            future = self._open_calls.get(message[1])
            if future is not None:
                future.cancel()
        elif kind == "metric":
            self._metric(message[1], message[2], self._tell_child)
        elif kind == "cancelled":
            self._tell_child(("answer", message[1], self._cancelled(message[2])))
        else:
            return False
        return True

    def _traced_under(self, marker: BatchTrace | StreamTrace) -> Any:
        if isinstance(marker, StreamTrace):
            return getattr(self._streams.get(marker.stream_id), "trace", None)
        batch, index = self._batch, marker.index
        request = batch[index] if 0 <= index < len(batch) else None
        return request.trace if request is not None else None

    def _cancelled(self, index: int) -> bool:
        batch = self._batch
        request = batch[index] if 0 <= index < len(batch) else None
        return request is not None and request.cancelled is not None and request.cancelled()

    def _metric(
        self, call_id: int, request: tuple[str, tuple[Any, ...]], answer: Callable[[Any], None]
    ) -> None:
        """Apply an operation on model code's metrics; answer it unless call_id is 0 (an
        update the child checked and does not wait for)."""
        try:
            if self._calls is None:
                raise FailedPrecondition("custom metrics need a running tensorgate server")
            result = self._calls.model_code_metrics.apply(*request)
        except TensorgateError as exc:
            if call_id:
                answer(("error", call_id, _failure(exc)))
            else:
                log.warning("%s: a metric update failed: %s", self.name, exc.message)
            return
        if call_id:
            answer(("answer", call_id, result))

    def _tell_child(self, message: tuple[Any, ...]) -> None:
        """From the server's loop: queue a message for the child, wake the instance thread
        (a decoupled instance's child is sent to at once: no batch thread reads for it)."""
        if self._decoupled:
            self._send_quietly(message)
            return
        self._outbox.put(message)
        with contextlib.suppress(BlockingIOError):  # a full pipe: it is awake already
            os.write(self._wake_write, b"!")

    def _refuse(self, call_id: int, error: TensorgateError) -> None:
        """A call that could not start: its error, sent with the next flush (or at once)."""
        if self._decoupled:
            self._send_quietly(("error", call_id, _failure(error)))
        else:
            self._outbox.put(("error", call_id, _failure(error)))

    def _start_call(
        self, call_id: int, submit: Callable[[], concurrent.futures.Future[Any]]
    ) -> None:
        def answered(future: concurrent.futures.Future[Any]) -> None:
            if not future.cancelled():
                error = future.exception()
                if error is None:
                    self._tell_child(("answer", call_id, future.result()))
                else:
                    self._tell_child(("error", call_id, _failure(error)))
            self._open_calls.pop(call_id, None)

        self._started(call_id, submit, answered)

    def _start_stream(self, calls: ModelCalls, call_id: int, request: InferRequest) -> None:
        def deliver(item: object) -> None:
            if item is STREAM_END:
                self._tell_child(("end", call_id, None))
                self._open_calls.pop(call_id, None)
            elif isinstance(item, BaseException):
                self._tell_child(("error", call_id, _failure(item)))
            else:
                self._tell_child(("item", call_id, item))

        self._started(call_id, lambda: calls.submit_stream(request, deliver), None)

    def _started(
        self,
        call_id: int,
        start: Callable[[], concurrent.futures.Future[Any]],
        done: Callable[[concurrent.futures.Future[Any]], None] | None,
    ) -> None:
        """Start a call and keep it as open (the server not running: refused)."""
        try:
            future = start()
        except TensorgateError as exc:
            self._refuse(call_id, exc)
            return
        self._open_calls[call_id] = future
        if done is not None:
            future.add_done_callback(done)

    def _died(self) -> int | None:
        process, self._process = self._process, None
        if self._conn is not None:
            if not self._decoupled:  # a decoupled child's reader closes it, at its end
                self._conn.close()
            self._conn = None
        # Calls of the dead child's model code: nobody waits for them now.
        for future in list(self._open_calls.values()):
            future.cancel()
        self._open_calls.clear()
        while not self._outbox.empty():
            self._outbox.get()
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
            for fd in (self._wake_read, self._wake_write):
                with contextlib.suppress(OSError):
                    os.close(fd)
