"""Model instances, each owning one thread; the event loop hands them work and never blocks.

An instance runs one piece of work at a time. The loop gives work to an idle instance only:
whoever schedules (the batcher) asks how many are idle and keeps the rest queued itself, so
the pool has no queue of its own beyond the job an instance is running. A busy instance does
not go idle between jobs when more work is waiting: before it reports a result, its thread
asks the scheduler for the next job (`pull_from`) and keeps running. Waking a sleeping
thread from the loop costs tens of microseconds on a small VM, as much as the batch it
carries; this way a loaded model pays it only when its queue runs dry. Results come back to
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
Job = tuple[Work[T], Done[T]]
# Runs on an instance's thread as it finishes a job: the next job to run at once, or None.
NextJob = Callable[[], Job[T] | None]
# Runs on the loop: (the instance, the finished job's Done, its result, whether it pulled more).
Report = Callable[["_Instance[T]", Done[T], Any, bool], None]


def _no_next_job() -> None:
    return None


class _Instance(Generic[T]):
    """One backend instance and the thread that runs it."""

    def __init__(self, backend: Backend, name: str, report: Report[T]) -> None:
        self.backend = backend
        self.next_job: NextJob[T] = _no_next_job
        self._report = report
        self._jobs: queue.SimpleQueue[tuple[Job[T], Callable[..., Any]] | None]
        self._jobs = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Job[T], call_back: Callable[..., Any]) -> None:
        self._jobs.put((job, call_back))

    def _serve(self) -> None:
        while (given := self._jobs.get()) is not None:
            job: Job[T] | None
            job, call_back = given
            while job is not None:
                work, done = job
                result: T | BaseException
                try:
                    result = work(self.backend)
                except BaseException as exc:  # handed to the loop, which decides
                    result = exc
                try:
                    job = self.next_job()
                except Exception:  # a scheduler bug must not kill the instance
                    log.exception("%s could not take its next job", self._thread.name)
                    job = None
                try:
                    call_back(self._report, self, done, result, job is not None)
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
            _Instance[T](backend, f"tg-{name}-{i}", self._report)
            for i, backend in enumerate(backends)
        ]
        self._idle = list(self._instances)

    @property
    def size(self) -> int:
        return len(self._instances)

    @property
    def idle(self) -> int:
        """Instances free to take work right now."""
        return len(self._idle)

    def pull_from(self, next_job: NextJob[T]) -> None:
        """Have each instance call `next_job()` on its thread whenever it finishes a job.

        A job it returns runs at once on that instance, which stays busy in the loop's eyes;
        its Done is called on the loop like any other. It must be thread-safe against the
        loop's own scheduling, and cheap: the instance's result waits for it.
        """
        for instance in self._instances:
            instance.next_job = next_job

    def run(self, work: Work[T], done: Done[T]) -> None:
        """Run `work(backend)` on an idle instance; `done(result or exception)` on the loop."""
        instance = self._idle.pop()
        instance.submit((work, done), asyncio.get_running_loop().call_soon_threadsafe)

    def _report(self, instance: _Instance[T], done: Done[T], result: Any, busy: bool) -> None:
        if not busy:
            self._idle.append(instance)
        done(result)

    def close(self) -> None:
        """Blocking: wait for running work, stop the threads, release every backend."""
        for instance in self._instances:
            instance.stop()
