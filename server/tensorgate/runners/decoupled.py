"""The decoupled runner: one request, any number of responses, sent as they are produced.

A decoupled model answers in one of two ways:

- pull: its `execute` is a generator (or an async generator) of output dicts. Each step
  (`next()`) runs as one call on the request's instance, one step ahead of the client at
  most, so a slow reader holds back its own generator and nothing else: between steps the
  instance runs other requests' steps.
- push: it sends responses through a `ResponseSender` (Triton's response sender), from
  `execute` or from threads of its own. `send` blocks while the reader is `WINDOW` responses
  behind.

Either way the stream ends with a final flag. A request whose client cancels, disconnects or
passes its deadline gets no further `next()`: the queued step is skipped, and the
generator's `close()` runs on its instance.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import aclosing
from typing import Any

from tensorgate.backends.base import Backend
from tensorgate.dataplane.types import Array, InferRequest
from tensorgate.errors import InvalidArgument, ModelExecutionError, ResourceExhausted, Unavailable
from tensorgate.executors.instance_threads import (
    InstanceThread,
    InstanceThreads,
    in_daemon_thread,
    thread_event_loop,
    wait_for_room,
)
from tensorgate.runners.base import RunnerStatus, Scheduled, Streamed

# Responses a push-style model may send ahead of its reader before `send` blocks.
WINDOW = 4
_END = object()

# (rows, compute ns) of one request's whole stream, for the statistics.
StreamObserver = Callable[[int, int, int, int], None]


class ResponseChannel:
    """A push-style model's responses, from its threads to the request's reader on the loop.

    A process instance forwards its child's responses with `push` and `fail` instead of
    `send`: the window is then kept in the child, which sends on only after `on_read` has
    told it the reader took one; `on_cancel` tells it the reader has gone.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int = WINDOW) -> None:
        self._loop = loop
        # Unbounded as a queue, bounded by `_room`: a sender waits for room before it puts.
        self._items: asyncio.Queue[Streamed | BaseException] = asyncio.Queue()
        self._room = threading.Semaphore(capacity)
        self._cancelled = threading.Event()
        self._final_sent = False
        self.on_read: Callable[[], None] | None = None
        self.on_cancel: Callable[[], None] | None = None
        # The id a process instance forwards this channel's responses under.
        self.route: int | None = None
        # The trace of the request it answers, for the calls a process instance's model code
        # makes under it.
        self.trace: Any = None

    def send(self, outputs: dict[str, Array] | None, final: bool) -> None:
        if self._final_sent:
            raise InvalidArgument("the response sender is closed: the final flag was sent")
        if not wait_for_room(self._room, self._cancelled):  # the reader is gone
            return
        self._final_sent = final
        self._loop.call_soon_threadsafe(self._items.put_nowait, Streamed(outputs, final))

    def push(self, outputs: dict[str, Array] | None, final: bool) -> None:
        """From any thread, without waiting for room (the caller keeps the window)."""
        self._loop.call_soon_threadsafe(self._items.put_nowait, Streamed(outputs, final))

    def fail(self, error: BaseException) -> None:
        """From any thread: the stream ends with `error`, raised to its reader."""
        self._loop.call_soon_threadsafe(self._items.put_nowait, error)

    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        if not self._cancelled.is_set():
            self._cancelled.set()
            if self.on_cancel is not None:
                self.on_cancel()

    async def get(self) -> Streamed:
        item = await self._items.get()
        if isinstance(item, BaseException):
            raise item
        if self.on_read is not None:  # pushed: the window is kept by the sender's side
            self.on_read()
        else:
            self._room.release()
        return item


def _open(backend: Backend, request: InferRequest, channel: ResponseChannel) -> Any:
    """On the instance: start the model on one request; an iterator to pull, or None (push)."""
    execute_decoupled = getattr(backend, "execute_decoupled", None)
    if execute_decoupled is not None:
        return execute_decoupled(request, channel)
    result = backend.execute(request.inputs)
    if isinstance(result, dict):  # a decoupled model may still answer with one response
        return iter((result,))
    return result


def _step(source: Any) -> tuple[Any, int]:
    """On the instance: the source's next response (or _END), and the time it took."""
    started = time.perf_counter_ns()
    if hasattr(source, "__anext__"):
        loop = thread_event_loop()
        try:
            item = loop.run_until_complete(source.__anext__())
        except StopAsyncIteration:
            item = _END
    else:
        item = next(source, _END)
    if item is not _END and not isinstance(item, dict):
        raise ModelExecutionError(
            f"a decoupled model yields dicts of output arrays, got {type(item).__name__}"
        )
    return item, time.perf_counter_ns() - started


def _close(source: Any) -> None:
    """On the instance: close a generator the client no longer reads; its finally runs."""
    try:
        if hasattr(source, "aclose"):
            thread_event_loop().run_until_complete(source.aclose())
        elif hasattr(source, "close"):
            source.close()
    except Exception:  # a model's cleanup failing must not take the instance down
        pass


class DecoupledRunner:
    """Runs a decoupled model's requests, each on one instance, streaming their responses."""

    decoupled = True

    def __init__(
        self,
        name: str,
        instances: InstanceThreads,
        max_streams: int,
        on_stream: StreamObserver | None = None,
    ) -> None:
        self.name = name
        self.instances = instances
        self.max_streams = max_streams
        self._on_stream = on_stream
        self._streams = 0
        self._closing = False
        self._drained: asyncio.Future[None] | None = None

    async def run(self, request: InferRequest, rows: int) -> Scheduled:
        raise InvalidArgument(f"model '{self.name}' is decoupled: it answers through a stream")

    def status(self) -> RunnerStatus:
        return RunnerStatus(0, self._streams, len(self.instances))

    async def stream(self, request: InferRequest, rows: int) -> AsyncGenerator[Streamed, None]:
        if self._closing:
            raise Unavailable(f"model '{self.name}' is being unloaded")
        if self._streams >= self.max_streams:
            raise ResourceExhausted(
                f"model '{self.name}' already runs {self._streams} streams, its limit"
            )
        instance = self.instances.least_busy()
        channel = ResponseChannel(asyncio.get_running_loop())
        self._streams += 1
        compute_ns = [0]
        try:
            source = await instance.call(_open, instance.backend, request, channel)
            if source is None:
                while True:
                    item = await channel.get()
                    yield item
                    if item.final:
                        break
            else:
                async with aclosing(self._pull(instance, source, compute_ns)) as items:
                    async for item in items:
                        yield item
        finally:
            channel.cancel()
            self._streams -= 1
            if self._on_stream is not None:
                self._on_stream(rows, 0, compute_ns[0], 0)
            self._check_drained()

    async def _pull(
        self, instance: InstanceThread, source: Iterator[Any], compute_ns: list[int]
    ) -> AsyncGenerator[Streamed, None]:
        pending: asyncio.Future[tuple[Any, int]] | None = instance.call(_step, source)
        try:
            while pending is not None:
                item, took = await pending
                compute_ns[0] += took
                if item is _END:
                    pending = None
                    break
                # The next step runs while this response goes out: one step ahead, no more.
                pending = instance.call(_step, source)
                yield Streamed(item, False)
        finally:
            if pending is not None:  # the client left mid-stream
                pending.cancel()  # skipped if it has not started yet
                instance.call(_close, source)
        yield Streamed(None, True)

    async def close(self) -> None:
        self._closing = True
        if self._streams:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained
        await in_daemon_thread(self.instances.close, f"tg-{self.name}-close")

    def discard(self) -> None:
        self.instances.close()

    def _check_drained(self) -> None:
        drained = self._drained
        if drained is not None and not drained.done() and not self._streams:
            drained.set_result(None)
