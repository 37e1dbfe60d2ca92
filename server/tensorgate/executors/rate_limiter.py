"""Triton's rate limiter: an instance runs model code only while it holds its resources.

With `--rate-limit execution_count`, an `instance_group` entry's `rate_limiter { resources
[...] priority: N }` says what each of its instances needs for every piece of model code it
runs (a batch, a sequence step, a step of a decoupled generator). Resources are named counts,
per device unless `global`: a GPU instance spends its GPU's, a CPU instance the host's. How
much of each there is comes from `--rate-limit-resource NAME:COUNT[:DEVICE]`; a resource not
named there has as much as the largest need of any instance loaded so far, so every instance
can run alone.

Waiting instances are served in turn, fewest turns first, where an instance of priority N
spends N for each turn it gets: priority 2 gets half the turns of priority 1 when both wait
(a priority of 0 counts as 1).
The first in turn that does not fit blocks the others (as in Triton), so an instance that needs
much is not starved by ones that need little.

Instances wait on their own threads, never on the event loop: a rate-limited model's batches
do not run inline.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from types import TracebackType

from tensorgate_protos import model_config_pb2 as mc

# A resource as counted: its name and device ("host", "cuda:N"; None: global).
Key = tuple[str, str | None]


@dataclass(frozen=True, slots=True)
class Need:
    """What one instance needs to run: resource counts, and its priority (1: most turns)."""

    counts: tuple[tuple[Key, int], ...]
    priority: int = 1


@dataclass(slots=True)
class _Waiter:
    need: Need
    turns: list[int]  # the instance's turns so far, weighted by its priority
    arrival: int
    granted: bool = False


def instance_needs(placements: list[tuple[mc.ModelInstanceGroup, str]]) -> list[Need | None]:
    """Each instance's need, from its group's `rate_limiter` and its device (None: it needs
    nothing); `placements` are the instances' (group, device), as runners/build.py lists them."""
    needs: list[Need | None] = []
    for group, device in placements:
        limiter = group.rate_limiter
        counts = tuple(
            ((r.name, None if getattr(r, "global") else _counted_on(device)), r.count)
            for r in limiter.resources
            if r.count
        )
        needs.append(Need(counts, max(limiter.priority, 1)) if counts else None)
    return needs


def _counted_on(device: str) -> str:
    return device if device.startswith("cuda") else "host"


def parse_resource(text: str) -> tuple[str, int, str | None]:
    """NAME:COUNT[:DEVICE] as (name, count, "cuda:DEVICE" or None for every device)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise ValueError(f"rate_limit_resource {text!r} must be NAME:COUNT or NAME:COUNT:DEVICE")
    try:
        count = int(parts[1])
        device = f"cuda:{int(parts[2])}" if len(parts) == 3 else None
    except ValueError:
        raise ValueError(
            f"rate_limit_resource {text!r}: COUNT and DEVICE must be whole numbers"
        ) from None
    if count < 0:
        raise ValueError(f"rate_limit_resource {text!r}: COUNT must be >= 0")
    return parts[0], count, device


@dataclass
class RateLimiter:
    """The server's resources and the instances waiting for them. Thread-safe."""

    declared: dict[tuple[str, str | None], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._free: dict[Key, int] = {}
        self._capacity: dict[Key, int] = {}
        self._waiting: list[_Waiter] = []
        self._arrivals = itertools.count()
        # The weighted turns of the last grant: an instance that starts waiting after a rest
        # is lifted to it, so it cannot claim every turn until it has caught up.
        self._now = 0

    @classmethod
    def from_flags(cls, resources: list[str]) -> RateLimiter:
        declared: dict[tuple[str, str | None], int] = {}
        for text in resources:
            name, count, device = parse_resource(text)
            declared[name, device] = count
        return cls(declared)

    def admit(self, need: Need) -> None:
        """Count a loading instance's need: a resource nobody declared grows to fit it.
        Raises ValueError when a declared resource can never satisfy it."""
        with self._lock:
            for key, count in need.counts:
                capacity = self._declared_capacity(key)
                if capacity is None:
                    grown = max(self._capacity.get(key, 0), count)
                    self._free[key] = self._free.get(key, 0) + grown - self._capacity.get(key, 0)
                    self._capacity[key] = grown
                elif count > capacity:
                    name, device = key
                    where = "global" if device is None else f"on {device}"
                    raise ValueError(
                        f"rate_limiter needs {count} of resource '{name}' ({where}), but "
                        f"--rate-limit-resource gives it {capacity}"
                    )
                else:
                    self._capacity.setdefault(key, capacity)
                    self._free.setdefault(key, capacity)
            self._grant()

    def _declared_capacity(self, key: Key) -> int | None:
        name, device = key
        if (name, device) in self.declared:
            return self.declared[name, device]
        return self.declared.get((name, None))  # NAME:COUNT: global, and on every device

    def gate(self, need: Need) -> Gate:
        """The context an instance with `need` runs its model code in."""
        return Gate(self, need)

    def acquire(self, need: Need, turns: list[int]) -> None:
        with self._lock:
            turns[0] = max(turns[0], self._now)
            waiter = _Waiter(need, turns, next(self._arrivals))
            self._waiting.append(waiter)
            self._grant()
            while not waiter.granted:
                self._lock.wait()

    def release(self, need: Need) -> None:
        with self._lock:
            for key, count in need.counts:
                self._free[key] += count
            self._grant()

    def _grant(self) -> None:
        """Hand resources to waiters in turn order until the first that does not fit."""
        self._waiting.sort(key=lambda w: (w.turns[0], w.arrival))
        granted = 0
        for waiter in self._waiting:
            if any(self._free[key] < count for key, count in waiter.need.counts):
                break
            for key, count in waiter.need.counts:
                self._free[key] -= count
            self._now = waiter.turns[0]
            waiter.turns[0] += waiter.need.priority
            waiter.granted = True
            granted += 1
        if granted:
            del self._waiting[:granted]
            self._lock.notify_all()

    def free(self) -> dict[Key, int]:
        """Resources not held right now (for tests and the status page)."""
        with self._lock:
            return dict(self._free)


class Gate:
    """`with gate:` around an instance's model code holds its resources for that time."""

    __slots__ = ("limiter", "need", "turns")

    def __init__(self, limiter: RateLimiter, need: Need) -> None:
        self.limiter = limiter
        self.need = need
        self.turns = [0]  # this instance's weighted turns, kept across its runs

    def __enter__(self) -> None:
        self.limiter.acquire(self.need, self.turns)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.limiter.release(self.need)
