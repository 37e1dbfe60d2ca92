"""The scheduler with real instance threads: batching, cancellation, errors, ordering."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from tensorgate.backends.base import ModelSignature
from tensorgate.batching import placement
from tensorgate.batching.placement import TOLERATED
from tensorgate.batching.policy import BatchingPolicy
from tensorgate.batching.scheduler import Scheduler
from tensorgate.dataplane.types import Array, InferRequest
from tensorgate.errors import ModelExecutionError, ResourceExhausted, Unavailable
from tensorgate.executors.instance_pool import InstancePool
from tensorgate.repository.config import parse_config


class GatedBackend:
    """Doubles X; blocks in execute until released; records every batch it ran."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.batches: list[list[float]] = []

    def signature(self) -> ModelSignature | None:
        return None

    def execute(self, inputs: dict[str, Array]) -> dict[str, Array]:
        self.started.set()
        self.gate.wait(5)
        values = inputs["X"].reshape(-1).tolist()
        self.batches.append(values)
        if -1.0 in values:
            raise ModelExecutionError("negative one")
        return {"Y": inputs["X"] * 2}

    def close(self) -> None:
        self.gate.set()


def _x(*values: float) -> dict[str, Array]:
    return {"X": np.array(values, dtype=np.float32).reshape(len(values), 1)}


def _run(
    config: str, backends: list[GatedBackend], body: Callable[[Scheduler], Awaitable[None]]
) -> None:
    policy = BatchingPolicy.from_config(parse_config(config), 8)
    executions: list[int] = []

    async def main() -> None:
        pool = InstancePool[object]("m", list(backends))
        scheduler = Scheduler("m", policy, pool, lambda rows, *_: executions.append(rows))  # type: ignore[arg-type]
        try:
            await body(scheduler)
        finally:
            for backend in backends:
                backend.gate.set()
            await scheduler.close()

    asyncio.run(main())


async def _started(backend: GatedBackend) -> None:
    assert await asyncio.to_thread(backend.started.wait, 5)


async def _occupy(scheduler: Scheduler, backend: GatedBackend) -> asyncio.Task[Any]:
    """Submit X=1 and wait until it holds the (gated) instance."""
    running = asyncio.create_task(scheduler.submit(_x(1), 1))
    await _started(backend)
    return running


BATCHING = "max_batch_size: 8 dynamic_batching {}"


def test_requests_queued_behind_a_busy_instance_run_as_one_batch() -> None:
    backend = GatedBackend()

    async def body(scheduler: Scheduler) -> None:
        first = await _occupy(scheduler, backend)
        rest = [asyncio.create_task(scheduler.submit(_x(v, v), 2)) for v in (2, 3, 4)]
        await asyncio.sleep(0.01)
        backend.gate.set()
        await first
        results = await asyncio.gather(*rest)
        assert [r.outputs["Y"].reshape(-1).tolist() for r in results] == [
            [4, 4],
            [6, 6],
            [8, 8],
        ]
        assert backend.batches == [[1], [2, 2, 3, 3, 4, 4]]

    _run(BATCHING, [backend], body)


def test_requests_arriving_together_at_an_idle_instance_run_as_one_batch() -> None:
    backend = GatedBackend()
    backend.gate.set()

    async def body(scheduler: Scheduler) -> None:
        # Tasks started in one loop iteration, as uvicorn starts the requests of one read.
        results = await asyncio.gather(*(scheduler.submit(_x(v), 1) for v in (1, 2, 3)))
        assert [r.outputs["Y"].reshape(-1).tolist() for r in results] == [[2], [4], [6]]
        assert backend.batches == [[1, 2, 3]]

    _run(BATCHING, [backend], body)


class SlowWakePool(InstancePool[object]):
    """Instances whose threads start only when the test says: a thread waiting for the GIL."""

    def __init__(self, name: str, backends: list[Any]) -> None:
        super().__init__(name, backends)
        self.held: list[tuple[Any, Any]] = []

    def run(self, work: Any, done: Any) -> None:
        self.held.append((work, done))

    def wake(self) -> None:
        held, self.held = self.held, []
        for work, done in held:
            super().run(work, done)


def test_requests_arriving_while_an_instance_wakes_join_its_batch() -> None:
    backend = GatedBackend()
    backend.gate.set()
    policy = BatchingPolicy.from_config(parse_config(BATCHING), 8)

    async def main() -> None:
        pool = SlowWakePool("m", [backend])
        scheduler = Scheduler("m", policy, pool)  # type: ignore[arg-type]
        first = asyncio.create_task(scheduler.submit(_x(1), 1))
        await asyncio.sleep(0.01)
        assert len(pool.held) == 1  # the instance is woken for X=1 but has not started
        rest = [asyncio.create_task(scheduler.submit(_x(v), 1)) for v in (2, 3)]
        await asyncio.sleep(0.01)
        assert len(pool.held) == 1  # one wake at a time
        pool.wake()
        results = await asyncio.gather(first, *rest)
        assert [r.outputs["Y"].tolist() for r in results] == [[[2]], [[4]], [[6]]]
        assert backend.batches == [[1, 2, 3]]
        await scheduler.close()

    asyncio.run(main())


def test_an_instance_that_leaves_requests_queued_gets_a_free_instance_woken() -> None:
    backends = [GatedBackend(), GatedBackend()]

    async def body(scheduler: Scheduler) -> None:
        tasks = [asyncio.create_task(scheduler.submit(_x(v), 1)) for v in (1, 2, 3, 4)]
        # Both gated instances must be running, two requests each (max_batch_size 2).
        for backend in backends:
            await _started(backend)
        for backend in backends:
            backend.gate.set()
        await asyncio.gather(*tasks)
        assert sorted(b for backend in backends for b in map(tuple, backend.batches)) == [
            (1, 2),
            (3, 4),
        ]

    _run("max_batch_size: 2 dynamic_batching {}", backends, body)


def _block_loop_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Hold the event loop (deliberately) while instance threads run, polling `condition`."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.001)


def test_busy_instance_takes_the_next_batch_without_waiting_for_the_loop() -> None:
    backend = GatedBackend()

    async def body(scheduler: Scheduler) -> None:
        first = await _occupy(scheduler, backend)
        rest = [asyncio.create_task(scheduler.submit(_x(v), 1)) for v in (2, 3)]
        await asyncio.sleep(0.01)
        backend.gate.set()
        # The loop cannot dispatch while it is held here: only the instance can start them.
        _block_loop_until(lambda: len(backend.batches) == 2)
        assert backend.batches == [[1], [2, 3]]
        await asyncio.gather(first, *rest)

    _run(BATCHING, [backend], body)


def test_request_whose_timeout_fell_due_is_not_taken_by_a_finishing_instance() -> None:
    backend = GatedBackend()

    async def body(scheduler: Scheduler) -> None:
        first = await _occupy(scheduler, backend)
        late = asyncio.create_task(scheduler.submit(_x(2), 1, timeout_us=20_000))
        await asyncio.sleep(0)
        time.sleep(0.05)  # past its timeout, with the loop unable to expire it
        backend.gate.set()
        _block_loop_until(lambda: len(backend.batches) == 1)
        time.sleep(0.05)  # room for the instance to (wrongly) start it
        with pytest.raises(Unavailable, match="Request timeout expired"):
            await late
        await first
        assert backend.batches == [[1]]

    _run(
        "max_batch_size: 8 dynamic_batching { default_queue_policy "
        "{ default_timeout_microseconds: 1000000 allow_timeout_override: true } }",
        [backend],
        body,
    )


def test_request_cancelled_in_the_queue_is_never_executed() -> None:
    backend = GatedBackend()

    async def body(scheduler: Scheduler) -> None:
        first = await _occupy(scheduler, backend)
        doomed = asyncio.create_task(scheduler.submit(_x(2), 1))
        await asyncio.sleep(0.01)
        assert scheduler.queued == 1
        doomed.cancel()
        await asyncio.sleep(0.01)
        assert scheduler.queued == 0
        backend.gate.set()
        await first
        assert (await scheduler.submit(_x(3), 1)).outputs["Y"].tolist() == [[6]]
        assert backend.batches == [[1], [3]]

    _run(BATCHING, [backend], body)


def test_a_queued_future_cancelled_without_a_task_leaves_the_queue() -> None:
    # A stream's request has no task: its caller cancels the future `start` returned.
    backend = GatedBackend()

    async def body(scheduler: Scheduler) -> None:
        first = await _occupy(scheduler, backend)
        doomed = scheduler.start(InferRequest("m", inputs=_x(2)), 1)
        kept = scheduler.start(InferRequest("m", inputs=_x(4)), 1)
        assert scheduler.queued == 2
        assert doomed.cancel()
        assert scheduler.queued == 1 and doomed.cancelled()
        backend.gate.set()
        await first
        assert (await kept).outputs["Y"].tolist() == [[8]]
        assert backend.batches == [[1], [4]]
        assert not kept.cancel()  # answered: nothing left to withdraw

    _run(BATCHING, [backend], body)


def test_request_cancelled_while_running_keeps_its_instance_until_the_thread_ends() -> None:
    backend = GatedBackend()

    async def body(scheduler: Scheduler) -> None:
        running = await _occupy(scheduler, backend)
        running.cancel()
        follower = asyncio.create_task(scheduler.submit(_x(2), 1))
        await asyncio.sleep(0.01)
        assert not follower.done() and scheduler.queued == 1
        backend.gate.set()
        assert (await follower).outputs["Y"].tolist() == [[4]]

    _run(BATCHING, [backend], body)


def test_failing_batch_fails_only_its_own_requests() -> None:
    backend = GatedBackend()
    backend.gate.set()

    async def body(scheduler: Scheduler) -> None:
        with pytest.raises(ModelExecutionError, match="negative one"):
            await scheduler.submit(_x(-1), 1)
        assert (await scheduler.submit(_x(5), 1)).outputs["Y"].tolist() == [[10]]

    _run("max_batch_size: 8", [backend], body)


def test_instances_run_batches_in_parallel() -> None:
    backends = [GatedBackend(), GatedBackend()]

    async def body(scheduler: Scheduler) -> None:
        tasks = [asyncio.create_task(scheduler.submit(_x(v), 1)) for v in (1, 2)]
        for backend in backends:
            await _started(backend)
        assert scheduler.running == 2
        for backend in backends:
            backend.gate.set()
        await asyncio.gather(*tasks)

    _run("max_batch_size: 8", backends, body)


@pytest.mark.parametrize(("preserve", "expected"), [(True, [1, 2]), (False, [2, 1])])
def test_preserve_ordering_holds_a_fast_response_behind_a_slow_one(
    preserve: bool, expected: list[int]
) -> None:
    slow, fast = GatedBackend(), GatedBackend()
    fast.gate.set()

    async def body(scheduler: Scheduler) -> None:
        order: list[int] = []

        async def one(value: int) -> None:
            await scheduler.submit(_x(value), 1)
            order.append(value)

        first = asyncio.create_task(one(1))  # idle instances are taken from the end: slow
        await _started(slow)
        second = asyncio.create_task(one(2))
        await _started(fast)
        await asyncio.sleep(0.05)
        assert order == ([] if preserve else [2])
        slow.gate.set()
        await asyncio.gather(first, second)
        assert order == expected

    config = f"max_batch_size: 1 dynamic_batching {{ preserve_ordering: {str(preserve).lower()} }}"
    _run(config, [fast, slow], body)


def test_queue_timeout_rejects_a_request_still_waiting() -> None:
    backend = GatedBackend()

    async def body(scheduler: Scheduler) -> None:
        first = await _occupy(scheduler, backend)
        with pytest.raises(Unavailable, match="Request timeout expired"):
            await scheduler.submit(_x(2), 1)
        backend.gate.set()
        await first
        assert backend.batches == [[1]]

    _run(
        "max_batch_size: 8 dynamic_batching { default_queue_policy "
        "{ default_timeout_microseconds: 20000 } }",
        [backend],
        body,
    )


def test_full_queue_rejects_at_once() -> None:
    backend = GatedBackend()

    async def body(scheduler: Scheduler) -> None:
        first = await _occupy(scheduler, backend)
        queued = asyncio.create_task(scheduler.submit(_x(2), 1))
        await asyncio.sleep(0.01)
        with pytest.raises(ResourceExhausted):
            await scheduler.submit(_x(3), 1)
        backend.gate.set()
        await asyncio.gather(first, queued)

    _run(
        "max_batch_size: 8 dynamic_batching { default_queue_policy { max_queue_size: 1 } }",
        [backend],
        body,
    )


def test_close_lets_queued_requests_finish_then_refuses_new_ones() -> None:
    backend = GatedBackend()

    async def body(scheduler: Scheduler) -> None:
        first = await _occupy(scheduler, backend)
        queued = asyncio.create_task(scheduler.submit(_x(2), 1))
        await asyncio.sleep(0.01)
        closing = asyncio.create_task(scheduler.close())
        await asyncio.sleep(0.01)
        with pytest.raises(Unavailable, match="unloaded"):
            await scheduler.submit(_x(3), 1)
        backend.gate.set()
        await asyncio.gather(first, queued, closing)
        assert backend.batches == [[1], [2]]

    _run(BATCHING, [backend], body)


def test_instance_whose_next_job_lookup_fails_reports_its_result_and_stays_usable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = GatedBackend()
    backend.gate.set()

    def broken_next_job() -> None:
        raise RuntimeError("scheduler bug")

    async def main() -> None:
        pool = InstancePool[object]("m", [backend])  # type: ignore[list-item]
        pool.pull_from(broken_next_job)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        for value in (1.0, 2.0):
            done: asyncio.Future[object] = loop.create_future()
            pool.run(lambda b, v=value: b.execute(_x(v)), done.set_result)
            result = await asyncio.wait_for(done, 5)
            assert result["Y"].tolist() == [[2 * value]]  # type: ignore[index]
            assert pool.idle == 1
        await asyncio.to_thread(pool.close)

    asyncio.run(main())
    assert "could not take its next job" in caplog.text


class TimedBackend:
    """Doubles X, taking `seconds` per batch; records on which thread each batch ran."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.threads: list[str] = []

    def signature(self) -> ModelSignature | None:
        return None

    def execute(self, inputs: dict[str, Array]) -> dict[str, Array]:
        self.threads.append(threading.current_thread().name)
        time.sleep(self.seconds)
        return {"Y": inputs["X"] * 2}

    def close(self) -> None:
        pass


def _placed(execution: str, seconds: float, requests: int, inline_max_us: int = 500) -> list[str]:
    backend = TimedBackend(seconds)
    policy = BatchingPolicy.from_config(parse_config("max_batch_size: 8"), 8)

    async def main() -> None:
        pool = InstancePool[object]("m", [backend])  # type: ignore[list-item]
        scheduler = Scheduler(
            "m", policy, pool, None, execution=execution, inline_max_us=inline_max_us
        )
        try:
            for value in range(requests):
                done = await scheduler.submit(_x(value), 1)
                np.testing.assert_array_equal(done.outputs["Y"], [[2 * value]])
        finally:
            await scheduler.close()

    asyncio.run(main())
    return backend.threads


def test_inline_batches_run_on_the_event_loop_thread() -> None:
    assert set(_placed("inline", 0.0, 5)) == {"MainThread"}
    assert set(_placed("thread", 0.0, 5)) == {"tg-m-0"}


def test_auto_leaves_the_loop_at_once_at_a_batch_far_over_the_bound() -> None:
    # A bound no instant batch passes even on a loaded machine (1 s), then one that a 2 ms
    # batch passes twentyfold (100 us).
    assert set(_placed("auto", 0.0, 5, inline_max_us=1_000_000)) == {"MainThread"}
    slow = _placed("auto", 0.002, 4, inline_max_us=100)
    assert slow == ["MainThread", "tg-m-0", "tg-m-0", "tg-m-0"]


def test_auto_keeps_a_few_batches_a_little_over_the_bound_on_the_loop() -> None:
    # 1.5 ms batches against a 1 ms bound: over it, far from ten times over it.
    placed = _placed("auto", 0.0015, TOLERATED + 3, inline_max_us=1000)
    assert placed == ["MainThread"] * (TOLERATED + 1) + ["tg-m-0"] * 2


def test_auto_tries_the_loop_again_after_a_window_of_threaded_batches_of_little_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each batch sleeps 11 ms: far over the 1 ms bound on the loop, but little CPU time in a
    # thread. After a window of such batches auto tries the loop again and falls back at
    # once. A shorter window than the server's keeps the test short.
    window = 128
    monkeypatch.setattr(placement, "WINDOW", window)
    monkeypatch.setattr(placement, "TOLERATED", 1)
    threads = _placed("auto", 0.011, window + 5, inline_max_us=1000)
    assert threads == ["MainThread", *["tg-m-0"] * window, "MainThread", *["tg-m-0"] * 3]
