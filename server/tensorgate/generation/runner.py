"""The generation runner: a language model served as a decoupled model.

One engine thread owns the engine (model, KV cache, scheduler) and runs step after step
while any sequence is waiting or running; the event loop only queues commands (add, abort)
and receives, once per step, the text each sequence produced. Tokenizing, the model and
detokenizing all run on the engine thread, never on the loop.

A request's responses: with `stream`, one per step that completed text (the last flagged
final, with the finish reason and token counts); without, one final response with the whole
text (after the prompt unless `exclude_input_in_output`). A client that leaves or cancels
aborts its sequence, whose blocks are free before the next step. A request with a deadline
ends at the last step that can complete before it, answered with the text so far and
finish reason `deadline`, so the client gets an answer rather than a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tensorgate.dataplane.types import Array, InferRequest
from tensorgate.errors import InvalidArgument, TensorgateError, Unavailable
from tensorgate.executors.instance_threads import in_daemon_thread
from tensorgate.generation.engine import Engine
from tensorgate.generation.requests import GenerationRequest, parse_request
from tensorgate.generation.sampling import Sampled
from tensorgate.generation.scheduler import Sequence
from tensorgate.generation.tokenizer import IncrementalText, Tokenizer
from tensorgate.observability.metrics import Histogram, latency_histogram
from tensorgate.runners.base import RunnerStatus, Scheduled, Streamed

log = logging.getLogger(__name__)
_ids = itertools.count()
# Time kept back before a deadline for the answer to reach the client (a step may also run
# longer than the one before it, which the horizon assumes).
DEADLINE_MARGIN_NS = 50_000_000


@dataclass(slots=True)
class GenerationStats:
    """Counters the metrics read at scrape time; written by the engine thread only."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    first_token: Histogram = field(default_factory=latency_histogram)  # request to 1st token
    inter_token: Histogram = field(default_factory=latency_histogram)  # between tokens


@dataclass(frozen=True, slots=True)
class GenerationSnapshot:
    """The engine's state for the metrics: sequences, blocks, prefix cache, tokens."""

    running: int
    waiting: int
    preemptions: int
    blocks_used: int
    blocks_free: int
    prefix_queried: int
    prefix_hit: int
    stats: GenerationStats


@dataclass(slots=True, eq=False)
class _Active:
    """A request on its way through the engine."""

    request: GenerationRequest
    events: asyncio.Queue[tuple[dict[str, Array] | None, bool] | BaseException]
    loop: asyncio.AbstractEventLoop
    sequence: Sequence | None = None
    text: IncrementalText | None = None
    prompt_text: str = ""
    pending: str = ""  # text not sent yet (held back by stop strings, or not streaming)
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # tokens not sent yet
    started_ns: int = 0
    last_ns: int = 0
    done: bool = False


class GenerationRunner:
    """Serves one generation model version: a ModelRunner over an Engine."""

    decoupled = True

    def __init__(self, name: str, engine: Engine, tokenizer: Tokenizer) -> None:
        self.name = name
        self.engine = engine
        self.tokenizer = tokenizer
        self.stats = GenerationStats()
        self._commands: queue.SimpleQueue[tuple[str, _Active] | None] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._active: dict[str, _Active] = {}
        self._closing = False
        self._step_ns = 0  # how long the last step took: the horizon for deadlines
        self._thread = threading.Thread(target=self._serve, name=f"tg-{name}-engine", daemon=True)
        self._thread.start()

    # ModelRunner ------------------------------------------------------------------------

    async def run(self, request: InferRequest, rows: int) -> Scheduled:
        raise InvalidArgument(f"model '{self.name}' is decoupled: it answers through a stream")

    def status(self) -> RunnerStatus:
        scheduler = self.engine.scheduler
        return RunnerStatus(len(scheduler.waiting), len(scheduler.running), 1)

    def generation_snapshot(self) -> GenerationSnapshot:
        """What /metrics shows of this model's engine (read without stopping it)."""
        engine = self.engine
        pool, prefix = engine.kv.pool, engine.kv.stats
        return GenerationSnapshot(
            running=len(engine.scheduler.running),
            waiting=len(engine.scheduler.waiting),
            preemptions=engine.scheduler.preemptions,
            blocks_used=len(pool.blocks) - pool.num_free,
            blocks_free=pool.num_free,
            prefix_queried=prefix.queried,
            prefix_hit=prefix.hit,
            stats=self.stats,
        )

    async def stream(self, request: InferRequest, rows: int) -> AsyncGenerator[Streamed, None]:
        if self._closing:
            raise Unavailable(f"model '{self.name}' is being unloaded")
        parsed = parse_request(request)
        loop = asyncio.get_running_loop()
        active = _Active(parsed, asyncio.Queue(), loop)
        self._command("add", active)
        try:
            while True:
                event = await active.events.get()
                if isinstance(event, BaseException):
                    raise event
                outputs, final = event
                yield Streamed(outputs, final)
                if final:
                    break
        finally:
            if not active.done:
                active.done = True
                self._command("abort", active)

    async def close(self) -> None:
        self._closing = True
        self._commands.put(None)
        self._wake.set()
        await in_daemon_thread(self._thread.join, f"tg-{self.name}-close")

    def discard(self) -> None:
        self._commands.put(None)
        self._wake.set()
        self._thread.join()

    def _command(self, what: str, active: _Active) -> None:
        self._commands.put((what, active))
        self._wake.set()

    # The engine thread ------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            if not self._drain_commands():
                return
            if not self.engine.has_work:
                self._wake.wait()
                self._wake.clear()
                continue
            self._expire()
            if not self.engine.has_work:
                continue
            started = time.monotonic_ns()
            try:
                result = self.engine.step()
                self._step_ns = time.monotonic_ns() - started
            except Exception as exc:  # a model failure fails every request in flight
                log.exception("generation step failed for model %s", self.name)
                self._fail_all(exc)
                continue
            now = time.perf_counter_ns()
            for sequence, sampled in result.tokens:
                active = self._active.get(sequence.id)
                if active is not None:
                    if active.request.logprobs:
                        active.logprobs.append(self._logprob_entry(sampled))
                    self._advance(active, now)
            for sequence in result.finished:
                active = self._active.pop(sequence.id, None)
                if active is not None and not active.done:
                    self._finish(active)

    def _expire(self) -> None:
        """End the sequences whose deadline falls before the next step would complete."""
        horizon = time.monotonic_ns() + 2 * self._step_ns + DEADLINE_MARGIN_NS
        expired = [
            a for a in self._active.values() if 0 < a.request.deadline_ns <= horizon and not a.done
        ]
        for active in expired:
            sequence = active.sequence
            assert sequence is not None
            self._active.pop(sequence.id)
            self.engine.abort(sequence, "deadline")
            self._finish(active)

    def _drain_commands(self) -> bool:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True
            if command is None:
                for active in list(self._active.values()):
                    self._emit(active, Unavailable(f"model '{self.name}' is being unloaded"))
                return False
            what, active = command
            if what == "add":
                self._add(active)
            elif active.sequence is not None and active.sequence.id in self._active:
                self._active.pop(active.sequence.id)
                self.engine.abort(active.sequence)

    def _add(self, active: _Active) -> None:
        request = active.request
        try:
            prompt = request.prompt
            if request.messages is not None:
                prompt = self.tokenizer.render_chat(request.messages)
            assert prompt is not None
            ids = self.tokenizer.encode(prompt)
            sequence = Sequence(
                f"{self.name}-{next(_ids)}", ids, request.params, self.tokenizer.eos_token_id
            )
            self.engine.add(sequence)
        except TensorgateError as exc:
            self._emit(active, exc)
            return
        except Exception as exc:  # a template or tokenizer error the client caused
            self._emit(active, InvalidArgument(f"cannot prepare the prompt: {exc}"))
            return
        active.sequence = sequence
        active.text = IncrementalText(self.tokenizer)
        active.prompt_text = prompt
        active.started_ns = active.last_ns = time.perf_counter_ns()
        self.stats.prompt_tokens += len(ids)
        self._active[sequence.id] = active

    def _advance(self, active: _Active, now: int) -> None:
        sequence, text = active.sequence, active.text
        assert sequence is not None and text is not None
        stats = self.stats
        stats.generated_tokens += 1
        if len(sequence.output) == 1:
            stats.first_token.observe(now - active.started_ns)
        else:
            stats.inter_token.observe(now - active.last_ns)
        active.last_ns = now
        active.pending += text.add(sequence.output)
        stops = sequence.params.stop
        if stops:
            cut = min((i for i in (active.pending.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                active.pending = active.pending[:cut]
                self._active.pop(sequence.id, None)
                self.engine.scheduler.finish([sequence], "stop")
                self._finish(active)
                return
            # Hold back a tail that may be the start of a stop string.
            hold = max(len(s) for s in stops) - 1
            ready, active.pending = (
                active.pending[: len(active.pending) - hold],
                (active.pending[len(active.pending) - hold :] if hold else ""),
            )
        else:
            ready, active.pending = active.pending, ""
        if active.request.stream and ready:
            self._emit(active, (self._outputs(ready, sequence, "", active), False))
        elif not active.request.stream:
            active.pending = ready + active.pending

    def _finish(self, active: _Active) -> None:
        sequence = active.sequence
        assert sequence is not None and active.text is not None
        if sequence.finish_reason != "stop" or not sequence.params.stop:
            active.pending += active.text.flush(sequence.output)
        text = active.pending
        if not active.request.stream and not active.request.exclude_input:
            text = active.prompt_text + text
        reason = sequence.finish_reason or "stop"
        active.done = True
        self._emit(active, (self._outputs(text, sequence, reason, active), True))

    def _logprob_entry(self, sampled: Sampled) -> dict[str, Any]:
        decode = self.tokenizer.decode
        return {
            "token": decode([sampled.token]),
            "logprob": sampled.logprob,
            "top": [[decode([token]), logprob] for token, logprob in sampled.top],
        }

    def _outputs(
        self, text: str, sequence: Sequence, reason: str, active: _Active
    ) -> dict[str, Array]:
        entries, active.logprobs = active.logprobs, []
        return {
            "logprobs": np.array([json.dumps(entries).encode()], dtype=np.object_),
            "text_output": np.array([text.encode("utf-8")], dtype=np.object_),
            "finish_reason": np.array([reason.encode()], dtype=np.object_),
            "num_input_tokens": np.array([len(sequence.prompt)], dtype=np.uint32),
            "num_output_tokens": np.array([len(sequence.output)], dtype=np.uint32),
        }

    def _fail_all(self, exc: Exception) -> None:
        error = TensorgateError(f"model '{self.name}' failed: {type(exc).__name__}: {exc}")
        for key, active in list(self._active.items()):
            if active.sequence is not None:
                self.engine.abort(active.sequence)
            self._active.pop(key, None)
            self._emit(active, error)

    @staticmethod
    def _emit(active: _Active, event: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
            active.loop.call_soon_threadsafe(active.events.put_nowait, event)
