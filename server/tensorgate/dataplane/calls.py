"""Model code calling other models of the same server (Triton's BLS), from its own thread.

Model code runs on instance threads, never on the server's event loop, so a call crosses
to the loop with `run_coroutine_threadsafe` and goes through the data plane like any
client's request: validated, batched with other traffic, counted in statistics. Model code
in a process instance calls through its control channel (executors/process_instance.py),
whose server side submits here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator
from typing import Any, Protocol

from tensorgate.dataplane.types import InferRequest, InferResponse
from tensorgate.errors import FailedPrecondition
from tensorgate.observability.model_code_metrics import ModelCodeMetrics
from tensorgate.observability.tracing import traced_step, traced_stream

Infer = Callable[[InferRequest], Coroutine[Any, Any, InferResponse]]
Stream = Callable[[InferRequest], AsyncGenerator[InferResponse, None]]
# Repository operations model code may ask for: ("load" | "unload" | "ready", arguments).
Control = Callable[[str, tuple[Any, ...]], Coroutine[Any, Any, Any]]
# What a stream's `deliver` is given after its last response (or its error).
STREAM_END = object()


class Caller(Protocol):
    """What model code calls models through: the server's ModelCalls in its own process,
    a process instance's channel back to the server in a child."""

    def infer(self, request: InferRequest, timeout_s: float | None = None) -> InferResponse: ...

    async def infer_async(self, request: InferRequest) -> InferResponse: ...

    def stream(self, request: InferRequest) -> Iterator[InferResponse]: ...

    def control(self, operation: str, *arguments: Any) -> Any: ...

    def metrics(self, operation: str, *arguments: Any) -> Any:
        """An operation on the metrics model code defines (ModelCodeMetrics.apply)."""


class ModelCalls:
    """The data plane's infer and stream, callable from model threads."""

    def __init__(
        self,
        infer: Infer,
        stream: Stream,
        control: Control | None = None,
        model_code_metrics: ModelCodeMetrics | None = None,
    ) -> None:
        self.on_loop = infer  # for callers already on the server's loop (ensembles)
        self.model_code_metrics = model_code_metrics or ModelCodeMetrics()
        self.stream_on_loop = stream
        self._infer = infer
        self._stream = stream
        self._control = control
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the data plane serves on (set once the server runs)."""
        self._loop = loop

    def _server_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed():
            raise FailedPrecondition("the server is not running: models cannot be called")
        if threading.get_ident() == getattr(loop, "_thread_id", None):
            raise FailedPrecondition("a model call cannot block the server's event loop")
        return loop

    def submit(self, request: InferRequest) -> concurrent.futures.Future[InferResponse]:
        """Start a call from any thread but the loop's; its future resolves on the loop.
        A call made under a traced request (`request.trace` is the caller's) is traced
        as a step of it."""
        call = self._infer(request) if request.trace is None else self._traced(request)
        return asyncio.run_coroutine_threadsafe(call, self._server_loop())

    async def _traced(self, request: InferRequest) -> InferResponse:
        _trace_under_caller(request)
        return await traced_step(request, self._infer)

    def submit_stream(
        self, request: InferRequest, deliver: Callable[[object], None]
    ) -> concurrent.futures.Future[None]:
        """Start a decoupled call: `deliver` gets each response, then an error if one ends
        it, then STREAM_END, on the server's loop; cancel the future to stop early. A call
        made under a traced request is traced as a step of it, each response recorded."""

        async def pump() -> None:
            if request.trace is None:
                responses = self._stream(request)
            else:
                _trace_under_caller(request)
                responses = traced_stream(request, self._stream)
            try:
                async for response in responses:
                    deliver(response)
            except Exception as exc:
                deliver(exc)
            finally:
                deliver(STREAM_END)

        return asyncio.run_coroutine_threadsafe(pump(), self._server_loop())

    def submit_control(
        self, operation: str, arguments: tuple[Any, ...]
    ) -> concurrent.futures.Future[Any]:
        """Start a repository operation (load, unload, ready) from any thread but the loop's."""
        if self._control is None:
            raise FailedPrecondition("models can only load models in a server")
        return asyncio.run_coroutine_threadsafe(
            self._control(operation, arguments), self._server_loop()
        )

    def control(self, operation: str, *arguments: Any) -> Any:
        """Blocking: a repository operation's result (from a model's thread)."""
        return self.submit_control(operation, arguments).result()

    def metrics(self, operation: str, *arguments: Any) -> Any:
        """Applied here and now: the store is thread-safe and never waits on the loop."""
        return self.model_code_metrics.apply(operation, arguments)

    def infer(self, request: InferRequest, timeout_s: float | None = None) -> InferResponse:
        """Blocking: one response (from a model's thread)."""
        return self.submit(request).result(timeout_s)

    async def infer_async(self, request: InferRequest) -> InferResponse:
        """From a model's own event loop (`async def execute`)."""
        return await asyncio.wrap_future(self.submit(request))

    def stream(self, request: InferRequest) -> Iterator[InferResponse]:
        """Blocking: a decoupled model's responses, as they come."""
        responses: queue.Queue[object] = queue.Queue()
        future = self.submit_stream(request, responses.put)
        try:
            while (item := responses.get()) is not STREAM_END:
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, InferResponse)
                yield item
        finally:
            future.cancel()


def _trace_under_caller(request: InferRequest) -> None:
    """A call's own trace, a step of its caller's (`request.trace` until now). On the
    server's loop, where the caller's trace is written to."""
    request.trace = request.trace.step(request.model_name)
