"""The batching policy: which queued requests form the next batch, and when to send it.

Pure and synchronous, with time passed in, so every rule is testable without an event loop.
It follows Triton's dynamic batcher as its users configure it (`dynamic_batching` in
config.pbtxt):

- Batches are counted in rows of the batch dimension: a request of 8 rows counts 8.
- A batch takes queued requests in priority order (level 1 first), oldest first within a
  level, and stops at the first request whose non-batch shapes differ from the batch's or
  that would overflow `max_batch_size`: requests are never reordered to fill a batch.
- A batch that reaches a preferred size (the largest one reachable) goes at once; otherwise
  it goes when it cannot grow, when `max_queue_delay_microseconds` has passed since its
  oldest request was queued, or at once when the delay is 0.
- Per-level queue policies: `max_queue_size` (full → RESOURCE_EXHAUSTED at once), default
  timeouts that requests may shorten when `allow_timeout_override`, and on timeout either
  REJECT (the request fails) or DELAY (it waits behind every request of its level that has
  not timed out).

Removal is lazy: a cancelled, expired or taken request is marked and dropped from its deque
when it reaches the front, so cancelling is O(1) and the deques stay in arrival order.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tensorgate_protos import model_config_pb2 as mc

from tensorgate.errors import InvalidArgument, ModelLoadError, ResourceExhausted

# Request states. Only QUEUED and DELAYED requests are in a queue; the others wait to be
# dropped from the front of their deque.
QUEUED, DELAYED, TAKEN, DONE = range(4)


@dataclass(slots=True, eq=False)
class Pending:
    """A request waiting in a model's queue. `handle` is the scheduler's, opaque here."""

    rows: int
    key: Hashable  # requests with different keys (non-batch shapes) never share a batch
    level: int  # index into the policy's levels: 0 is priority 1, the highest
    enqueued_ns: int
    timeout_at_ns: int = 0  # 0: no queue timeout
    handle: Any = None
    state: int = QUEUED


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """What happens to requests of one priority level while they wait."""

    max_queue_size: int  # always bounded: the server's cap applies when the config says 0
    default_timeout_ns: int = 0
    allow_timeout_override: bool = False
    delay_on_timeout: bool = False  # timeout_action DELAY; REJECT otherwise

    @classmethod
    def from_config(cls, policy: mc.ModelQueuePolicy, server_cap: int) -> QueuePolicy:
        size = policy.max_queue_size
        return cls(
            max_queue_size=min(size, server_cap) if size else server_cap,
            default_timeout_ns=policy.default_timeout_microseconds * 1000,
            allow_timeout_override=policy.allow_timeout_override,
            delay_on_timeout=policy.timeout_action == mc.ModelQueuePolicy.DELAY,
        )

    def timeout_ns(self, requested_us: int) -> int:
        """The queue timeout of a request; a request may only shorten the default."""
        default = self.default_timeout_ns
        if self.allow_timeout_override and requested_us > 0:
            requested = requested_us * 1000
            if default == 0 or requested < default:
                return requested
        return default


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    """A model's batching rules, resolved once from its config."""

    max_batch_size: int  # rows per batch; 1 when the model does not batch
    dynamic: bool  # False: one request per execution (no dynamic_batching, or no batch dim)
    max_queue_delay_ns: int = 0
    preferred: frozenset[int] = frozenset()
    levels: tuple[QueuePolicy, ...] = (QueuePolicy(1024),)
    default_level: int = 0
    preserve_ordering: bool = False
    # Whether two valid requests can differ in non-batch shapes or in which inputs they
    # carry (variable dims, optional inputs); when not, every request has the same key.
    shapes_vary: bool = True
    # Inputs whose shapes may differ within a batch (`allow_ragged_batch`): not in the key.
    ragged: frozenset[str] = frozenset()

    @property
    def max_preferred(self) -> int:
        """A batch this big goes at once."""
        return max(self.preferred) if self.preferred else self.max_batch_size

    @classmethod
    def from_config(cls, config: mc.ModelConfig, server_cap: int) -> BatchingPolicy:
        """Read `max_batch_size` and `dynamic_batching`; a bad setting fails the load."""
        batching = config.dynamic_batching
        dynamic = config.max_batch_size > 0 and config.HasField("dynamic_batching")
        count = batching.priority_levels
        default_policy = QueuePolicy.from_config(batching.default_queue_policy, server_cap)
        levels = tuple(
            QueuePolicy.from_config(batching.priority_queue_policy[level], server_cap)
            if level in batching.priority_queue_policy
            else default_policy
            for level in range(1, count + 1)
        ) or (default_policy,)
        default_level = batching.default_priority_level
        _check(config, count, default_level)
        return cls(
            max_batch_size=max(config.max_batch_size, 1),
            dynamic=dynamic,
            max_queue_delay_ns=batching.max_queue_delay_microseconds * 1000,
            preferred=frozenset(batching.preferred_batch_size),
            levels=levels,
            default_level=max(default_level - 1, 0),
            preserve_ordering=batching.preserve_ordering,
            shapes_vary=not config.input or any(t.optional or -1 in t.dims for t in config.input),
            ragged=frozenset(t.name for t in config.input if t.allow_ragged_batch),
        )

    def level_for(self, priority: int) -> int:
        """Queue index for a request's `priority` parameter (0: the default level)."""
        if priority == 0 or len(self.levels) == 1:
            # Triton ignores priorities when the model has no priority levels.
            return self.default_level
        if not 1 <= priority <= len(self.levels):
            raise InvalidArgument(
                f"priority {priority} is out of range: the model has priority levels "
                f"1 (highest) to {len(self.levels)}, and 0 means the default"
            )
        return priority - 1


def queue_parameters(params: dict[str, Any]) -> tuple[int, int]:
    """A request's `priority` and `timeout` (microseconds) parameters, as Triton reads them."""
    if not params:
        return 0, 0
    values = []
    for key in ("priority", "timeout"):
        value = params.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(
                f"parameter '{key}' must be a non-negative integer, got {value!r}"
            )
        values.append(value)
    return values[0], values[1]


def _check(config: mc.ModelConfig, count: int, default_level: int) -> None:
    batching = config.dynamic_batching
    if count and not 1 <= default_level <= count:
        raise ModelLoadError(
            f"dynamic_batching.default_priority_level must be in 1..{count}, got {default_level}"
        )
    if not count and default_level:
        raise ModelLoadError("default_priority_level is set but priority_levels is 0")
    for level in batching.priority_queue_policy:
        if not 1 <= level <= count:
            raise ModelLoadError(f"priority_queue_policy names level {level}, not in 1..{count}")
    for size in batching.preferred_batch_size:
        if not 1 <= size <= config.max_batch_size:
            raise ModelLoadError(
                f"preferred_batch_size {size} must be in 1..max_batch_size "
                f"({config.max_batch_size})"
            )


@dataclass(slots=True)
class _Level:
    policy: QueuePolicy
    queued: deque[Pending] = field(default_factory=deque)
    delayed: deque[Pending] = field(default_factory=deque)
    live: int = 0  # QUEUED + DELAYED requests of this level


@dataclass(frozen=True, slots=True)
class Plan:
    """The next batch to execute, or the time to look again (`wait_until_ns`, 0: on arrival)."""

    batch: list[Pending]
    wait_until_ns: int = 0


class BatchQueue:
    """The queued requests of one model, one bounded queue per priority level."""

    def __init__(self, policy: BatchingPolicy) -> None:
        self.policy = policy
        self._levels = [_Level(p) for p in policy.levels]
        self._timeouts: list[tuple[int, int, Pending]] = []  # heap of (timeout_at, tie, req)
        self._tie = 0
        self.live = 0

    def push(self, item: Pending) -> None:
        """Queue a request, or raise RESOURCE_EXHAUSTED at once when its level is full."""
        level = self._levels[item.level]
        if level.live >= level.policy.max_queue_size:
            raise ResourceExhausted(
                f"the queue is full ({level.live} requests waiting at priority "
                f"{item.level + 1}, the limit); retry later"
            )
        level.queued.append(item)
        level.live += 1
        self.live += 1
        if item.timeout_at_ns:
            self._tie += 1
            heapq.heappush(self._timeouts, (item.timeout_at_ns, self._tie, item))
            if len(self._timeouts) > 2 * self.live + 64:
                self._compact_timeouts()

    def remove(self, item: Pending) -> bool:
        """Withdraw a request that is still queued (its client went away)."""
        if item.state not in (QUEUED, DELAYED):
            return False
        item.state = DONE
        self._levels[item.level].live -= 1
        self.live -= 1
        return True

    def next_timeout_ns(self) -> int:
        """When the earliest queued timeout falls due (0: none)."""
        return self._timeouts[0][0] if self._timeouts else 0

    def expire(self, now_ns: int) -> list[Pending]:
        """Apply timeouts that are due: DELAY moves a request back, REJECT returns it."""
        rejected: list[Pending] = []
        while self._timeouts and self._timeouts[0][0] <= now_ns:
            item = heapq.heappop(self._timeouts)[2]
            if item.state != QUEUED:
                continue
            level = self._levels[item.level]
            if level.policy.delay_on_timeout:
                item.state = DELAYED
                level.delayed.append(item)
            else:
                self.remove(item)
                rejected.append(item)
        return rejected

    def _compact_timeouts(self) -> None:
        # Entries of requests that already left the queue would otherwise pile up until
        # their (possibly long) timeouts fall due.
        self._timeouts = [e for e in self._timeouts if e[2].state == QUEUED]
        heapq.heapify(self._timeouts)

    def _in_order(self) -> Iterator[tuple[deque[Pending], int]]:
        for level in self._levels:
            yield level.queued, QUEUED
            yield level.delayed, DELAYED

    def plan(self, now_ns: int) -> Plan:
        """Pick the next batch by the policy's rules without taking it."""
        policy = self.policy
        batch: list[Pending] = []
        rows = 0
        preferred_len = 0
        full = False
        for requests, state in self._in_order():
            while requests and requests[0].state != state:
                requests.popleft()
            for item in requests:
                if item.state != state:
                    continue
                if batch and (item.key != batch[0].key or rows + item.rows > policy.max_batch_size):
                    full = True
                    break
                batch.append(item)
                rows += item.rows
                if rows in policy.preferred:
                    preferred_len = len(batch)
                if not policy.dynamic or rows >= policy.max_preferred:
                    full = True
                    break
            if full:
                break
        if not batch:
            return Plan([])
        if preferred_len:
            return Plan(batch[:preferred_len])
        send_at = batch[0].enqueued_ns + policy.max_queue_delay_ns
        if full or now_ns >= send_at:
            return Plan(batch)
        return Plan([], send_at)

    def take(self, batch: list[Pending]) -> None:
        """Mark a planned batch as leaving the queue."""
        for item in batch:
            item.state = TAKEN
            self._levels[item.level].live -= 1
        self.live -= len(batch)

    def drain(self) -> list[Pending]:
        """Remove and return every queued request (the model is going away)."""
        left = [
            item for requests, state in self._in_order() for item in requests if item.state == state
        ]
        for item in left:
            self.remove(item)
        return left
