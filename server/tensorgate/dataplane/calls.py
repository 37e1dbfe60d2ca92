"""Model code calling other models of the same server (Triton's BLS), from its own thread.

Model code runs on instance threads, never on the server's event loop, so a call crosses
to the loop with `run_coroutine_threadsafe` and goes through the data plane like any
client's request: validated, batched with other traffic, counted in statistics.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator
from typing import Any

from tensorgate.dataplane.types import InferRequest, InferResponse
from tensorgate.errors import FailedPrecondition

Infer = Callable[[InferRequest], Coroutine[Any, Any, InferResponse]]
Stream = Callable[[InferRequest], AsyncGenerator[InferResponse, None]]
_END = object()


class ModelCalls:
    """The data plane's infer and stream, callable from model threads."""

    def __init__(self, infer: Infer, stream: Stream) -> None:
        self.on_loop = infer  # for callers already on the server's loop (ensembles)
        self._infer = infer
        self._stream = stream
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

    def infer(self, request: InferRequest, timeout_s: float | None = None) -> InferResponse:
        """Blocking: one response (from a model's thread)."""
        future: Any = asyncio.run_coroutine_threadsafe(self._infer(request), self._server_loop())
        result: InferResponse = future.result(timeout_s)
        return result

    async def infer_async(self, request: InferRequest) -> InferResponse:
        """From a model's own event loop (`async def execute`)."""
        future: Any = asyncio.run_coroutine_threadsafe(self._infer(request), self._server_loop())
        result: InferResponse = await asyncio.wrap_future(future)
        return result

    def stream(self, request: InferRequest) -> Iterator[InferResponse]:
        """Blocking: a decoupled model's responses, as they come."""
        responses: queue.Queue[object] = queue.Queue()

        async def pump() -> None:
            try:
                async for response in self._stream(request):
                    responses.put(response)
            except BaseException as exc:
                responses.put(exc)
                raise
            finally:
                responses.put(_END)

        future = asyncio.run_coroutine_threadsafe(pump(), self._server_loop())
        try:
            while (item := responses.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, InferResponse)
                yield item
        finally:
            future.cancel()
