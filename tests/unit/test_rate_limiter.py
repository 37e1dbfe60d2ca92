"""Triton's rate limiter: resources held while model code runs, shared out by priority."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from tensorgate.executors.rate_limiter import Need, RateLimiter, parse_resource

R_HOST = ("R", "host")


def _hammer(limiter: RateLimiter, needs: dict[str, Need], grants: int) -> list[str]:
    """Instances that run back to back until `grants` runs happened; who ran, in order."""
    order: list[str] = []
    stop = threading.Event()
    for need in needs.values():
        limiter.admit(need)

    def instance(name: str) -> None:
        gate = limiter.gate(needs[name])
        while not stop.is_set():
            with gate:
                order.append(name)
                if len(order) >= grants:
                    stop.set()
                time.sleep(0.002)  # model code: the others queue up meanwhile

    threads = [threading.Thread(target=instance, args=(n,)) for n in needs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads)
    return order


def test_instances_needing_more_than_there_is_take_turns() -> None:
    limiter = RateLimiter.from_flags(["R:3"])
    needs = {name: Need(((R_HOST, 2),)) for name in ("a", "b", "c")}
    order = _hammer(limiter, needs, 60)
    assert set(order) == {"a", "b", "c"}
    assert limiter.free() == {R_HOST: 3}


def test_a_shared_resource_is_never_overspent() -> None:
    limiter = RateLimiter()  # nothing declared: as much as the largest need, 2
    seen: list[int] = []
    lock = threading.Lock()
    held = [0]
    needs = {name: Need(((R_HOST, 1 if name != "big" else 2),)) for name in ("x", "y", "big")}
    for need in needs.values():
        limiter.admit(need)

    def run(name: str) -> None:
        gate = limiter.gate(needs[name])
        for _ in range(30):
            with gate:
                with lock:
                    held[0] += needs[name].counts[0][1]
                    seen.append(held[0])
                time.sleep(0.001)
                with lock:
                    held[0] -= needs[name].counts[0][1]

    threads = [threading.Thread(target=run, args=(n,)) for n in needs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert max(seen) == 2 and len(seen) == 90


def test_priority_n_gets_one_turn_in_n_of_priority_one() -> None:
    limiter = RateLimiter.from_flags(["R:1"])
    needs = {
        "first": Need(((R_HOST, 1),), priority=1),
        "second": Need(((R_HOST, 1),), priority=1),
        "slow": Need(((R_HOST, 1),), priority=4),
    }
    order = _hammer(limiter, needs, 150)
    counts = Counter(order[:150])
    # Weighted shares 4:4:1, that is ~17 of 150; an unweighted limiter would give it ~50.
    assert counts["slow"] < 35, counts
    assert counts["first"] > 40 and counts["second"] > 40, counts


def test_global_and_per_device_resources_are_counted_apart() -> None:
    limiter = RateLimiter.from_flags(["G:1", "D:1:0"])
    on_gpu0 = Need(((("D", "cuda:0"), 1),))
    on_gpu1 = Need(((("D", "cuda:1"), 1),))  # D:1 was declared for device 0 only
    shared = Need(((("G", None), 1),))
    for need in (on_gpu0, on_gpu1, shared):
        limiter.admit(need)
    with limiter.gate(on_gpu0), limiter.gate(on_gpu1):
        assert limiter.free()[("D", "cuda:0")] == 0 and limiter.free()[("D", "cuda:1")] == 0
    with limiter.gate(shared):
        assert limiter.free()[("G", None)] == 0
    assert set(limiter.free().values()) == {1}


def test_a_need_beyond_a_declared_count_fails_the_load_by_name() -> None:
    limiter = RateLimiter.from_flags(["R:1"])
    with pytest.raises(ValueError, match=r"needs 2 of resource 'R' \(on host\).* gives it 1"):
        limiter.admit(Need(((R_HOST, 2),)))


@pytest.mark.parametrize("text", ["R", "R:x", ":1", "R:1:gpu", "R:-1"])
def test_bad_resource_flags_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="rate_limit_resource"):
        parse_resource(text)


class _Recorder:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def __enter__(self) -> None:
        self.events.append("enter")

    def __exit__(self, *exc: object) -> None:
        self.events.append("exit")


class _Backend:
    def close(self) -> None:
        pass


def test_both_kinds_of_instance_run_model_code_inside_their_gate() -> None:
    import asyncio
    from typing import Any

    from tensorgate.executors.instance_pool import InstancePool
    from tensorgate.executors.instance_threads import InstanceThreads

    pooled: list[str] = []
    threaded: list[str] = []
    pool = InstancePool[Any]("m", [_Backend()], gates=[_Recorder(pooled)])  # type: ignore[list-item]
    threads = InstanceThreads("m", [_Backend()], [_Recorder(threaded)])  # type: ignore[list-item]

    async def run() -> None:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pool.run(lambda _: pooled.append("batch"), done.set_result)
        await done
        await threads.instances[0].call(lambda: threaded.append("step"))

    asyncio.run(run())
    pool.close()
    threads.close()
    assert pooled == ["enter", "batch", "exit"]
    assert threaded == ["enter", "step", "exit"]
