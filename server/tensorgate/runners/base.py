"""The seam between the data plane and whatever runs a model version.

The data plane, the transports, metrics and the status page see a model version only as a
`ModelRunner`: the dynamic batcher, the decoupled runner, the sequence batcher and the
ensemble scheduler each implement it. A request's results are a stream: `run` answers an
ordinary model's request with its one result; `stream` yields a decoupled model's results,
zero or more, each flagged final or not (and an ordinary model's one result, flagged final).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tensorgate.dataplane.types import Array, InferRequest

if TYPE_CHECKING:
    from tensorgate_protos import model_config_pb2 as mc

    from tensorgate.dataplane.statistics import ModelStats
    from tensorgate.observability.metrics import ModelMetrics
    from tensorgate.repository.config import ModelSpec


@dataclass(slots=True)
class BatchTiming:
    """One executed batch, shared by the results of every request in it (perf_counter ns)."""

    dispatched_ns: int
    merged_ns: int
    inferred_ns: int
    finished_ns: int
    rows: int
    requests: int
    traces: list[Any] = field(default_factory=list)  # traced requests in it (tracing on)


@dataclass(slots=True)
class Scheduled:
    """One request's outputs and where its time went (nanoseconds)."""

    outputs: dict[str, Array]
    queue_ns: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int
    batch: BatchTiming | None  # None: no single batch (an ensemble, a decoupled stream)


@dataclass(slots=True)
class Streamed:
    """One response of a request's stream; `outputs` is None for a bare final flag."""

    outputs: dict[str, Array] | None
    final: bool


@dataclass(frozen=True, slots=True)
class RunnerStatus:
    """What the status page and the metrics show of a runner right now."""

    queued: int  # requests waiting to run
    executing: int  # batches (or streams, or sequences) running
    instances: int  # model instances behind the runner; 0 for an ensemble
    abandoned: int = 0  # instances given up on (past the model's timeout) since the load


class ModelRunner(Protocol):
    """Runs one model version's requests; knows nothing of gRPC or HTTP.

    A runner may also offer `start(request, rows) -> asyncio.Future[Scheduled]`: `run` for
    callers with no task of their own (a gRPC stream's requests), whose future's
    cancellation withdraws the request. The dynamic batcher does; the data plane runs
    `run` in a task for the others.
    """

    # A decoupled runner answers through `stream` only: `run` is refused by the data plane.
    decoupled: bool

    def run(self, request: InferRequest, rows: int) -> Awaitable[Scheduled]:
        """The one result of a request that has been validated (`rows` is its batch size)."""
        ...

    def stream(self, request: InferRequest, rows: int) -> AsyncGenerator[Streamed, None]:
        """The request's results as they are produced; closing it early cancels the rest."""
        ...

    def status(self) -> RunnerStatus: ...

    async def close(self) -> None:
        """Stop taking requests, finish those taken, release the instances."""
        ...

    def discard(self) -> None:
        """Blocking: release the instances of a runner that never served (a failed load)."""
        ...


async def one_result(run: Awaitable[Scheduled]) -> AsyncGenerator[Streamed, None]:
    """An ordinary model's stream: its one result, flagged final."""
    done = await run
    yield Streamed(done.outputs, True)


@dataclass(slots=True)
class ModelVersion:
    """One loaded version of a model: its completed config, its runner and its counters."""

    name: str
    version: int
    config: mc.ModelConfig
    spec: ModelSpec
    runner: ModelRunner
    stats: ModelStats
    metrics: ModelMetrics | None = None  # None when Prometheus metrics are off
    # Models this one calls (an ensemble's steps): it is ready only while they are.
    needs: tuple[str, ...] = ()
    cached: bool = False  # its answers go through the response cache
