"""The sequence batcher's policy: which instance and batch slot each sequence holds, and
which requests run next. Pure and synchronous, with time passed in, as batching/policy.py.

It follows Triton's sequence batcher:

- A sequence is a run of requests with one correlation id, opened by a request flagged
  START and closed by one flagged END. It holds one slot of one instance from its start to
  its end, so every request of it runs on the same instance, one at a time, in order.
- Each instance has a fixed number of slots (direct: the batch slots, `max_batch_size`;
  oldest: `max_candidate_sequences`). A sequence that starts while every slot is taken
  waits in a bounded backlog for one to free; beyond the bound it is refused.
- A batch for an instance takes the next request of each of its sequences that has one
  (direct: at its slot's row; oldest: the oldest first, up to `max_batch_size`).
- A sequence with nothing queued or running for `max_sequence_idle_microseconds` is
  released; a later request with its id is refused as not started.
- A ready batch may wait up to `max_queue_delay_microseconds` for more sequences: with
  direct, until `minimum_slot_utilization` of the instance's slots are ready (0, the
  default, waits for nothing); with oldest, until a `preferred_batch_size` or the maximum
  batch can be formed.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from tensorgate.errors import InvalidArgument, ResourceExhausted

CorrelationId = int | str


@dataclass(frozen=True, slots=True)
class BatchWait:
    """How long a ready batch may wait for more sequences, and what ends the wait early."""

    delay_ns: int = 0
    min_utilization: float = 0.0  # direct: the share of slots ready that sends a batch
    preferred: tuple[int, ...] = ()  # oldest: batch sizes sent as soon as they can form


@dataclass(slots=True, eq=False)
class SequenceRequest:
    """One request of a sequence; `handle` is the runner's, opaque here."""

    start: bool
    end: bool
    enqueued_ns: int
    handle: Any = None


@dataclass(slots=True, eq=False)
class Sequence:
    """A live sequence and where it runs; `instance` is -1 while it waits for a slot."""

    corrid: CorrelationId
    last_ns: int
    instance: int = -1
    slot: int = -1
    pending: deque[SequenceRequest] = field(default_factory=deque)
    running: bool = False
    ended: bool = False  # its END request has arrived: it takes no more requests
    state: Any = None  # the runner's implicit state (None: the initial one), opaque here


class SequenceSlots:
    """Slots of every instance of one sequence model, and the sequences holding them."""

    def __init__(
        self,
        model: str,
        instances: int,
        slots: int,
        max_batch: int,
        idle_ns: int,
        max_backlog: int,
        direct: bool,
        wait: BatchWait | None = None,
    ) -> None:
        self.model = model
        self.slots = slots
        self.wait = wait or BatchWait()
        self.max_batch = max_batch
        self.idle_ns = idle_ns
        self.max_backlog = max_backlog
        self.direct = direct
        self.sequences: dict[CorrelationId, Sequence] = {}
        self.backlog: deque[Sequence] = deque()
        # Free slots per instance, lowest first: direct batches stay as short as they can.
        self._free = [list(range(slots)) for _ in range(instances)]
        self._held = [0] * instances

    def add(self, corrid: CorrelationId, request: SequenceRequest, now_ns: int) -> Sequence:
        """Queue a request on its sequence, opening the sequence on START."""
        sequence = self.sequences.get(corrid)
        if request.start:
            if sequence is not None:
                raise InvalidArgument(
                    f"model '{self.model}': sequence {corrid!r} is already running: a START "
                    "request for it is only accepted after its END"
                )
            if len(self.backlog) >= self.max_backlog and not self._has_free_slot():
                raise ResourceExhausted(
                    f"model '{self.model}': every sequence slot is taken and "
                    f"{len(self.backlog)} sequences wait for one, the limit"
                )
            sequence = self.sequences[corrid] = Sequence(corrid, now_ns)
            self._place(sequence)
        elif sequence is None:
            raise InvalidArgument(
                f"model '{self.model}': sequence {corrid!r} has not started or has "
                "expired: its first request must carry sequence_start"
            )
        elif sequence.ended:
            raise InvalidArgument(
                f"model '{self.model}': sequence {corrid!r} has ended: start a new one"
            )
        sequence.pending.append(request)
        sequence.last_ns = now_ns
        sequence.ended = request.end
        return sequence

    def _has_free_slot(self) -> bool:
        return any(self._free)

    def _place(self, sequence: Sequence) -> bool:
        """Give the sequence a slot on the least loaded instance with one free."""
        candidates = [i for i, free in enumerate(self._free) if free]
        if not candidates:
            self.backlog.append(sequence)
            return False
        instance = min(candidates, key=lambda i: self._held[i])
        sequence.instance = instance
        sequence.slot = heapq.heappop(self._free[instance])
        self._held[instance] += 1
        return True

    def ready(self, instance: int) -> list[Sequence]:
        """The sequences of `instance` whose next request can run now, in batch order."""
        ready = [
            s
            for s in self.sequences.values()
            if s.instance == instance and s.pending and not s.running
        ]
        if self.direct:
            ready.sort(key=lambda s: s.slot)
        else:
            ready.sort(key=lambda s: s.pending[0].enqueued_ns)
        return ready[: self.max_batch]

    def due(self, batch: list[Sequence], now_ns: int) -> tuple[int, int]:
        """How many of a ready `batch` go now and, when none may go yet, how many ns until
        they may (0 and that wait; the wait runs from the oldest request's arrival)."""
        wait = self.wait
        if not wait.delay_ns:
            return len(batch), 0
        if self.direct:
            if not wait.min_utilization or len(batch) >= wait.min_utilization * self.slots:
                return len(batch), 0
        else:
            if len(batch) >= self.max_batch:
                return len(batch), 0
            fitting = [size for size in wait.preferred if size <= len(batch)]
            if fitting:
                return max(fitting), 0
        remaining = min(s.pending[0].enqueued_ns for s in batch) + wait.delay_ns - now_ns
        return (len(batch), 0) if remaining <= 0 else (0, remaining)

    def taken(self, batch: list[Sequence]) -> None:
        """The batch's requests are running."""
        for sequence in batch:
            sequence.running = True

    def finished(
        self, batch: list[Sequence], now_ns: int, again: Collection[Sequence] = ()
    ) -> list[int]:
        """The batch's requests are done: drop them, release sequences that ended. The
        requests of the sequences in `again` were rescheduled (iterative sequences): each
        stays at its sequence's head and runs in a later batch. Returns the instances that
        took sequences from the backlog (they have work now)."""
        woken: list[int] = []
        for sequence in batch:
            sequence.running = False
            sequence.last_ns = now_ns
            if sequence in again:
                continue
            request = sequence.pending.popleft()
            if request.end:
                woken += self._release(sequence)
        return woken

    def drop(self, sequence: Sequence, request: SequenceRequest) -> list[int]:
        """Forget a queued request whose caller left. The sequence stays (its client may go
        on) and, left idle, expires; a dropped END reopens it for another END. A request
        already running stays: its batch is under way, and `finished` takes it off. A
        sequence of one request (START and END) ends with it. Returns the instances that
        took sequences from the backlog."""
        if sequence.running and sequence.pending and sequence.pending[0] is request:
            return []
        try:
            sequence.pending.remove(request)
        except ValueError:
            return []
        if request.start and request.end and not sequence.pending:
            return self._release(sequence)
        if request.end:
            sequence.ended = False
        return []

    def expire(self, now_ns: int) -> list[int]:
        """Release sequences idle past the limit; returns instances that took new ones."""
        woken: list[int] = []
        if not self.idle_ns:
            return woken
        for sequence in list(self.sequences.values()):
            idle = not sequence.pending and not sequence.running
            if idle and sequence.last_ns + self.idle_ns <= now_ns:
                woken += self._release(sequence)
        return woken

    def next_expiry_ns(self) -> int:
        """When the next idle sequence expires; 0 when none can."""
        times = [
            s.last_ns + self.idle_ns
            for s in self.sequences.values()
            if not s.pending and not s.running
        ]
        return min(times) if times and self.idle_ns else 0

    def _release(self, sequence: Sequence) -> list[int]:
        self.sequences.pop(sequence.corrid, None)
        if sequence.instance < 0:
            self.backlog.remove(sequence)
            return []
        instance = sequence.instance
        heapq.heappush(self._free[instance], sequence.slot)
        self._held[instance] -= 1
        if self.backlog:
            waiting = self.backlog.popleft()
            self._place(waiting)
            return [waiting.instance]
        return []
