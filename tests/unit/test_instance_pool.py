"""The instance pool: bounded waiting, cancellation before execution, parallel instances."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from tensorgate.backends.base import ModelSignature
from tensorgate.dataplane.types import Array
from tensorgate.errors import ResourceExhausted
from tensorgate.executors.instance_pool import InstancePool


class GatedBackend:
    """Blocks in execute until released; records what it ran."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.ran: list[float] = []

    def signature(self) -> ModelSignature | None:
        return None

    def execute(self, inputs: dict[str, Array]) -> dict[str, Array]:
        self.started.set()
        self.gate.wait(5)
        self.ran.append(float(inputs["X"][0]))
        return {"Y": inputs["X"] * 2}

    def close(self) -> None:
        self.gate.set()


def _job(value: float) -> dict[str, Array]:
    return {"X": np.array([value])}


def test_request_cancelled_while_waiting_is_never_executed() -> None:
    async def scenario() -> list[float]:
        backend = GatedBackend()
        pool = InstancePool("m", [backend], max_waiting=4)
        first = asyncio.create_task(pool.execute(_job(1)))
        await asyncio.to_thread(backend.started.wait, 5)
        second = asyncio.create_task(pool.execute(_job(2)))
        await asyncio.sleep(0.01)
        assert pool.waiting == 1
        second.cancel()
        await asyncio.sleep(0.01)
        assert pool.waiting == 0
        backend.gate.set()
        result = await first
        assert result.outputs["Y"].tolist() == [2.0]
        third = await pool.execute(_job(3))
        assert third.outputs["Y"].tolist() == [6.0]
        pool.close()
        return backend.ran

    assert asyncio.run(scenario()) == [1.0, 3.0]


def test_waiting_beyond_the_limit_is_rejected_at_once() -> None:
    async def scenario() -> None:
        backend = GatedBackend()
        pool = InstancePool("m", [backend], max_waiting=1)
        running = asyncio.create_task(pool.execute(_job(1)))
        await asyncio.to_thread(backend.started.wait, 5)
        waiting = asyncio.create_task(pool.execute(_job(2)))
        await asyncio.sleep(0.01)
        with pytest.raises(ResourceExhausted, match="waiting"):
            await pool.execute(_job(3))
        backend.gate.set()
        await asyncio.gather(running, waiting)
        pool.close()

    asyncio.run(scenario())


def test_instance_cancelled_mid_run_is_released_only_when_its_thread_finishes() -> None:
    async def scenario() -> None:
        backend = GatedBackend()
        pool = InstancePool("m", [backend], max_waiting=4)
        running = asyncio.create_task(pool.execute(_job(1)))
        await asyncio.to_thread(backend.started.wait, 5)
        running.cancel()
        await asyncio.sleep(0.01)
        follower = asyncio.create_task(pool.execute(_job(2)))
        await asyncio.sleep(0.01)
        assert not follower.done() and pool.waiting == 1  # instance still busy
        backend.gate.set()
        assert (await follower).outputs["Y"].tolist() == [4.0]
        pool.close()

    asyncio.run(scenario())


def test_instances_run_in_parallel() -> None:
    async def scenario() -> None:
        backends = [GatedBackend(), GatedBackend()]
        pool = InstancePool("m", list(backends), max_waiting=4)
        tasks = [asyncio.create_task(pool.execute(_job(v))) for v in (1, 2)]
        for backend in backends:
            assert await asyncio.to_thread(backend.started.wait, 5)
        for backend in backends:
            backend.gate.set()
        await asyncio.gather(*tasks)
        pool.close()

    asyncio.run(scenario())
