"""Model instances, each owning one thread; the event loop hands them work and never blocks.

An instance runs one piece of work at a time. The loop gives work to an idle instance only:
whoever schedules (the batcher) asks how many are idle and keeps the rest queued itself, so
the pool has no queue of its own beyond the job an instance is running. A busy instance does
not go idle between jobs when more work is waiting: before it reports a result, its thread
asks the scheduler for the next job (`pull_from`) and keeps running. Waking a sleeping
thread from the loop costs tens of microseconds on a small VM, as much as the batch it
carries; this way a loaded model pays it only when its queue runs dry. Results come back to
the event loop with `call_soon_threadsafe`, one wake-up per batch rather than per request.

An instance whose work hangs can be abandoned (`abandon`): it leaves the pool at once, its
thread is left to finish on its own (then closes its backend and ends, its result dropped),
and, when the pool was given a way to create instances, a new one is built off the loop and
joins the pool when ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
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

    def __init__(
        self,
        backend: Backend,
        name: str,
        report: Report[T],
        index: int,
        gate: AbstractContextManager[None] | None = None,
    ) -> None:
        self.backend = backend
        self.index = index  # which of the config's instances: a replacement takes it over
        # Held while model code runs: the rate limiter's resources (nullcontext: none).
        self.gate = gate or contextlib.nullcontext()
        self.abandoned = False  # set on the loop; the thread then ends after its job
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
                    with self.gate:
                        result = work(self.backend)
                except BaseException as exc:  # handed to the loop, which decides
                    result = exc
                if self.abandoned:  # it ran past its timeout: nobody waits for this any more
                    self._retire()
                    return
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

    def _retire(self) -> None:
        log.warning("%s: an abandoned instance finished its work; releasing it", self._thread.name)
        try:
            self.backend.close()
        except Exception:
            log.exception("%s: closing an abandoned instance failed", self._thread.name)


class InstancePool(Generic[T]):
    """The instances of one model version. Methods other than `close` run on the loop."""

    def __init__(
        self,
        name: str,
        backends: list[Backend],
        create: Callable[[int], Backend] | None = None,
        gates: Sequence[AbstractContextManager[None] | None] = (),
    ) -> None:
        self.name = name
        self._create = create  # builds instance i again (blocking); None: no replacements
        self._gates = list(gates) or [None] * len(backends)  # instance i's rate-limiter gate
        self._instances = [
            _Instance[T](backend, f"tg-{name}-{i}", self._report, i, self._gates[i])
            for i, backend in enumerate(backends)
        ]
        self._idle = list(self._instances)
        self._next_job: NextJob[T] = _no_next_job
        self.abandoned = 0  # instances given up on, since the load
        self.on_idle: Callable[[], None] | None = None  # a replacement joined, idle
        self._replacing: set[asyncio.Task[None]] = set()
        self._closed = False

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
        self._next_job = next_job
        for instance in self._instances:
            instance.next_job = next_job

    def abandon(self, backend: Backend) -> None:
        """On the loop: give up on the instance running `backend` (its work hangs), and
        build its replacement when the pool can."""
        for instance in self._instances:
            if instance.backend is backend:
                break
        else:
            return
        instance.abandoned = True
        instance.next_job = _no_next_job
        self._instances.remove(instance)
        if instance in self._idle:
            self._idle.remove(instance)
        self.abandoned += 1
        if self._create is not None and not self._closed:
            task = asyncio.get_running_loop().create_task(self._replace(instance.index))
            self._replacing.add(task)
            task.add_done_callback(self._replacing.discard)

    async def _replace(self, index: int) -> None:
        delay = 0.5
        while not self._closed:
            try:
                backend = await asyncio.to_thread(self._create, index)  # type: ignore[arg-type]
                break
            except Exception:
                log.exception("%s: building a replacement instance failed; retrying", self.name)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        else:
            return
        if self._closed:
            backend.close()
            return
        instance = _Instance[T](
            backend, f"tg-{self.name}-{index}r", self._report, index, self._gates[index]
        )
        instance.next_job = self._next_job
        self._instances.append(instance)
        self._idle.append(instance)
        log.info("%s: a replacement instance joined", self.name)
        if self.on_idle is not None:
            self.on_idle()

    def run(self, work: Work[T], done: Done[T]) -> None:
        """Run `work(backend)` on an idle instance; `done(result or exception)` on the loop."""
        instance = self._idle.pop()
        instance.submit((work, done), asyncio.get_running_loop().call_soon_threadsafe)

    def run_inline(self, work: Work[T], done: Done[T]) -> None:
        """Run `work` on an idle instance's backend here, on the event loop: for batches
        shorter than the hand-off to a thread and back (see Scheduler's execution)."""
        instance = self._idle.pop()
        try:
            result: T | BaseException = work(instance.backend)
        except BaseException as exc:  # handed to `done`, like a thread's result
            result = exc
        self._idle.append(instance)
        done(result)

    def _report(self, instance: _Instance[T], done: Done[T], result: Any, busy: bool) -> None:
        if instance.abandoned:  # its job was failed already, when it was given up on
            return
        if not busy:
            self._idle.append(instance)
        done(result)

    def close(self) -> None:
        """Blocking: wait for running work, stop the threads, release every backend.
        Abandoned instances are not waited for."""
        self._closed = True
        for task in list(self._replacing):
            task.get_loop().call_soon_threadsafe(task.cancel)
        for instance in list(self._instances):
            instance.stop()
