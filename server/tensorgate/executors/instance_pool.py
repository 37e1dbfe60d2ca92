"""A pool of model instances, each run on its own thread; the event loop only awaits.

An instance takes the next job when it is free. The number of jobs waiting for an instance
is bounded: beyond it, jobs are rejected at once with RESOURCE_EXHAUSTED rather than queued
without limit. A job whose caller is cancelled while it waits never runs; one cancelled
while running finishes on its thread, its instance is released only then, and its result
is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tensorgate.backends.base import Backend
from tensorgate.dataplane.types import Array
from tensorgate.errors import ResourceExhausted


@dataclass(slots=True)
class Execution:
    """Outputs of one backend call and where its time went (nanoseconds)."""

    outputs: dict[str, Array]
    queue_ns: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int


class InstancePool:
    """Instances of one model version, with a bounded wait queue in front of them."""

    def __init__(self, name: str, instances: list[Backend], max_waiting: int) -> None:
        self.name = name
        self.instances = instances
        self._free: deque[Backend] = deque(instances)
        self._waiters: deque[asyncio.Future[Backend]] = deque()
        self._max_waiting = max_waiting
        self._threads = ThreadPoolExecutor(
            max_workers=len(instances), thread_name_prefix=f"tg-{name}"
        )

    @property
    def waiting(self) -> int:
        """Jobs queued for an instance right now."""
        return len(self._waiters)

    async def _acquire(self) -> Backend:
        if self._free and not self._waiters:
            return self._free.popleft()
        if len(self._waiters) >= self._max_waiting:
            raise ResourceExhausted(
                f"model '{self.name}' has {len(self._waiters)} requests waiting, the limit; "
                "retry later"
            )
        waiter: asyncio.Future[Backend] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())  # handed over just as we were cancelled
            else:
                self._waiters.remove(waiter)
            raise

    def _release(self, instance: Backend) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(instance)
                return
        self._free.append(instance)

    async def execute(self, inputs: dict[str, Array]) -> Execution:
        """Run one job on the next free instance."""
        enqueued = time.perf_counter_ns()
        instance = await self._acquire()
        acquired = time.perf_counter_ns()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._threads, _timed_execute, instance, inputs)
        try:
            outputs, started, finished = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The thread cannot be stopped; keep the instance busy until it is done.
            future.add_done_callback(lambda _: self._release(instance))
            raise
        except BaseException:
            self._release(instance)
            raise
        self._release(instance)
        done = time.perf_counter_ns()
        return Execution(
            outputs, acquired - enqueued, started - acquired, finished - started, done - finished
        )

    def close(self) -> None:
        """Wait for running jobs, then release every instance."""
        self._threads.shutdown(wait=True)
        for instance in self.instances:
            instance.close()


def _timed_execute(
    instance: Backend, inputs: dict[str, Array]
) -> tuple[dict[str, Array], int, int]:
    started = time.perf_counter_ns()
    outputs = instance.execute(inputs)
    return outputs, started, time.perf_counter_ns()
