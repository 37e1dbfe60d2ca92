"""The sequence batcher: stateful models whose requests come in sequences.

The slot policy (batching/sequences.py) decides which instance and slot a sequence holds
and which requests run next; this runner reads each request's `sequence_id`,
`sequence_start` and `sequence_end` parameters (tritonclient sets them), builds each batch
with the control inputs the config declares (START, END, READY, CORRID), runs it on the
sequence's instance, and hands each request its row of the outputs. An instance runs one
batch at a time, so a sequence's requests run strictly in order. A model with implicit
state (runners/sequence_state.py) gets each sequence's state as an input and leaves its
next state in an output.

A model that takes a batch's requests one by one (a Triton Python model) gets them so here
too, each with its correlation id and START/END flags, and may be decoupled: it answers each
request through its response sender. With `iterative_sequence: true` such a model may
reschedule a request (`set_release_flags(RELEASE_RESCHEDULE)`): the request stays at its
sequence's head, holds its slot, and runs again in a later batch beside new ones, which is
how a model batches requests at different steps of their generation. A request without a
`sequence_id` to an iterative model is a sequence of its own, started and ended by the
batcher.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from tensorgate_protos import model_config_pb2 as mc

from tensorgate.backends.base import Backend, SequenceStep, StepOutcome, SteppedBackend
from tensorgate.batching.scheduler import ExecutionObserver
from tensorgate.batching.sequences import (
    BatchWait,
    CorrelationId,
    Sequence,
    SequenceRequest,
    SequenceSlots,
)
from tensorgate.dataplane.types import Array, InferRequest, ParameterValue
from tensorgate.errors import (
    InvalidArgument,
    ModelExecutionError,
    ModelLoadError,
    TensorgateError,
    Unavailable,
)
from tensorgate.executors.instance_threads import InstanceThreads, in_daemon_thread
from tensorgate.protocol import datatypes
from tensorgate.runners.base import BatchTiming, RunnerStatus, Scheduled, Streamed, one_result
from tensorgate.runners.decoupled import ResponseChannel
from tensorgate.runners.sequence_state import StateTensor, next_states

Control = mc.ModelSequenceBatching.Control
# Triton's default idle limit when the config sets none.
DEFAULT_IDLE_US = 1_000_000
# Triton's request flags, as a model that takes requests one by one reads them.
FLAG_START = 1
FLAG_END = 2
_KINDS = {
    Control.CONTROL_SEQUENCE_START: "start",
    Control.CONTROL_SEQUENCE_END: "end",
    Control.CONTROL_SEQUENCE_READY: "ready",
    Control.CONTROL_SEQUENCE_CORRID: "corrid",
}


@dataclass(frozen=True, slots=True)
class ControlInput:
    """One control tensor the batcher adds to every batch."""

    name: str
    kind: str  # start, end, ready or corrid
    dtype: np.dtype[Any]
    false_true: tuple[Any, Any] = (0, 1)


def control_inputs(config: mc.ModelConfig) -> list[ControlInput]:
    """The config's control inputs; a malformed one fails the load with its name."""
    controls = []
    for entry in config.sequence_batching.control_input:
        if len(entry.control) != 1:
            raise ModelLoadError(
                f"control_input '{entry.name}' must hold exactly one control, "
                f"it has {len(entry.control)}"
            )
        control = entry.control[0]
        kind = _KINDS[control.kind]
        if kind == "corrid":
            type_name = mc.DataType.Name(control.data_type)
            if type_name not in (
                "TYPE_UINT64",
                "TYPE_INT64",
                "TYPE_UINT32",
                "TYPE_INT32",
                "TYPE_STRING",
            ):
                raise ModelLoadError(
                    f"control_input '{entry.name}': CORRID data_type must be an integer type "
                    f"or TYPE_STRING, got {type_name}"
                )
            dtype = datatypes.BY_CONFIG_NAME[type_name].numpy
            controls.append(ControlInput(entry.name, kind, np.dtype(dtype)))
            continue
        pairs: list[tuple[np.dtype[Any], Any]] = [
            (np.dtype(np.int32), control.int32_false_true),
            (np.dtype(np.float32), control.fp32_false_true),
            (np.dtype(np.bool_), control.bool_false_true),
        ]
        given = [(dtype, values) for dtype, values in pairs if len(values)]
        if len(given) != 1 or len(given[0][1]) != 2:
            raise ModelLoadError(
                f"control_input '{entry.name}' needs one false/true pair: int32_false_true, "
                "fp32_false_true or bool_false_true with two values"
            )
        dtype, values = given[0]
        controls.append(ControlInput(entry.name, kind, dtype, (values[0], values[1])))
    return controls


def batch_wait(config: mc.ModelConfig) -> BatchWait:
    """How long the strategy lets a ready batch wait for more sequences; a value that
    cannot work fails the load, naming it."""
    batching = config.sequence_batching
    if batching.WhichOneof("strategy_choice") == "oldest":
        oldest = batching.oldest
        max_batch = max(config.max_batch_size, 1)
        wrong = [size for size in oldest.preferred_batch_size if not 0 < size <= max_batch]
        if wrong:
            raise ModelLoadError(
                f"sequence_batching.oldest.preferred_batch_size {wrong} must lie in 1 to "
                f"max_batch_size ({max_batch})"
            )
        return BatchWait(
            oldest.max_queue_delay_microseconds * 1000, preferred=tuple(oldest.preferred_batch_size)
        )
    direct = batching.direct
    if not 0.0 <= direct.minimum_slot_utilization <= 1.0:
        raise ModelLoadError(
            "sequence_batching.direct.minimum_slot_utilization must lie in 0 to 1, got "
            f"{direct.minimum_slot_utilization:g}"
        )
    return BatchWait(
        direct.max_queue_delay_microseconds * 1000,
        min_utilization=direct.minimum_slot_utilization,
    )


def takes_steps(config: mc.ModelConfig, backend: Backend) -> bool:
    """Whether the backend takes a sequence batch's requests one by one; a model the config
    needs to (decoupled or iterative) fails the load if it does not."""
    stepped = getattr(backend, "execute_steps", None) is not None
    policy = config.model_transaction_policy
    if (policy.decoupled or config.sequence_batching.iterative_sequence) and not stepped:
        raise ModelLoadError(
            "decoupled sequence models and iterative sequences need a model that takes its "
            "requests one by one: a Triton Python model (TritonPythonModel)"
        )
    return stepped


def check_sequence_config(config: mc.ModelConfig, backend: Backend) -> None:
    """What fails a sequence model's load, checked before its instance threads start."""
    control_inputs(config)
    batch_wait(config)
    takes_steps(config, backend)


def sequence_parameters(
    params: dict[str, ParameterValue], model: str
) -> tuple[CorrelationId, bool, bool]:
    """The request's correlation id and its start and end flags."""
    corrid = params.get("sequence_id", 0)
    if isinstance(corrid, bool) or not isinstance(corrid, int | str) or corrid in (0, ""):
        raise InvalidArgument(
            f"model '{model}' is a sequence model: every request needs a sequence_id "
            "parameter (a non-zero integer or a non-empty string)"
        )
    start, end = params.get("sequence_start", False), params.get("sequence_end", False)
    if not isinstance(start, bool) or not isinstance(end, bool):
        raise InvalidArgument("sequence_start and sequence_end must be booleans")
    return corrid, start, end


@dataclass(slots=True)
class _Ticket:
    request: InferRequest
    # The flags the model sees on the request's next execution; a rescheduled request
    # runs again with neither, as in Triton.
    start: bool
    end: bool
    # Where its result goes: the caller's future, or a decoupled model's response stream.
    future: asyncio.Future[Scheduled] | None
    channel: ResponseChannel | None = None
    # Held until every earlier request is answered (oldest.preserve_ordering).
    outcome: Scheduled | BaseException | None = None
    ran: bool = False  # it has run once: a rescheduled request
    farewell: bool = False  # its client left: its next run is its last

    @property
    def inputs(self) -> dict[str, Array]:
        return self.request.inputs

    def left(self) -> bool:
        """Whether its caller stopped waiting for it."""
        if self.channel is not None:
            return self.channel.is_cancelled()
        return self.future is not None and self.future.done()


def _execute(backend: Backend, inputs: dict[str, Array]) -> tuple[dict[str, Array], int, int]:
    started = time.perf_counter_ns()
    outputs = backend.execute(inputs)
    return outputs, started, time.perf_counter_ns()


def _execute_steps(
    backend: SteppedBackend, steps: list[SequenceStep], iterative: bool
) -> tuple[list[StepOutcome], int, int]:
    started = time.perf_counter_ns()
    outcomes = backend.execute_steps(steps, iterative)
    if len(outcomes) != len(steps):
        raise ModelExecutionError(f"{len(outcomes)} outcomes for a batch of {len(steps)}")
    return outcomes, started, time.perf_counter_ns()


class SequenceRunner:
    """Runs a stateful model's sequences, each on the instance and slot it holds."""

    def __init__(
        self,
        name: str,
        config: mc.ModelConfig,
        instances: InstanceThreads,
        max_backlog: int,
        on_execution: ExecutionObserver | None = None,
        states: list[StateTensor] | None = None,
    ) -> None:
        self.name = name
        self.instances = instances
        self.batched = config.max_batch_size > 0
        self.controls = control_inputs(config)
        self.states = states or []
        batching = config.sequence_batching
        self.decoupled = config.model_transaction_policy.decoupled
        self.iterative = batching.iterative_sequence
        # Requests one by one (SequenceStep) instead of one merged batch.
        self.stepped = takes_steps(config, instances.instances[0].backend)
        # Correlation ids of the sequences the batcher opens for iterative requests without
        # one; Triton counts them from 1 too, and a client's own ids share the space.
        self._own_ids = itertools.count(1)
        direct = batching.WhichOneof("strategy_choice") != "oldest"
        max_batch = max(config.max_batch_size, 1)
        slots = max_batch if direct else max(batching.oldest.max_candidate_sequences, max_batch)
        idle_us = batching.max_sequence_idle_microseconds or DEFAULT_IDLE_US
        wait = batch_wait(config)
        self.policy = SequenceSlots(
            name, len(instances), slots, max_batch, idle_us * 1000, max_backlog, direct, wait
        )
        self._on_execution = on_execution
        self._busy = [False] * len(instances)
        self._timer: asyncio.TimerHandle | None = None
        # Per instance: the wake-up of a batch waiting for more sequences (BatchWait).
        self._holds: list[asyncio.TimerHandle | None] = [None] * len(instances)
        self._closing = False
        self._drained: asyncio.Future[None] | None = None
        # oldest.preserve_ordering: requests in arrival order, answered in that order.
        self._ordered = not direct and batching.oldest.preserve_ordering
        self._arrivals: deque[_Ticket] = deque()

    def status(self) -> RunnerStatus:
        queued = sum(len(s.pending) for s in self.policy.sequences.values())
        return RunnerStatus(queued, sum(self._busy), len(self.instances))

    def stream(self, request: InferRequest, rows: int) -> AsyncGenerator[Streamed, None]:
        if self.decoupled:
            return self._responses(request, rows)
        return one_result(self.run(request, rows))

    async def run(self, request: InferRequest, rows: int) -> Scheduled:
        if self.decoupled:
            raise InvalidArgument(f"model '{self.name}' is decoupled: it answers through a stream")
        future: asyncio.Future[Scheduled] = asyncio.get_running_loop().create_future()
        sequence, item = self._enqueue(request, rows, future, None)
        try:
            return await future
        except asyncio.CancelledError:
            self._drop(sequence, item)
            if self._ordered:
                self._release()  # the requests behind it need not wait for it
            raise

    async def _responses(self, request: InferRequest, rows: int) -> AsyncGenerator[Streamed, None]:
        """A decoupled model's request: its responses as the model sends them, to the final
        one; a client that leaves stops the request's next executions."""
        channel = ResponseChannel(asyncio.get_running_loop())
        sequence, item = self._enqueue(request, rows, None, channel)
        try:
            while True:
                streamed = await channel.get()
                yield streamed
                if streamed.final:
                    break
        finally:
            channel.cancel()
            self._drop(sequence, item)

    def _enqueue(
        self,
        request: InferRequest,
        rows: int,
        future: asyncio.Future[Scheduled] | None,
        channel: ResponseChannel | None,
    ) -> tuple[Sequence, SequenceRequest]:
        if self._closing:
            raise Unavailable(f"model '{self.name}' is being unloaded")
        if self.iterative and request.parameters.get("sequence_id", 0) in (0, ""):
            # A sequence of its own: started by this request and ended when the model
            # releases it. The model sees START only, as on Triton.
            corrid: CorrelationId = next(self._own_ids)
            start, end, flags = True, True, (True, False)
        else:
            corrid, start, end = sequence_parameters(request.parameters, self.name)
            flags = (start, end)
        if self.batched and rows != 1:
            raise InvalidArgument(
                f"sequence model '{self.name}' takes one row per request, got {rows}"
            )
        self._check_corrid_type(corrid)
        now = time.perf_counter_ns()
        ticket = _Ticket(request, *flags, future, channel)
        request.cancelled = ticket.left
        item = SequenceRequest(start, end, now, ticket)
        sequence = self.policy.add(corrid, item, now)
        if self._ordered and future is not None:
            self._arrivals.append(ticket)
        self._dispatch(sequence.instance)
        return sequence, item

    def _drop(self, sequence: Sequence, item: SequenceRequest) -> None:
        ticket: _Ticket = item.handle
        if ticket.ran:
            # A rescheduled request runs once more, where the model sees it cancelled: the
            # next run if it waits for one, the run after this one if it is running.
            running = sequence.running and sequence.pending and sequence.pending[0] is item
            ticket.farewell = ticket.farewell or not running
            return
        for instance in self.policy.drop(sequence, item):
            self._dispatch(instance)

    def _check_corrid_type(self, corrid: CorrelationId) -> None:
        for control in self.controls:
            if control.kind == "corrid" and isinstance(corrid, str) != (control.dtype.kind == "O"):
                want = "a string" if control.dtype.kind == "O" else "an integer"
                raise InvalidArgument(
                    f"model '{self.name}' takes {want} sequence_id (its CORRID control input)"
                )

    # Batches ---------------------------------------------------------------------------

    def _dispatch(self, instance: int) -> None:
        """Start the instance's next batch if it is free and has requests ready."""
        if instance < 0 or self._busy[instance]:
            return
        ready = self.policy.ready(instance)
        batch = ready if self.stepped else self._matching(ready)
        if not batch:
            self._arm_expiry()
            self._check_drained()
            return
        count, wait_ns = (
            (len(batch), 0) if self._closing else self.policy.due(batch, time.perf_counter_ns())
        )
        if not count:
            self._hold(instance, wait_ns)
            return
        batch = batch[:count]
        self.policy.taken(batch)
        self._busy[instance] = True
        worker = self.instances.instances[instance]
        if self.stepped:
            steps = [self._step(sequence) for sequence in batch]
            dispatched = time.perf_counter_ns()
            stepped = worker.call(_execute_steps, worker.backend, steps, self.iterative)
            stepped.add_done_callback(partial(self._stepped, instance, batch, dispatched))
            return
        rows = [s.slot for s in batch] if self.policy.direct else list(range(len(batch)))
        inputs = self._assemble(batch, rows)
        dispatched = time.perf_counter_ns()
        future = worker.call(_execute, worker.backend, inputs)
        future.add_done_callback(partial(self._finished, instance, batch, rows, dispatched))

    def _hold(self, instance: int, wait_ns: int) -> None:
        """Look at the instance's ready batch again once it may go (or sooner, when more
        sequences become ready: each new request dispatches)."""
        if self._holds[instance] is not None:
            return
        self._holds[instance] = asyncio.get_running_loop().call_later(
            wait_ns / 1e9, self._held, instance
        )

    def _held(self, instance: int) -> None:
        self._holds[instance] = None
        self._dispatch(instance)

    def _matching(self, ready: list[Sequence]) -> list[Sequence]:
        """The ready sequences whose next inputs can share a batch with the first's."""
        if not ready or not self.batched:
            return ready[:1]
        key = self._shape_key(ready[0])
        return [s for s in ready if self._shape_key(s) == key]

    def _shape_key(self, sequence: Sequence) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """What must agree for sequences to share a batch: their next inputs' shapes, and
        their states' (a state with variable dims can differ from sequence to sequence)."""
        key = _shape_key(sequence.pending[0].handle.inputs)
        if not self.states:
            return key
        return key + _shape_key(self._state_of(sequence))

    def _state_of(self, sequence: Sequence) -> dict[str, Array]:
        if sequence.state is not None:
            state: dict[str, Array] = sequence.state
            return state
        return {s.input_name: s.initial for s in self.states}

    def _assemble(self, batch: list[Sequence], rows: list[int]) -> dict[str, Array]:
        heads = [s.pending[0] for s in batch]
        if not self.batched:
            inputs = dict(heads[0].handle.inputs)
            for control in self.controls:
                inputs[control.name] = _control_values(control, batch, heads, [0], 1).reshape(1)
            if self.states:
                inputs.update(self._state_of(batch[0]))
            return inputs
        size = max(rows) + 1
        inputs = {
            name: _merged([head.handle.inputs[name][0] for head in heads], rows, size)
            for name in heads[0].handle.inputs
        }
        for control in self.controls:
            inputs[control.name] = _control_values(control, batch, heads, rows, size)
        if self.states:
            states = [self._state_of(sequence) for sequence in batch]
            for state in self.states:
                name = state.input_name
                inputs[name] = _merged([values[name] for values in states], rows, size)
        return inputs

    def _step(self, sequence: Sequence) -> SequenceStep:
        """The sequence's next request as a model that takes requests one by one gets it:
        its own inputs (one row), its control inputs and its state."""
        head = sequence.pending[0]
        ticket: _Ticket = head.handle
        inputs = dict(ticket.inputs)
        for control in self.controls:
            values = _control_values(control, [sequence], [head], [0], 1)
            inputs[control.name] = values if self.batched else values.reshape(1)
        for name, state in self._state_of(sequence).items():
            inputs[name] = state[np.newaxis] if self.batched else state
        flags = (FLAG_START if ticket.start else 0) | (FLAG_END if ticket.end else 0)
        return SequenceStep(inputs, ticket.request, sequence.corrid, flags, ticket.channel)

    def _stepped(
        self,
        instance: int,
        batch: list[Sequence],
        dispatched: int,
        future: asyncio.Future[tuple[list[StepOutcome], int, int]],
    ) -> None:
        """A batch of steps is done: answer the requests the model released, keep those it
        rescheduled at their sequence's head."""
        now = time.perf_counter_ns()
        tickets: list[_Ticket] = [s.pending[0].handle for s in batch]
        again: list[Sequence] = []
        error = future.exception()
        if error is not None:
            for ticket in tickets:
                self._fail(ticket, error)
        else:
            outcomes, started, inferred = future.result()
            timing = self._executed(len(batch), dispatched, started, inferred, now)
            for sequence, ticket, outcome in zip(batch, tickets, outcomes, strict=True):
                ticket.ran = True
                if outcome.rescheduled and not ticket.farewell:
                    # A client that left gets one more run: the model sees `is_cancelled()`
                    # and can drop what it keeps for the request; then it is released.
                    ticket.farewell = ticket.left()
                    ticket.start = ticket.end = False
                    again.append(sequence)
                elif outcome.error is not None:
                    self._fail(ticket, outcome.error)
                elif outcome.outputs is not None:
                    self._answer_step(sequence, ticket, outcome.outputs, timing)
        woken = self.policy.finished(batch, now, again)
        self._busy[instance] = False
        for index in {instance, *woken}:
            self._dispatch(index)

    def _executed(
        self, size: int, dispatched: int, started: int, inferred: int, now: int
    ) -> BatchTiming:
        """A batch of `size` ran: count it, and its timing for its requests' answers."""
        if self._on_execution is not None:
            self._on_execution(size, started - dispatched, inferred - started, now - inferred)
        return BatchTiming(dispatched, started, inferred, now, size, size)

    def _answer_step(
        self,
        sequence: Sequence,
        ticket: _Ticket,
        outputs: dict[str, Array],
        timing: BatchTiming,
    ) -> None:
        if self.states:
            try:
                (sequence.state,) = next_states(
                    self.name, self.states, outputs, [0] if self.batched else None
                )
            except ModelExecutionError as exc:
                self._fail(ticket, exc)
                return
        enqueued = sequence.pending[0].enqueued_ns
        done = Scheduled(
            outputs,
            timing.dispatched_ns - enqueued,
            timing.merged_ns - timing.dispatched_ns,
            timing.inferred_ns - timing.merged_ns,
            timing.finished_ns - timing.inferred_ns,
            timing,
        )
        self._answer(ticket, done)

    def _fail(self, ticket: _Ticket, error: BaseException) -> None:
        if ticket.channel is not None:
            ticket.channel.fail(copy.copy(error) if isinstance(error, TensorgateError) else error)
        else:
            self._answer(ticket, error)

    def _finished(
        self,
        instance: int,
        batch: list[Sequence],
        rows: list[int],
        dispatched: int,
        future: asyncio.Future[tuple[dict[str, Array], int, int]],
    ) -> None:
        now = time.perf_counter_ns()
        heads = [s.pending[0] for s in batch]
        error = future.exception()
        if error is None and self.states:
            error = self._keep_states(batch, rows, future.result()[0])
        if error is not None:
            for head in heads:
                self._answer(head.handle, error)
        else:
            outputs, started, inferred = future.result()
            timing = self._executed(len(batch), dispatched, started, inferred, now)
            for head, row in zip(heads, rows, strict=True):
                part = (
                    outputs
                    if not self.batched
                    else {k: v[row : row + 1] for k, v in outputs.items()}
                )
                done = Scheduled(
                    part,
                    dispatched - head.enqueued_ns,
                    started - dispatched,
                    inferred - started,
                    now - inferred,
                    timing,
                )
                self._answer(head.handle, done)
        woken = self.policy.finished(batch, now)
        self._busy[instance] = False
        for index in {instance, *woken}:
            self._dispatch(index)

    def _answer(self, ticket: _Ticket, outcome: Scheduled | BaseException) -> None:
        assert ticket.future is not None
        if not self._ordered:
            _settle(ticket.future, outcome)
            return
        ticket.outcome = outcome
        self._release()

    def _release(self) -> None:
        """Answer the requests at the head of the arrival order that have their outcome
        (or whose caller left)."""
        arrivals = self._arrivals
        while arrivals and (arrivals[0].outcome is not None or arrivals[0].left()):
            ticket = arrivals.popleft()
            if ticket.outcome is not None and ticket.future is not None:
                _settle(ticket.future, ticket.outcome)

    def _keep_states(
        self, batch: list[Sequence], rows: list[int], outputs: dict[str, Array]
    ) -> ModelExecutionError | None:
        """Store each sequence's next state; a state output that does not fit fails the
        batch's requests and leaves every state as it was."""
        try:
            states = next_states(self.name, self.states, outputs, rows if self.batched else None)
        except ModelExecutionError as exc:
            return exc
        for sequence, state in zip(batch, states, strict=True):
            sequence.state = state
        return None

    # Idle sequences --------------------------------------------------------------------

    def _arm_expiry(self) -> None:
        due = self.policy.next_expiry_ns()
        if not due or self._timer is not None:
            return
        delay = max(due - time.perf_counter_ns(), 0) / 1e9
        self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._timer = None
        for instance in self.policy.expire(time.perf_counter_ns()):
            self._dispatch(instance)
        self._arm_expiry()

    # Unloading -------------------------------------------------------------------------

    async def close(self) -> None:
        self._closing = True
        for instance, hold in enumerate(self._holds):
            if hold is not None:  # a waiting batch goes now: nothing more will join it
                hold.cancel()
                self._held(instance)
        if any(self._busy) or self.status().queued:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained
        if self._timer is not None:
            self._timer.cancel()
        await in_daemon_thread(self.instances.close, f"tg-{self.name}-close")

    def discard(self) -> None:
        self.instances.close()

    def _check_drained(self) -> None:
        drained = self._drained
        if drained is None or drained.done() or any(self._busy) or self.status().queued:
            return
        drained.set_result(None)


def _control_values(
    control: ControlInput,
    batch: list[Sequence],
    heads: list[SequenceRequest],
    rows: list[int],
    size: int,
) -> Array:
    """A control tensor of `size` rows, one value per row ([size, 1])."""
    if control.kind == "corrid":
        values = np.zeros((size, 1), dtype=control.dtype)
        if control.dtype.kind == "O":
            values[...] = b""
        for sequence, row in zip(batch, rows, strict=True):
            corrid = sequence.corrid
            values[row, 0] = corrid.encode() if isinstance(corrid, str) else corrid
        return values
    false, true = control.false_true
    values = np.full((size, 1), false, dtype=control.dtype)
    for head, row in zip(heads, rows, strict=True):
        ticket: _Ticket = head.handle
        on = {"start": ticket.start, "end": ticket.end, "ready": True}[control.kind]
        values[row, 0] = true if on else false
    return values


def _merged(values: list[Array], rows: list[int], size: int) -> Array:
    """A batch tensor of `size` rows with each value at its row; the rows of slots with no
    request are zeros (empty strings for BYTES)."""
    first = values[0]
    merged = np.zeros((size, *first.shape), dtype=first.dtype)
    if first.dtype == np.object_:
        merged[...] = b""
    for value, row in zip(values, rows, strict=True):
        merged[row] = value
    return merged


def _shape_key(inputs: dict[str, Array]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple(sorted((name, array.shape) for name, array in inputs.items()))


def _settle(future: asyncio.Future[Scheduled], outcome: Scheduled | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        # A copy per request: callers may add context to their error's message.
        future.set_exception(
            copy.copy(outcome) if isinstance(outcome, TensorgateError) else outcome
        )
    else:
        future.set_result(outcome)
