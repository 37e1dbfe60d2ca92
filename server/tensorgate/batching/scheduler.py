"""The dynamic batcher: the asyncio side of the batching policy, a `ModelRunner`.

Event-driven rather than a loop of its own: a batch is cut whenever something can change the
answer (a request arrives, an instance finishes, a delay or timeout falls due). Requests are
arrays plus their row count; the scheduler knows nothing of gRPC or HTTP.

An arriving request does not cut a batch at once: it asks for one cut at the end of the
loop's current pass (`call_soon`, once however many arrive). Requests that arrive together
(the HTTP requests of one socket read, the gRPC calls of one completion round) then leave as
one batch, where cutting at once sent the first alone to an idle instance and the rest
after it: every batch costs two thread hand-offs whatever its size. The wait is one pass of
the loop, not a timer.

A request whose caller is cancelled (client gone, deadline passed) leaves the queue and is
never executed; if its batch is already running, its result is dropped.

An instance takes its batch itself, on its own thread, when it starts (`_start`), not when
the loop wakes it. A thread needs the GIL to start, and a busy loop lets go of it only when
it runs out of work: under load a woken thread waits hundreds of microseconds, while
requests keep arriving. Taken at the start, the batch holds them too; cut when the thread
was woken, it held only those queued then, and the rest waited for another batch
(benchmarks/NOTES.md has the measurements). The loop wakes one instance at a time; one
that takes its batch and leaves requests behind asks the loop to wake another if one is
free.

An instance that finishes a batch cuts its next one itself, on its own thread, before it
reports back (`_pull`), so a loaded model's instance never sleeps between batches waiting
for the loop. The queue is therefore shared with instance threads: every change to it, and
to the count of running batches, is made under `_lock`, held only for the few microseconds
a plan takes. Whatever needs the loop (timeouts falling due, a delay to wait out) is left to
the loop's `_schedule`, which the finished batch's report runs anyway.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from functools import partial
from typing import Any

from tensorgate.backends.base import Backend
from tensorgate.batching.assemble import Staging, split_outputs
from tensorgate.batching.placement import AutoPlacement
from tensorgate.batching.policy import BatchingPolicy, BatchQueue, Pending, queue_parameters
from tensorgate.batching.ragged import RaggedBatching
from tensorgate.dataplane.types import Array, InferRequest
from tensorgate.errors import DeadlineExceeded, ResourceExhausted, TensorgateError, Unavailable
from tensorgate.executors.instance_pool import Done, InstancePool, Job
from tensorgate.executors.instance_threads import in_daemon_thread
from tensorgate.runners.base import (
    BatchTiming,
    RunnerStatus,
    Scheduled,
    Streamed,
    one_result,
)

log = logging.getLogger(__name__)
# Weight of the newest batch in the averages of batch time and size.
_AVERAGING = 0.1

# (batch rows, compute_input ns, compute_infer ns, compute_output ns) of one execution.
ExecutionObserver = Callable[[int, int, int, int], None]


@dataclass(slots=True)
class _Executed:
    """What an instance thread returns for one batch."""

    parts: list[Any]  # per request: its outputs, or the exception that failed it alone
    started_ns: int
    merged_ns: int
    inferred_ns: int
    # CPU time of the running thread over the batch, taken for execution "auto" only: unlike
    # the wall times, it leaves out the wait for the GIL after the model's native call.
    cpu_ns: int = 0


class _Queued(asyncio.Future[Scheduled]):
    """The future of a request queued by a caller with no task of its own (a stream's
    request, `Scheduler.start`): cancelling it takes the request out of the queue if no
    batch has taken it yet. Callers that await (`run`) get a plain future, which a task
    awaits faster, and withdraw the request when their await is cancelled.
    """

    __slots__ = ("pending", "scheduler")
    pending: Pending | None  # None once answered or withdrawn
    scheduler: Scheduler

    def cancel(self, msg: Any | None = None) -> bool:
        if not super().cancel(msg):
            return False
        pending, self.pending = self.pending, None
        if pending is not None:
            self.scheduler._withdraw(pending)
        return True


class _Ticket:
    """The scheduler's side of a queued request."""

    __slots__ = ("future", "inputs", "request", "seq")

    def __init__(
        self,
        future: asyncio.Future[Scheduled],
        inputs: dict[str, Array],
        seq: int,
        request: InferRequest | None,
    ):
        self.future = future
        self.inputs = inputs
        self.seq = seq
        # Its id, parameters and requested outputs, for models that take requests one by one.
        self.request = request


def _run_batch(
    staging: dict[int, Staging],
    inputs: list[dict[str, Array]],
    rows: list[int],
    cpu_timed: bool,
    ragged: RaggedBatching | None,
    batch: list[Pending],
    backend: Backend,
) -> _Executed:
    started = time.perf_counter_ns()
    cpu = time.thread_time_ns() if cpu_timed else 0  # a system call: only when it is read
    execute_requests = getattr(backend, "execute_requests", None)
    if execute_requests is not None:  # it takes the batch's requests one by one, unmerged
        parts = execute_requests(inputs, _requests_of(batch))
        ended = time.perf_counter_ns()
        return _Executed(parts, started, started, ended, _cpu_since(cpu, cpu_timed))
    stage = staging.get(id(backend)) or staging.setdefault(id(backend), Staging())
    merged = stage.merge(inputs) if ragged is None else ragged.merge(stage, inputs)
    merged_at = time.perf_counter_ns()
    outputs = backend.execute(merged)
    inferred_at = time.perf_counter_ns()
    if len(inputs) > 1:
        outputs = stage.detach(outputs)
    parts = split_outputs(outputs, rows) if ragged is None else ragged.split(outputs, inputs, rows)
    return _Executed(parts, started, merged_at, inferred_at, _cpu_since(cpu, cpu_timed))


def _requests_of(batch: list[Pending]) -> list[InferRequest | None]:
    """The batch's requests for a model that takes them one by one, each able to tell its
    model code whether its caller left (while it runs, only a caller that left has its
    future done). Only such models pay for the check."""
    requests = []
    for pending in batch:
        ticket: _Ticket = pending.handle
        if ticket.request is not None:
            ticket.request.cancelled = ticket.future.done
        requests.append(ticket.request)
    return requests


def _cpu_since(cpu_ns: int, cpu_timed: bool) -> int:
    return time.thread_time_ns() - cpu_ns if cpu_timed else 0


Outcome = Scheduled | BaseException | None  # None: the caller is gone, nothing to deliver
# What an instance's job hands the loop: the batch's Done and its result, or None when the
# instance found nothing due when it started.
_Ran = tuple[Done[_Executed], _Executed | BaseException] | None


def _run_job(job: Job[_Executed], backend: Backend) -> _Ran:
    work, done = job
    try:
        return done, work(backend)
    except BaseException as exc:  # handed to the loop, which decides
        return done, exc


class _Watched:
    """A batch under a timeout: when it started, on which instance, and how to fail it."""

    __slots__ = ("backend", "done", "started_ns")

    def __init__(self, backend: Backend, done: Done[_Executed]) -> None:
        self.started_ns = time.monotonic_ns()
        self.backend = backend
        self.done = done


class Scheduler:
    """The dynamic batcher: queues one model version's requests, feeds batches to its
    instances. A `ModelRunner`."""

    decoupled = False

    def __init__(
        self,
        name: str,
        policy: BatchingPolicy,
        pool: InstancePool[_Ran],
        on_execution: ExecutionObserver | None = None,
        timeout_s: float = 0.0,
        max_wait_s: float = 0.0,
        execution: str = "thread",
        inline_max_us: int = 200,
        ragged: RaggedBatching | None = None,
    ) -> None:
        self.name = name
        # How batches of differently shaped requests are joined and split; None: by rows.
        self._ragged = ragged
        # Where batches run: "thread" (an instance's thread), "inline" (on the event loop,
        # at the end of its pass) or "auto" (either, as batching/placement.py decides).
        self.execution = execution
        self._auto = AutoPlacement(inline_max_us * 1000) if execution == "auto" else None
        self._inline = execution in ("inline", "auto")
        # Shed a request whose expected queue wait is longer (latency under overload); 0: off.
        self.max_wait_ns = int(max_wait_s * 1e9)
        # A batch running longer fails its requests and its instance is replaced; 0: never.
        self.timeout_s = timeout_s
        self._watched: dict[int, _Watched] = {}  # id(backend) -> its batch, with a timeout
        # Recent batches, averaged (the expected queue wait of deadline-aware admission).
        self._batch_ns = 0.0
        self._batch_requests = 1.0
        self._watchdog: asyncio.TimerHandle | None = None
        self.policy = policy
        self.pool = pool
        self.queue = BatchQueue(policy)
        self._on_execution = on_execution
        self._running = 0  # batches executing now
        self._seq = 0
        self._next_delivery = 0
        self._held: dict[int, tuple[_Ticket, Outcome]] = {}  # preserve_ordering only
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0
        self._closing = False
        self._drained: asyncio.Future[None] | None = None
        self._staging: dict[int, Staging] = {}  # per instance, keyed by id(backend)
        self._lock = threading.Lock()  # the queue and _running, shared with instance threads
        self._schedule_pending = False
        self._waking = False  # an instance was woken and has not taken its batch yet
        self._loop: asyncio.AbstractEventLoop | None = None
        pool.pull_from(self._pull)
        pool.on_idle = self._schedule

    @property
    def queued(self) -> int:
        """Requests waiting for a batch."""
        return self.queue.live

    @property
    def running(self) -> int:
        """Batches executing now."""
        return self._running

    def run(self, request: InferRequest, rows: int) -> Awaitable[Scheduled]:
        """The runner's entry: the request's queue parameters, then `submit`."""
        priority, timeout_us = queue_parameters(request.parameters)
        if self.queue.live and (request.deadline_ns or self.max_wait_ns):
            self._admit(request.deadline_ns)
        return self.submit(request.inputs, rows, priority, timeout_us, request)

    def start(self, request: InferRequest, rows: int) -> asyncio.Future[Scheduled]:
        """`run` for a caller with no task of its own: the request's share of a batch, a
        future whose cancellation withdraws the request."""
        # The same admission as `run`, written out in both: a helper cost every unary
        # request a call more, measured in the loop's instructions (benchmarks/NOTES.md).
        priority, timeout_us = queue_parameters(request.parameters)
        if self.queue.live and (request.deadline_ns or self.max_wait_ns):
            self._admit(request.deadline_ns)
        future = _Queued()
        future.scheduler = self
        future.pending = self._enqueue(request.inputs, rows, priority, timeout_us, request, future)
        return future  # a cycle with its Pending, broken when it is answered or withdrawn

    def expected_wait_ns(self) -> int:
        """How long a request queued now would wait for its batch to start, from the
        recent batches' duration and size: 0 before any batch ran."""
        if not self._batch_ns:
            return 0
        instances = max(1, self.pool.size)
        batches_ahead = self.queue.live / max(1.0, self._batch_requests) / instances
        return int(-(-batches_ahead // 1) * self._batch_ns)

    def _admit(self, deadline_ns: int) -> None:
        """Refuse at once a request that would wait longer than --max-queue-wait, or whose
        deadline comes before its batch would start."""
        wait_ns = self.expected_wait_ns()
        if self.max_wait_ns and wait_ns > self.max_wait_ns:
            raise ResourceExhausted(
                f"model '{self.name}' has {self.queue.live} requests queued, about "
                f"{wait_ns / 1e6:.0f} ms of waiting, more than --max-queue-wait allows"
            )
        left_ns = deadline_ns - time.monotonic_ns()
        if deadline_ns and wait_ns > left_ns:
            raise DeadlineExceeded(
                f"model '{self.name}' has {self.queue.live} requests queued, about "
                f"{wait_ns / 1e6:.0f} ms of waiting; the request's deadline is "
                f"{max(left_ns, 0) / 1e6:.0f} ms away"
            )

    def stream(self, request: InferRequest, rows: int) -> AsyncGenerator[Streamed, None]:
        return one_result(self.run(request, rows))

    def status(self) -> RunnerStatus:
        return RunnerStatus(self.queue.live, self._running, self.pool.size, self.pool.abandoned)

    @property
    def serving(self) -> bool:
        """False while every instance was abandoned and none has replaced it yet."""
        return self.pool.size > 0

    def discard(self) -> None:
        self.pool.close()

    async def submit(
        self,
        inputs: dict[str, Array],
        rows: int,
        priority: int = 0,
        timeout_us: int = 0,
        request: InferRequest | None = None,
    ) -> Scheduled:
        """Queue a request and wait for its share of a batch's outputs."""
        future: asyncio.Future[Scheduled] = asyncio.get_running_loop().create_future()
        item = self._enqueue(inputs, rows, priority, timeout_us, request, future)
        try:
            return await future
        except asyncio.CancelledError:
            self._withdraw(item)
            raise

    def _enqueue(
        self,
        inputs: dict[str, Array],
        rows: int,
        priority: int,
        timeout_us: int,
        request: InferRequest | None,
        future: asyncio.Future[Scheduled],
    ) -> Pending:
        """Queue a request answered through `future`; its entry in the queue."""
        if self._closing:
            raise Unavailable(f"model '{self.name}' is being unloaded")
        policy = self.policy
        level = policy.level_for(priority)
        now = time.perf_counter_ns()
        timeout_ns = policy.levels[level].timeout_ns(timeout_us)
        key: Hashable = 0
        if policy.dynamic and policy.shapes_vary:
            key = tuple(sorted((n, a.shape[1:]) for n, a in inputs.items()))
            if policy.ragged:  # a ragged input's shape does not keep requests apart
                key = tuple((n, () if n in policy.ragged else shape) for n, shape in key)
        item = Pending(
            rows,
            key,
            level,
            now,
            now + timeout_ns if timeout_ns else 0,
            _Ticket(future, inputs, self._seq, request),
        )
        with self._lock:
            self.queue.push(item)
            self._seq += 1
        if not self._schedule_pending:
            self._schedule_pending = True
            asyncio.get_running_loop().call_soon(self._schedule_soon)
        return item

    def _withdraw(self, item: Pending) -> None:
        """A cancelled request: out of the queue if still there; a running batch's result
        for it is dropped when it comes."""
        with self._lock:
            removed = self.queue.remove(item)
        if removed:
            self._deliver(item.handle, None)
            self._check_drained()

    # Scheduling ------------------------------------------------------------------------

    def _schedule(self) -> None:
        with self._lock:
            self._schedule_locked()

    def _schedule_soon(self) -> None:
        self._schedule_pending = False
        self._schedule()

    def _schedule_locked(self) -> None:
        queue = self.queue
        now = time.perf_counter_ns()
        due = queue.next_timeout_ns()
        if due and due <= now:
            for item in queue.expire(now):
                waited_us = (now - item.enqueued_ns) // 1000
                self._deliver(
                    item.handle,
                    Unavailable(
                        f"Request timeout expired: it waited {waited_us} µs in the queue of "
                        f"model '{self.name}'"
                    ),
                )
        wake = 0
        pool = self.pool
        if queue.live and pool.idle and not self._waking:
            plan = queue.plan(now)
            if plan.batch:
                # The instance takes its batch when its thread starts, not now: see _start.
                self._waking = True
                self._running += 1
                self._loop = self._loop or asyncio.get_running_loop()
                if self._inline:
                    self._loop.call_soon(self._run_inline)
                else:
                    pool.run(self._start, self._job_done)
            else:
                wake = plan.wait_until_ns
        due = queue.next_timeout_ns()
        if due and (not wake or due < wake):
            wake = due
        if wake:
            self._arm(wake, now)
        self._check_drained()

    def _arm(self, at_ns: int, now_ns: int) -> None:
        if self._timer is not None:
            if self._timer_at <= at_ns:
                return
            self._timer.cancel()
        self._timer_at = at_ns
        self._timer = asyncio.get_running_loop().call_later(
            max(at_ns - now_ns, 0) / 1e9, self._on_timer
        )

    def _on_timer(self) -> None:
        self._timer = None
        self._schedule()

    def _start(self, backend: Backend) -> _Ran:
        """On a woken instance's thread: take the batch that is due now, and run it.

        Taken here rather than when the loop woke the thread, because the thread needs the
        GIL to start, and gets it only when the busy loop lets go: hundreds of microseconds
        under load (benchmarks/handoff_latency.py). Requests that arrive meanwhile join this
        batch instead of waiting for the next one. None: nothing was due any more.
        """
        with self._lock:
            self._waking = False
            job = self._take_locked()
            more = job is not None and self.queue.live and self.pool.idle
        if job is None:
            return None
        if more and self._loop is not None:  # another instance is free for what is queued
            self._loop.call_soon_threadsafe(self._schedule)
        return self._run(job, backend)

    def _run_inline(self) -> None:
        """On the loop, outside the lock: take the due batch and run it here."""
        started = time.perf_counter_ns()
        self.pool.run_inline(self._start, self._job_done)
        took = time.perf_counter_ns() - started
        if self._auto is not None and self._auto.ran_inline(took):
            self._inline = False  # at once: longer batches must not hold the loop
            log.info(
                "model %s: batches on the event loop went over --inline-max-us (the last took "
                "%d us); running in threads",
                self.name,
                took // 1000,
            )

    def _job_done(self, ran: _Ran | BaseException) -> None:
        """On the loop: an instance's job is over; deliver its batch's outcome."""
        if isinstance(ran, BaseException):  # _start itself failed: a bug, but keep serving
            log.error("model %s: an instance could not take its batch", self.name, exc_info=ran)
            ran = None
        if ran is None:
            with self._lock:
                self._running -= 1
                self._schedule_locked()
            return
        done, result = ran
        done(result)

    def _take_locked(self) -> Job[_Executed] | None:
        """Take the batch that is due now, if any (with `_lock` held)."""
        queue = self.queue
        now = time.perf_counter_ns()
        due = queue.next_timeout_ns()
        if due and due <= now:
            return None  # expired requests are answered on the loop first
        plan = queue.plan(now)
        if not plan.batch:
            return None  # a delay to wait out: the loop arms its timer
        queue.take(plan.batch)
        return self._job(plan.batch, now)

    def _job(self, batch: list[Pending], dispatched_ns: int) -> Job[_Executed]:
        inputs = [p.handle.inputs for p in batch]
        rows = [p.rows for p in batch]
        work = partial(
            _run_batch, self._staging, inputs, rows, self._auto is not None, self._ragged, batch
        )
        return work, partial(self._finished, batch, dispatched_ns)

    def _pull(self) -> Job[_Ran] | None:
        """On an instance thread that just finished a batch: the batch to run next, if due."""
        if not self.queue.live:  # a stale read only sends the choice to the loop's _schedule
            return None
        with self._lock:
            job = self._take_locked()
            if job is None:
                return None
            self._running += 1
        return partial(self._run, job), self._job_done

    def _run(self, job: Job[_Executed], backend: Backend) -> _Ran:
        """On an instance thread: run a batch, watched when the model has a timeout."""
        if not self.timeout_s:
            return _run_job(job, backend)
        key = id(backend)
        self._watched[key] = _Watched(backend, job[1])
        if self._loop is not None and self._watchdog is None:
            self._loop.call_soon_threadsafe(self._arm_watchdog)
        try:
            return _run_job(job, backend)
        finally:
            self._watched.pop(key, None)

    # The timeout ----------------------------------------------------------------------

    def _arm_watchdog(self) -> None:
        if self._watchdog is None and self._watched:
            # A quarter of the timeout: a hung batch is failed within 1.25 timeouts.
            delay = max(self.timeout_s / 4, 0.01)
            self._watchdog = asyncio.get_running_loop().call_later(delay, self._watch)

    def _watch(self) -> None:
        """On the loop: fail the batches running past the timeout, replace their instances."""
        self._watchdog = None
        limit_ns = int(self.timeout_s * 1e9)
        now = time.monotonic_ns()
        for key, watched in list(self._watched.items()):
            if now - watched.started_ns < limit_ns or self._watched.pop(key, None) is None:
                continue
            self.pool.abandon(watched.backend)
            log.error(
                "model %s: a batch ran past the %.3g s timeout; its instance is abandoned "
                "and a new one is being created",
                self.name,
                self.timeout_s,
            )
            watched.done(
                DeadlineExceeded(
                    f"model '{self.name}' did not finish within its {self.timeout_s:g} s "
                    "timeout; the instance was replaced"
                )
            )
        self._arm_watchdog()

    def _finished(
        self, batch: list[Pending], dispatched_ns: int, result: _Executed | BaseException
    ) -> None:
        if isinstance(result, BaseException):
            for item in batch:
                # A copy per request: callers may add context to their error's message.
                error = copy.copy(result) if isinstance(result, TensorgateError) else result
                self._deliver(item.handle, error)
        else:
            now = time.perf_counter_ns()
            compute_input = result.merged_ns - dispatched_ns
            compute_infer = result.inferred_ns - result.merged_ns
            compute_output = now - result.inferred_ns
            rows = sum(item.rows for item in batch)
            if self._on_execution is not None:
                self._on_execution(rows, compute_input, compute_infer, compute_output)
            timing = BatchTiming(
                dispatched_ns, result.merged_ns, result.inferred_ns, now, rows, len(batch)
            )
            took = now - dispatched_ns
            if self._auto is not None and not self._inline:
                self._inline = self._auto.ran_threaded(result.cpu_ns)
                if self._inline:
                    log.info("model %s: batches back on the event loop", self.name)
            if self._batch_ns:
                self._batch_ns += _AVERAGING * (took - self._batch_ns)
                self._batch_requests += _AVERAGING * (len(batch) - self._batch_requests)
            else:
                self._batch_ns, self._batch_requests = float(took), float(len(batch))
            for item, outputs in zip(batch, result.parts, strict=True):
                if type(outputs) is not dict:  # one request's own error (execute_requests)
                    self._deliver(item.handle, outputs)
                    continue
                self._deliver(
                    item.handle,
                    Scheduled(
                        outputs,
                        dispatched_ns - item.enqueued_ns,
                        compute_input,
                        compute_infer,
                        compute_output,
                        timing,
                    ),
                )
        with self._lock:
            self._running -= 1
            self._schedule_locked()

    # Delivery --------------------------------------------------------------------------

    def _deliver(self, ticket: _Ticket, outcome: Outcome) -> None:
        if not self.policy.preserve_ordering:
            _resolve(ticket.future, outcome)
            return
        # Hold outcomes until every earlier request's outcome has gone out.
        self._held[ticket.seq] = (ticket, outcome)
        while self._next_delivery in self._held:
            held, held_outcome = self._held.pop(self._next_delivery)
            _resolve(held.future, held_outcome)
            self._next_delivery += 1

    # Unloading -------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop taking requests, let queued and running ones finish, release instances."""
        self._closing = True
        if self.queue.live or self._running:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained
        if self._timer is not None:
            self._timer.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        await in_daemon_thread(self.pool.close, f"tg-{self.name}-close")

    def _check_drained(self) -> None:
        drained = self._drained
        if drained is not None and not drained.done() and not self.queue.live and not self._running:
            drained.set_result(None)


def _resolve(future: asyncio.Future[Scheduled], outcome: Outcome) -> None:
    if type(future) is _Queued:
        future.pending = None
    if future.done() or outcome is None:
        return  # the caller was cancelled: its result is dropped
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
