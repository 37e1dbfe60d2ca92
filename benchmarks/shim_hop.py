"""tensorgate's REST shim in front of a free data plane: what the shim alone leaves of the ceiling.

The server is `tensorgate serve`'s HTTP side (uvicorn with tensorgate's protocol, routing,
header parsing, binary decode, request ids, encoding), with `DataPlane.infer` and
`DataPlane.infer_soon` (which the shim calls for requests it answers without a task) replaced
by the numpy add_sub of bare_asgi.py. With --thread-hop (what run_http_bench.py runs) that
numpy runs in one worker thread, one hand-off per request: no model lookup, validation
against the config, batcher, statistics, metrics or access log, only the hop that keeps model
code off the event loop. Its throughput is the most any data plane behind this shim could reach, so

- tensorgate ÷ this is what the data plane and batcher cost, and
- this ÷ bare_asgi.py --thread-hop is what the shim itself costs.

Metadata and config routes answer from the real repository (add_sub is loaded), so
perf_analyzer accepts it. http_inprocess.py uses the same replacements in one process.
usage: python benchmarks/shim_hop.py PORT REPOSITORY [--thread-hop]
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from tensorgate.dataplane.types import InferRequest, InferResponse

Infer = Callable[[InferRequest], Awaitable[InferResponse]]
Answer = Callable[[InferResponse | BaseException], None]
InferSoon = Callable[[InferRequest, Answer], "asyncio.Future[Any] | None"]
# What stands in for the data plane's two ways into a model.
FreeDataPlane = tuple[Infer, InferSoon]
_DATATYPES = {"OUTPUT0": "FP32", "OUTPUT1": "FP32"}


def _add_sub(request: InferRequest) -> dict[str, np.ndarray]:
    a, b = request.inputs["INPUT0"], request.inputs["INPUT1"]
    return {"OUTPUT0": a + b, "OUTPUT1": a - b}


def _response(request: InferRequest, outputs: dict[str, np.ndarray]) -> InferResponse:
    return InferResponse("add_sub", "1", request.id, outputs, dict(_DATATYPES))


async def _inline(request: InferRequest) -> InferResponse:
    return _response(request, _add_sub(request))


def _inline_soon(request: InferRequest, answer: Answer) -> None:
    answer(_response(request, _add_sub(request)))


# add_sub on the event loop itself: the shim with no data plane and no hop.
inline_infer: FreeDataPlane = (_inline, _inline_soon)


def hop_infer() -> FreeDataPlane:
    """add_sub in one worker thread: the shim with only the executor's hand-off."""
    jobs: queue.SimpleQueue[tuple[InferRequest, asyncio.Future[dict[str, np.ndarray]]]]
    jobs = queue.SimpleQueue()

    def work() -> None:
        while True:
            request, future = jobs.get()
            future.get_loop().call_soon_threadsafe(future.set_result, _add_sub(request))

    threading.Thread(target=work, name="shim-hop", daemon=True).start()

    async def infer(request: InferRequest) -> InferResponse:
        future: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        jobs.put((request, future))
        return _response(request, await future)

    def infer_soon(request: InferRequest, answer: Answer) -> asyncio.Future[Any]:
        future: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        jobs.put((request, future))

        def done(outputs: asyncio.Future[dict[str, np.ndarray]]) -> None:
            if outputs.cancelled():
                answer(asyncio.CancelledError())
            else:
                answer(_response(request, outputs.result()))

        future.add_done_callback(done)
        return future

    return infer, infer_soon


async def servers_with(
    free: FreeDataPlane | None, repository: Path, http_port: int, execution: str = "thread"
) -> Any:
    """tensorgate's Servers with add_sub loaded (its batches run where `execution` says), and
    `free` in place of the data plane's ways into a model unless it is None. Nothing is
    bound: callers start only what they serve."""
    from tensorgate.app import Servers
    from tensorgate.settings import Settings

    settings = Settings(
        model_repository=[repository],
        host="127.0.0.1",
        http_port=http_port,
        metrics_port=0,
        execution=execution,
    )
    servers = Servers(settings)
    servers.repository.scan()
    await servers.repository.load("add_sub")
    servers.dataplane.started = True
    if free is not None:
        servers.dataplane.infer, servers.dataplane.infer_soon = free  # type: ignore[method-assign]
    return servers


async def _serve(port: int, repository: Path, thread_hop: bool) -> None:
    servers = await servers_with(hop_infer() if thread_hop else inline_infer, repository, port)
    assert servers.http is not None
    await servers.http.start()
    await asyncio.Event().wait()  # until the benchmark terminates the process


if __name__ == "__main__":
    from tensorgate.app import loop_factory

    with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:
        runner.run(_serve(int(sys.argv[1]), Path(sys.argv[2]), "--thread-hop" in sys.argv[3:]))
