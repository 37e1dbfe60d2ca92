"""The data plane: every transport's requests come here, whatever the wire format.

It owns model lookup, request validation, execution bookkeeping and statistics. It knows
nothing of gRPC or HTTP: failures are raised as TensorgateError and mapped by the transport.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from functools import partial
from typing import Any

import numpy as np

from tensorgate import __version__
from tensorgate.dataplane.calls import ModelCalls
from tensorgate.dataplane.classification import top_classes
from tensorgate.dataplane.reshape import reshaped
from tensorgate.dataplane.response_cache import ResponseCache
from tensorgate.dataplane.shared_memory import SharedMemoryRegistry
from tensorgate.dataplane.types import Array, InferRequest, InferResponse
from tensorgate.dataplane.validation import reshape_inputs, validate_request
from tensorgate.errors import (
    FailedPrecondition,
    InvalidArgument,
    ModelExecutionError,
    NotFound,
    TensorgateError,
    Unavailable,
)
from tensorgate.observability.model_code_metrics import ModelCodeMetrics
from tensorgate.observability.requests import InferObserver
from tensorgate.observability.trace_settings import TRACING_OFF, tracing_off
from tensorgate.observability.tracing import Tracing
from tensorgate.protocol import datatypes
from tensorgate.repository.config import TensorSpec
from tensorgate.repository.manager import LOADING, UNAVAILABLE, ModelRepository
from tensorgate.repository.overrides import load_override
from tensorgate.runners.base import ModelVersion, Scheduled

log = logging.getLogger(__name__)

_DRAIN_POLL_S = 0.02
UNLOAD_DEPENDENTS = "unload_dependents"
# Triton's names for the protocol extensions served here (trace settings are not).
EXTENSIONS = (
    "classification",
    "sequence",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "system_shared_memory",
    "cuda_shared_memory",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "trace",
    "logging",
)


# One request between `DataPlane._begin` and its answer: its model version, the runner's
# answer to come, when the data plane got it (perf_counter_ns), its response-cache key (None:
# the model's cache is off) and when the cache lookup ended. A tuple: the unary path builds
# one per request, and a class's __init__ costs a call more.
_Begun = tuple[ModelVersion, Awaitable[Scheduled], int, bytes | None, int]


class DataPlane:
    """Server-wide operations, shared by the gRPC servicer and the REST shim."""

    def __init__(
        self,
        repository: ModelRepository,
        explicit_control: bool,
        observer: InferObserver | None = None,
        strict_readiness: bool = True,
        tracing: Tracing | None = None,
        cache: ResponseCache | None = None,
        server_id: str = "tensorgate",
    ) -> None:
        self.repository = repository
        self.server_id = server_id  # the name ServerMetadata answers (Triton's --id)
        self.cache = cache  # the response cache (--cache-size); models opt in by config
        self.shared_memory = SharedMemoryRegistry()  # system shared-memory regions
        # Ensembles and model code (BLS) call models through here.
        # The metrics model code defines (Triton's MetricFamily), exported with the server's.
        self.model_code_metrics = ModelCodeMetrics()
        repository.builder.calls = self.calls = ModelCalls(
            self.infer, self.stream, self._model_control, self.model_code_metrics
        )
        self.explicit_control = explicit_control
        self.observer = observer or InferObserver(None, 0.0)
        self.strict_readiness = strict_readiness
        self.tracing = tracing  # the transports start a request's trace; None: tracing off
        self.started = False  # start-up loading is done
        self.draining = False  # shutting down: finish what is in flight, take nothing new
        # The tasks waiting on a model here (a request's, a stream's, a model's call), and the
        # futures of requests that have no task (`infer_soon`), so that a shutdown can answer
        # those its exit timeout leaves unfinished (`drain`).
        self._in_flight: set[asyncio.Future[Any]] = set()
        self._cut_off: set[asyncio.Future[Any]] = set()
        self._exit_timeout_s = 0.0

    # Health and metadata -------------------------------------------------------------

    def live(self) -> bool:
        return True

    def server_ready(self) -> bool:
        """The one readiness answer: v2 /ready, ServerReady and gRPC health all read it.

        Not ready until start-up loading is done, while draining, and (strict readiness, as
        Triton's default) while any model is loading or failed to load.
        """
        if not self.started or self.draining:
            return False
        return not self.strict_readiness or self.all_ready()

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.repository.get(name, version)
        except TensorgateError:
            return False
        return True

    def server_metadata(self) -> tuple[str, str, list[str]]:
        return self.server_id, __version__, list(EXTENSIONS)

    def model(self, name: str, version: str = "") -> ModelVersion:
        """Resolve a model version or raise NOT_FOUND / UNAVAILABLE."""
        return self.repository.get(name, version)

    def model_versions(self, name: str) -> list[str]:
        record = self.repository.records.get(name)
        return [str(v) for v in sorted(record.versions)] if record else []

    def trace_settings(
        self, model: str, changes: dict[str, list[str] | None]
    ) -> dict[str, list[str]]:
        """Triton's trace settings for `model` ("" for the server's), changed by `changes`."""
        if model and model not in self.repository.records:
            raise NotFound(f"Request for unknown model: '{model}' is not found")
        if self.tracing is None:
            if changes:
                raise tracing_off()
            return TRACING_OFF
        settings = self.tracing.settings
        return settings.update(changes, model) if changes else settings.get(model)

    # Repository ----------------------------------------------------------------------

    async def load_model(self, name: str, parameters: dict[str, object] | None = None) -> None:
        """Load (or reload) a model, with the config and files its parameters give."""
        self._require_explicit("load")
        await self.repository.load(name, load_override(parameters))

    async def unload_model(self, name: str, parameters: dict[str, object] | None = None) -> None:
        """Unload a model; `unload_dependents` unloads an ensemble's step models too."""
        self._require_explicit("unload")
        parameters = dict(parameters or {})
        dependents = parameters.pop(UNLOAD_DEPENDENTS, False)
        if parameters or not isinstance(dependents, bool):
            raise InvalidArgument(
                f"unload takes one parameter, {UNLOAD_DEPENDENTS} (a boolean); got "
                f"{', '.join(map(repr, parameters)) or repr(dependents)}"
            )
        await self.repository.unload(name, dependents)

    async def _model_control(self, operation: str, arguments: tuple[Any, ...]) -> object:
        """Repository operations model code asks for (Triton's BLS load_model,
        unload_model, is_model_ready), held to the same rules as a client's."""
        if operation == "load":
            await self.load_model(*arguments)
            return None
        if operation == "unload":
            await self.unload_model(*arguments)
            return None
        if operation == "ready":
            return self.model_ready(*arguments)
        raise InvalidArgument(f"unknown repository operation '{operation}'")

    def _require_explicit(self, action: str) -> None:
        if not self.explicit_control:
            raise FailedPrecondition(
                f"explicit model {action} is not allowed: start the server with "
                "--model-control-mode explicit"
            )

    def repository_index(self, ready_only: bool) -> list[tuple[str, str, str, str]]:
        self.repository.scan()
        return self.repository.index(ready_only)

    def loaded_versions(self) -> list[ModelVersion]:
        """Every loaded model version, by name then version."""
        return [
            record.versions[v]
            for name, record in sorted(self.repository.records.items())
            for v in sorted(record.versions)
        ]

    def generation_snapshots(self) -> list[tuple[str, int, Any]]:
        """(model, version, GenerationSnapshot) of every loaded generation model; found by
        the method their runner offers, so nothing here imports torch."""
        snapshots = []
        for m in self.loaded_versions():
            snapshot = getattr(m.runner, "generation_snapshot", None)
            if snapshot is not None:
                snapshots.append((m.name, m.version, snapshot()))
        return snapshots

    def all_ready(self) -> bool:
        """No model is loading or failed; explicitly unloaded ones do not count."""
        for record in self.repository.records.values():
            if record.state == LOADING:
                return False
            if record.state == UNAVAILABLE and record.reason != "unloaded":
                return False
        return True

    # Inference -----------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        """Validate, queue for a batch, and shape the response for one request."""
        begun = self._begin(request)
        if isinstance(begun, InferResponse):  # answered from the response cache
            return begun
        task = asyncio.current_task()
        tracks = self._track(task)
        try:
            done = await begun[1]
            return self._finish(request, begun, done)
        except BaseException as exc:
            error = self._failed(request, begun, exc, task)
            if error is exc:
                raise
            raise error from None
        finally:
            if (metrics := begun[0].metrics) is not None:
                metrics.in_flight -= 1
            if tracks:
                self._in_flight.discard(task)

    def infer_soon(
        self, request: InferRequest, answer: Callable[[InferResponse | BaseException], None]
    ) -> asyncio.Future[Any] | None:
        """`infer` for a caller with no task per request (each request of a gRPC stream):
        `answer` gets the response or the error on the loop, at once if it is known at once.
        Returns what to cancel if the caller leaves first (None: answered already)."""
        try:
            begun = self._begin(request, tasked=False)
        except Exception as exc:
            answer(exc)
            return None
        if isinstance(begun, InferResponse):
            answer(begun)
            return None
        waiting = begun[1]
        if not isinstance(waiting, asyncio.Future):  # a runner with no `start`: a task
            waiting = asyncio.ensure_future(waiting)
        self._in_flight.add(waiting)
        waiting.add_done_callback(partial(self._answer, request, begun, answer))
        return waiting

    def _answer(
        self,
        request: InferRequest,
        begun: _Begun,
        answer: Callable[[InferResponse | BaseException], None],
        waiting: asyncio.Future[Scheduled],
    ) -> None:
        self._in_flight.discard(waiting)
        if (metrics := begun[0].metrics) is not None:
            metrics.in_flight -= 1
        try:
            response = self._finish(request, begun, waiting.result())
        except BaseException as exc:
            answer(self._failed(request, begun, exc, waiting))
            return
        answer(response)

    def _begin(self, request: InferRequest, tasked: bool = True) -> _Begun | InferResponse:
        """Everything up to the wait for a batch: the model, the cache, validation and the
        runner's queue. Raises what the client is told; a cache hit is answered here.
        `tasked`: the caller awaits in a task of its own; else it waits on a future (the
        runner's `start`, where it has one) and cancels that future if it leaves."""
        started = time.perf_counter_ns()
        model: ModelVersion | None = None
        try:
            model = self.repository.get(request.model_name, request.model_version)
            if model.runner.decoupled:
                raise InvalidArgument(
                    f"model '{model.name}' is decoupled (it may send any number of responses): "
                    "call it with ModelStreamInfer over gRPC, or /generate_stream over HTTP"
                )
            key, looked_up = None, 0
            if model.cached and (cache := self.cache) is not None:
                key = cache.key(model.name, model.version, request)
                hit = cache.get(key)
                looked_up = time.perf_counter_ns()
                if hit is not None:
                    return self._cache_hit(model, request, hit, started, looked_up)
            rows = validate_request(request, model.spec)
            if model.spec.reshaped_inputs:
                reshape_inputs(request, model.spec)
            try:
                start = None if tasked else getattr(model.runner, "start", None)
                waiting = model.runner.run(request, rows) if start is None else start(request, rows)
            except Exception as exc:  # refused by the runner: counted as a failure
                model.stats.record_failure(time.perf_counter_ns() - started)
                raise _model_error(model, exc) from None
        except TensorgateError as exc:
            self.observer.finished(request, model, time.perf_counter_ns() - started, error=exc)
            raise
        if (metrics := model.metrics) is not None:
            metrics.in_flight += 1
        return model, waiting, started, key, looked_up

    def _finish(self, request: InferRequest, begun: _Begun, done: Scheduled) -> InferResponse:
        """The batch's share for one request: its outputs checked and selected, statistics,
        the cache; raises when the model's outputs do not match its config."""
        model, _, started, cache_key, looked_up = begun
        outputs = self._select_outputs(model, request, done.outputs)
        elapsed = time.perf_counter_ns() - started
        if request.trace is not None and done.batch is not None:
            request.trace.batch(done.batch, done.queue_ns)
        model.stats.record_success(
            elapsed,
            done.queue_ns,
            done.compute_input_ns,
            done.compute_infer_ns,
            done.compute_output_ns,
        )
        self.observer.finished(request, model, elapsed, done.queue_ns)
        if cache_key is not None and (cache := self.cache) is not None:
            inserting = time.perf_counter_ns()
            cache.put(cache_key, outputs)
            spent = looked_up - started + time.perf_counter_ns() - inserting
            model.stats.cache_miss.add(spent)
        return _response(model, request, outputs, True)

    def _failed(
        self,
        request: InferRequest,
        begun: _Begun,
        exc: BaseException,
        waiter: asyncio.Future[Any] | None,
    ) -> BaseException:
        """The error a failed request answers with (a cancellation stays one, unless a
        shutdown's exit timeout cut the request off), counted and logged."""
        model, started = begun[0], begun[2]
        elapsed = time.perf_counter_ns() - started
        if isinstance(exc, asyncio.CancelledError):
            if waiter is not None and waiter in self._cut_off:
                model.stats.record_failure(elapsed)
                exc = self._cut_off_error(waiter)
        elif isinstance(exc, Exception):
            model.stats.record_failure(elapsed)
            exc = _model_error(model, exc)
        self.observer.finished(request, model, elapsed, error=exc)
        return exc

    def _cache_hit(
        self,
        model: ModelVersion,
        request: InferRequest,
        outputs: dict[str, Array],
        started: int,
        looked_up: int,
    ) -> InferResponse:
        """A cached answer: no queue, no execution; counted as a success and a cache hit."""
        elapsed = time.perf_counter_ns() - started
        model.stats.success.add(elapsed)
        model.stats.cache_hit.add(looked_up - started)
        self.observer.finished(request, model, elapsed, 0)
        return _response(model, request, outputs, True)

    def is_decoupled(self, name: str, version: str = "") -> bool:
        """Whether the model answers through `stream` only; False when it cannot be found
        (the call that follows reports that)."""
        try:
            return self.repository.get(name, version).runner.decoupled
        except TensorgateError:
            return False

    async def stream(self, request: InferRequest) -> AsyncGenerator[InferResponse, None]:
        """A request's responses as the model produces them, the last flagged final.

        A decoupled model may yield no response at all: then only a bare final flag comes
        (a response with no outputs and `final` set). Closing the iterator early (the client
        cancelled or went away) stops the model's generator.
        """
        started = time.perf_counter_ns()
        try:
            model = self.repository.get(request.model_name, request.model_version)
        except TensorgateError as exc:
            self.observer.finished(request, None, time.perf_counter_ns() - started, error=exc)
            raise
        try:
            rows = validate_request(request, model.spec)
            if model.spec.reshaped_inputs:
                reshape_inputs(request, model.spec)
            if request.output_regions:
                raise InvalidArgument(
                    f"model '{model.name}' answers through a stream of responses: its outputs "
                    "cannot be written to shared memory (shared_memory_region)"
                )
        except TensorgateError as exc:
            self.observer.finished(request, model, time.perf_counter_ns() - started, error=exc)
            raise
        metrics = model.metrics
        if metrics is not None:
            metrics.in_flight += 1
        task = asyncio.current_task()
        tracks = self._track(task)
        try:
            async with aclosing(model.runner.stream(request, rows)) as items:
                async for item in items:
                    outputs = (
                        self._select_outputs(model, request, item.outputs)
                        if item.outputs is not None
                        else {}
                    )
                    yield _response(model, request, outputs, item.final)
        except BaseException as exc:
            elapsed = time.perf_counter_ns() - started
            if isinstance(exc, asyncio.CancelledError) and task in self._cut_off:
                exc = self._cut_off_error(task)
            if not isinstance(exc, asyncio.CancelledError | GeneratorExit):
                model.stats.record_failure(elapsed)
                exc = _model_error(model, exc) if isinstance(exc, Exception) else exc
            self.observer.finished(request, model, elapsed, error=exc)
            raise exc from None
        finally:
            if tracks:
                self._in_flight.discard(task)
            if metrics is not None:
                metrics.in_flight -= 1
        elapsed = time.perf_counter_ns() - started
        model.stats.record_success(elapsed, 0, 0, 0, 0)
        self.observer.finished(request, model, elapsed, 0)

    # Shutting down ------------------------------------------------------------------------

    def _track(self, task: asyncio.Task[Any] | None) -> bool:
        """Count `task` among those waiting on a model; False when an outer call of the same
        task already does (an ensemble's steps run in their parent's task)."""
        if task is None or task in self._in_flight:
            return False
        self._in_flight.add(task)
        return True

    async def drain(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for the inferences in flight to finish, then answer those
        still waiting with UNAVAILABLE (the model code they wait on is not interrupted; its
        results are dropped). Returns how many were cut off."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        # Polled: a shutdown is rare, and a wake-up per finished request is not free.
        while self._in_flight and (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(left, _DRAIN_POLL_S))
        self._exit_timeout_s = timeout_s
        unfinished = list(self._in_flight)
        for task in unfinished:
            self._cut_off.add(task)
            task.cancel()
        return len(unfinished)

    def _cut_off_error(self, waiter: asyncio.Future[Any]) -> Unavailable:
        """The cancellation `drain` sent, turned into the answer the client gets."""
        if isinstance(waiter, asyncio.Task):
            waiter.uncancel()  # handled here: the task goes on to send that answer
        self._cut_off.discard(waiter)
        return Unavailable(
            "the server is shutting down and its exit timeout "
            f"({self._exit_timeout_s:g} s, --exit-timeout) passed before this request finished"
        )

    @staticmethod
    def _select_outputs(
        model: ModelVersion, request: InferRequest, produced: dict[str, Array]
    ) -> dict[str, Array]:
        spec = model.spec
        names = request.requested_outputs or list(spec.outputs)
        outputs: dict[str, Array] = {}
        for name in names:
            array = produced.get(name)
            if array is None:
                raise ModelExecutionError(f"it returned no output '{name}'")
            array = np.asarray(array)
            declared = spec.outputs[name]
            if (reshape := declared.reshape) is not None:
                array = _client_shape(array, declared, reshape, spec.max_batch_size > 0)
            want = declared.datatype
            if array.dtype != want.numpy and (got := datatypes.from_numpy(array.dtype)) != want:
                raise ModelExecutionError(
                    f"output '{name}' is {got.name} but the config declares {want.name}"
                )
            shape = array.shape[1:] if spec.max_batch_size > 0 else array.shape
            dims = declared.dims
            if shape != dims and (  # equal: the common case, one tuple comparison
                len(shape) != len(dims)
                or any(d >= 0 and d != n for d, n in zip(dims, shape, strict=True))
            ):
                raise ModelExecutionError(
                    f"output '{name}' has shape {list(array.shape)} but the config declares "
                    f"{list(declared.metadata_shape(spec.max_batch_size))}"
                )
            if request.classifications and name in request.classifications:
                count = request.classifications[name]
                labels = spec.labels.get(name)
                array = top_classes(name, array, count, spec.max_batch_size > 0, labels)
            outputs[name] = array
        return outputs


def _client_shape(
    array: Array, declared: TensorSpec, reshape: tuple[int, ...], batched: bool
) -> Array:
    """An output with a `reshape`, from the model's shape to the dims clients see."""
    try:
        return reshaped(array, reshape, declared.dims, batched)
    except ValueError:
        raise ModelExecutionError(
            f"output '{declared.name}' has shape {list(array.shape)}, which does not fit its "
            f"reshape {list(reshape)}"
        ) from None


def _response(
    model: ModelVersion, request: InferRequest, outputs: dict[str, Array], final: bool
) -> InferResponse:
    types = model.spec.output_datatypes
    if request.classifications:
        types = {**types, **dict.fromkeys(request.classifications, "BYTES")}
    return InferResponse(
        model_name=model.name,
        model_version=str(model.version),
        id=request.id,
        outputs=outputs,
        datatypes=types,
        final=final,
    )


def _model_error(model: ModelVersion, exc: Exception) -> TensorgateError:
    """What the client is told when running the model failed: expected errors as they are,
    the model's own failures with its name, anything else as a model failure."""
    if isinstance(exc, ModelExecutionError):  # its kind: the model's own choice of status
        return ModelExecutionError(f"model '{model.name}' failed: {exc.message}", exc.kind)
    if isinstance(exc, TensorgateError):
        return exc
    log.warning("model %s raised %s: %s", model.name, type(exc).__name__, exc)
    return ModelExecutionError(f"model '{model.name}' failed: {type(exc).__name__}: {exc}")
