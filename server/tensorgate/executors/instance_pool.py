"""Model instances, each owning one thread; the event loop hands them work and never blocks.

An instance runs one piece of work at a time. Work goes to an idle instance only: whoever
schedules (the batcher) asks how many are idle and keeps the rest queued itself, so the pool
has no queue of its own beyond the one job an instance is running. Completion comes back to
the event loop with `call_soon_threadsafe`, one wake-up per batch rather than per request.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from tensorgate.backends.base import Backend

log = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[Backend], T]
Done = Callable[[T | BaseException], None]


class _Instance(Generic[T]):
    """One backend instance and the thread that runs it."""

    def __init__(self, backend: Backend, name: str) -> None:
        self.backend = backend
        self._jobs: queue.SimpleQueue[tuple[Work[T], Done[T], Callable[..., Any]] | None]
        self._jobs = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: Work[T], done: Done[T], call_back: Callable[..., Any]) -> None:
        self._jobs.put((work, done, call_back))

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            work, done, call_back = job
            result: T | BaseException
            try:
                result = work(self.backend)
            except BaseException as exc:  # handed to the loop, which decides
                result = exc
            try:
                call_back(done, result)
            except RuntimeError:  # the loop closed under us at shutdown
                log.debug("result of %s dropped: event loop closed", self._thread.name)

    def stop(self) -> None:
        """Finish the running job, then end the thread and release the backend."""
        self._jobs.put(None)
        self._thread.join()
        self.backend.close()


class InstancePool(Generic[T]):
    """The instances of one model version. Methods other than `close` run on the loop."""

    def __init__(self, name: str, backends: list[Backend]) -> None:
        self.name = name
        self._instances = [
            _Instance[T](backend, f"tg-{name}-{i}") for i, backend in enumerate(backends)
        ]
        self._idle = list(self._instances)

    @property
    def size(self) -> int:
        return len(self._instances)

    @property
    def idle(self) -> int:
        """Instances free to take work right now."""
        return len(self._idle)

    def run(self, work: Work[T], done: Done[T]) -> None:
        """Run `work(backend)` on an idle instance; `done(result or exception)` on the loop."""
        instance = self._idle.pop()
        loop = asyncio.get_running_loop()

        def finished(result: T | BaseException) -> None:
            self._idle.append(instance)
            done(result)

        instance.submit(work, finished, loop.call_soon_threadsafe)

    def close(self) -> None:
        """Blocking: wait for running work, stop the threads, release every backend."""
        for instance in self._instances:
            instance.stop()
