"""Model instances that each run a queue of calls on their own thread, addressed by index.

The dynamic batcher's `InstancePool` hands whole batches to whichever instance is idle. The
decoupled runner and the sequence batcher need the opposite: every step of one request's
generator, and every request of one sequence, must run on the instance that holds its
state. Here each instance keeps a FIFO of calls; the loop awaits each call's future. A call
whose future was cancelled before its turn is skipped, so a cancelled request never runs
model code again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from tensorgate.backends.base import Backend

log = logging.getLogger(__name__)

_thread_loops = threading.local()

T = TypeVar("T")
_Call = tuple[asyncio.Future[Any], asyncio.AbstractEventLoop, Callable[..., Any], tuple[Any, ...]]


class InstanceThread:
    """One backend instance and the thread that runs calls on it, in order."""

    def __init__(
        self, backend: Backend, name: str, gate: AbstractContextManager[None] | None = None
    ) -> None:
        self.backend = backend
        self.name = name
        # Held while model code runs: the rate limiter's resources (nullcontext: none).
        self.gate = gate or contextlib.nullcontext()
        self.pending = 0  # calls queued or running; read and written on the loop only
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run `fn(*args)` on this instance's thread after the calls already queued."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self.pending += 1
        future.add_done_callback(self._finished)
        self._calls.put((future, loop, fn, args))
        return future

    def _finished(self, future: asyncio.Future[Any]) -> None:
        self.pending -= 1

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            future, loop, fn, args = call
            if future.done():  # cancelled while it waited: the caller is gone
                continue
            try:
                with self.gate:
                    outcome: tuple[bool, Any] = (True, fn(*args))
            except BaseException as exc:  # handed to the loop, which decides
                outcome = (False, exc)
            try:
                loop.call_soon_threadsafe(_settle, future, outcome)
            except RuntimeError:  # the loop closed under us at shutdown
                log.debug("result of %s dropped: event loop closed", self.name)

    def stop(self) -> None:
        """Blocking: finish the queued calls, end the thread, release the backend."""
        self._calls.put(None)
        self._thread.join()
        self.backend.close()


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class InstanceThreads:
    """The instances of one model version, each with its own thread and queue of calls."""

    def __init__(
        self,
        name: str,
        backends: list[Backend],
        gates: Sequence[AbstractContextManager[None] | None] = (),
    ) -> None:
        gates = list(gates) or [None] * len(backends)
        self.instances = [
            InstanceThread(backend, f"tg-{name}-{i}", gates[i])
            for i, backend in enumerate(backends)
        ]

    def __len__(self) -> int:
        return len(self.instances)

    def least_busy(self) -> InstanceThread:
        """The instance with the fewest calls queued or running."""
        return min(self.instances, key=lambda instance: instance.pending)

    def close(self) -> None:
        """Blocking: finish queued calls, stop the threads, release every backend."""
        for instance in self.instances:
            instance.stop()


def wait_for_room(room: threading.Semaphore, cancelled: threading.Event) -> bool:
    """A response sender's wait for its window to have room, for as long as its reader is
    there: False once the reader is gone (the response is then dropped)."""
    while not cancelled.is_set():
        if room.acquire(timeout=0.05):
            return True
    return False


def thread_event_loop() -> asyncio.AbstractEventLoop:
    """This thread's own event loop, on which an instance runs a model's coroutines (async
    generators, `async def execute`): the server's loop never runs model code."""
    loop: asyncio.AbstractEventLoop | None = getattr(_thread_loops, "loop", None)
    if loop is None:
        loop = _thread_loops.loop = asyncio.new_event_loop()
    return loop


async def in_daemon_thread(work: Callable[[], T], name: str) -> T:
    """Run blocking `work` that may wait on model code (closing instances) in a thread of
    its own, a daemon. Not `asyncio.to_thread`: the interpreter joins the default
    executor's threads at exit, so a close stuck behind a batch that never ends would hold
    the process after a shutdown has given up on that batch."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            outcome: tuple[bool, Any] = (True, work())
        except BaseException as exc:
            outcome = (False, exc)
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            loop.call_soon_threadsafe(_settle, future, outcome)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future
