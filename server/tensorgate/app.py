"""Start-up and shut-down: load the repository, serve, drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from functools import partial

import structlog
from prometheus_client import generate_latest
from prometheus_client.registry import Collector

from tensorgate import __version__
from tensorgate.dataplane.dataplane import DataPlane
from tensorgate.dataplane.response_cache import ResponseCache, ResponseCacheCollector
from tensorgate.errors import TensorgateError
from tensorgate.observability.generation_metrics import GenerationCollector
from tensorgate.observability.logs import LogControl
from tensorgate.observability.metrics import MetricsStore, TensorgateCollector, build_registry
from tensorgate.observability.metrics_server import MetricsApp, metrics_server
from tensorgate.observability.requests import InferObserver
from tensorgate.observability.trace_file import TraceFileSink
from tensorgate.observability.tracing import SpanSink, TraceSink, Tracing
from tensorgate.observability.triton_metrics import CpuSampler, MetricsConfig, TritonCollector
from tensorgate.protocol.tensors import LIMITS
from tensorgate.repository.manager import ModelRepository
from tensorgate.repository.polling import RepositoryPoller
from tensorgate.settings import Settings
from tensorgate.transport import PortInUse
from tensorgate.transport.access import AccessCollector, build_policy
from tensorgate.transport.asgi import AsgiServer
from tensorgate.transport.grpc.server import GrpcServer
from tensorgate.transport.rest.server import build_app, cloud_servers, http_server
from tensorgate.workers.role import WorkerRole
from tensorgate.workers.siblings import Siblings

log = structlog.stdlib.get_logger("tensorgate")

# How long the transports keep going after the exit timeout, for the answers to requests
# cut off at the timeout to go out.
ANSWER_S = 1.0
# How long a shutdown waits for the models to close once no request waits on them, or, when
# requests were cut off, for the batches they were in: model code that runs on is not
# waited for longer, its thread ends with the process.
CLOSE_S = 5.0


def models_to_load(settings: Settings, names: list[str]) -> list[str]:
    """Every model in modes none and poll; in explicit mode only those named by --load-model."""
    if settings.model_control_mode != "explicit" or "*" in settings.load_model:
        return names
    return list(settings.load_model)


def _tracing(settings: Settings, role: WorkerRole | None) -> Tracing | None:
    """Where traces go: Triton's trace file, OpenTelemetry, or nowhere (None)."""
    sink: TraceSink
    trace_settings = settings.trace_settings()
    if settings.trace_file is not None:
        path = settings.trace_file
        if role is not None:  # one file per worker process, each whole and valid
            path = path.with_name(f"{path.name}.worker{role.index}")
        sink = TraceFileSink(path, trace_settings)
    elif settings.trace_exporter != "none":
        resource = dict(item.split("=", 1) for item in settings.trace_resource)
        sink = SpanSink(settings.trace_exporter, None, settings.trace_otlp_url, resource)
    else:
        return None
    return Tracing(trace_settings, sink)


class Servers:
    """Everything `serve` starts, wired together; tests build one with their own tracer."""

    def __init__(
        self,
        settings: Settings,
        log_control: LogControl | None = None,
        tracing: Tracing | None = None,
        role: WorkerRole | None = None,
    ) -> None:
        self.settings = settings
        # The codecs read these for every tensor (protocol/tensors.py).
        LIMITS.max_elements = settings.max_tensor_elements
        LIMITS.max_bytes_element = settings.max_bytes_element
        self.metrics = MetricsStore() if settings.metrics_port >= 0 else None
        self.repository = ModelRepository(settings, self.metrics, self._state_changed)
        self.tracing = tracing if tracing is not None else _tracing(settings, role)
        self.cache = ResponseCache(settings.cache_size) if settings.cache_size else None
        self.dataplane = DataPlane(
            self.repository,
            settings.model_control_mode == "explicit",
            InferObserver(self.metrics, settings.access_log_rate),
            settings.strict_readiness,
            self.tracing,
            self.cache,
            settings.server_id,
        )
        self.policy = build_policy(settings)
        self.role = role
        registry = None
        if self.metrics is not None:
            collector = TensorgateCollector(
                self.metrics,
                self.repository.states,
                self._live_versions,
                self.dataplane.server_ready,
                __version__,
            )
            generation = GenerationCollector(self.dataplane.generation_snapshots)
            extra: list[Collector] = [
                AccessCollector(self.policy),
                self.dataplane.model_code_metrics,
            ]
            if self.cache is not None:
                extra.append(ResponseCacheCollector(self.cache))
            interval_s = settings.metrics_interval_ms / 1000
            cpu = CpuSampler(interval_s=interval_s) if settings.allow_cpu_metrics else None
            config = MetricsConfig.parse(settings.metrics_config)
            extra.append(TritonCollector(self.dataplane.loaded_versions, cpu, config))
            registry = build_registry(collector, generation, *extra, gpu=settings.allow_gpu_metrics)
        metrics_text = partial(generate_latest, registry) if registry is not None else None
        self.siblings = siblings = Siblings(role) if role is not None else None
        self.grpc = GrpcServer(
            settings, self.dataplane, log_control, self.policy, metrics_text, siblings
        )
        # A worker also listens on its own socket, for its siblings and the supervisor.
        self.private = (
            GrpcServer(
                settings,
                self.dataplane,
                log_control,
                metrics_text=metrics_text,
                private_address=role.address(role.index),
            )
            if role is not None
            else None
        )
        rest = build_app(settings, self.dataplane, log_control, self.policy, siblings)
        grace_s = settings.exit_timeout + ANSWER_S
        self.http = http_server(settings, rest, grace_s) if settings.http_port >= 0 else None
        # SageMaker's and Vertex AI's ports, in front of the same REST app.
        self.cloud = cloud_servers(settings, rest, self.dataplane, grace_s)
        self.poller = (
            RepositoryPoller(self.repository, settings.repository_poll_secs)
            if settings.model_control_mode == "poll"
            else None
        )
        self._polling: asyncio.Task[None] | None = None
        self.metrics_server: AsgiServer | None = None
        if registry is not None and role is None:  # a supervisor serves the workers' metrics
            self.metrics_server = metrics_server(MetricsApp(registry, self.policy), settings)

    def _state_changed(self) -> None:
        self.grpc.health_changed()

    def _live_versions(self) -> list[tuple[str, int, int, int, int]]:
        live = []
        for m in self.dataplane.loaded_versions():
            status = m.runner.status()
            live.append((m.name, m.version, status.queued, status.executing, status.abandoned))
        return live

    async def start(self) -> dict[str, int]:
        """Bind every port (PortInUse if one is busy); nothing is ready yet."""
        try:
            ports = {"grpc": await self.grpc.start()}
            if self.http is not None:
                ports["http"] = await self.http.start()
            if self.metrics_server is not None:
                ports["metrics"] = await self.metrics_server.start()
            for server in self.cloud:
                ports[server.what.lower().replace(" ", "_")] = await server.start()
        except PortInUse:
            await self.stop(0)
            raise
        return ports

    async def start_private(self) -> None:
        """A worker's own socket (siblings and the supervisor call it from the start)."""
        assert self.private is not None
        await self.private.start()

    async def load(self) -> list[tuple[str, BaseException]]:
        """Start-up loading; the server turns ready when it is done (and, strictly, all
        models loaded). Returns the models that failed."""
        settings, repository = self.settings, self.repository
        if self.poller is not None:  # changes made while the models load are seen later
            await self.poller.remember()
        names = models_to_load(settings, repository.scan())
        if self.role is not None and settings.model_control_mode == "explicit":
            names = sorted(set(names) | set(await self._loaded_by_siblings()))
        results = await asyncio.gather(
            *(repository.ensure_loaded(n) for n in names), return_exceptions=True
        )
        failed = [
            (n, r) for n, r in zip(names, results, strict=True) if isinstance(r, BaseException)
        ]
        self.dataplane.started = True
        await self.grpc.refresh_health()
        if self.poller is not None:
            self._polling = asyncio.create_task(self.poller.run())
        return failed

    async def _loaded_by_siblings(self) -> list[str]:
        """What the other workers have loaded (a restarted worker catches up with them)."""
        from tensorgate_protos import grpc_service_pb2 as pb

        assert self.siblings is not None
        indexes = await self.siblings.gather(
            "RepositoryIndex", pb.RepositoryIndexRequest(ready=True)
        )
        return [m.name for index in indexes for m in index.models if m.state == "READY"]

    def in_flight(self) -> int | None:
        """Requests inside the data plane now; None without metrics (which count them)."""
        if self.metrics is None:
            return None
        return sum(m.in_flight for _, m in self.metrics.snapshot())

    async def stop(self, exit_timeout_s: float) -> int:
        """Readiness off and no new calls; the requests in flight get `exit_timeout_s` to
        finish and those still unanswered then get UNAVAILABLE; then the models are
        released. Returns how many requests were cut off."""
        self.dataplane.draining = True
        if self._polling is not None:
            self._polling.cancel()
        await self.grpc.refresh_health()
        grace_s = exit_timeout_s + ANSWER_S
        stopping = asyncio.gather(
            self.grpc.stop(grace_s),
            *([self.private.stop(grace_s)] if self.private is not None else []),
            *(s.stop() for s in (self.http, self.metrics_server, *self.cloud) if s is not None),
        )
        cut_off = await self.dataplane.drain(exit_timeout_s)
        if cut_off:
            log.warning(
                "exit timeout passed: requests still in flight are answered UNAVAILABLE",
                exit_timeout_s=exit_timeout_s,
                cut_off=cut_off,
            )
        await stopping
        await self.repository.close(ANSWER_S if cut_off else CLOSE_S)
        self.dataplane.shared_memory.close()
        if self.tracing is not None:
            self.tracing.shutdown()
        return cut_off


async def serve(
    settings: Settings, log_control: LogControl | None = None, role: WorkerRole | None = None
) -> int:
    """Run the server until a signal arrives; returns the process exit code. With `role`,
    this process is one worker of several (workers/supervisor.py)."""
    started = time.perf_counter()
    for root in settings.model_repository:
        if not root.is_dir():
            log.error(f"model repository {root} does not exist or is not a directory")
            return 2
    try:
        servers = Servers(settings, log_control, role=role)
    except (RuntimeError, ValueError, OSError) as exc:  # tracing without its extra, a bad
        log.error(str(exc))  # token file
        return 2
    try:
        # A worker takes connections only once its models are loaded: until then the kernel
        # sends every connection to its siblings, whose readiness is not in doubt.
        ports = await servers.start() if role is None else {}
        if role is not None:
            await servers.start_private()
    except PortInUse as exc:  # start() has already closed whatever it had opened
        log.error(str(exc))
        return 2
    log.info(
        "listening (not ready until models load)" if role is None else "loading",
        event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        **ports,
        **{
            f"{name}_address": settings.address(name)
            for name in ("grpc", "http", "metrics")
            if name in ports
        },
    )

    failed = await servers.load()
    if role is not None:
        try:
            ports = await servers.start()
        except PortInUse as exc:
            log.error(str(exc))
            await servers.stop(0)
            return 2
    for name, error in failed:
        message = error.message if isinstance(error, TensorgateError) else repr(error)
        log.error("model is unavailable", model=name, reason=message)
    if failed and settings.exit_on_error:
        log.error("exiting: model(s) failed to load and --exit-on-error is set", failed=len(failed))
        await servers.stop(0)
        return 1
    log.info(
        "ready" if servers.dataplane.server_ready() else "serving, but not ready",
        models=len(servers.dataplane.loaded_versions()),
        failed=len(failed),
        seconds=round(time.perf_counter() - started, 2),
        **ports,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # A worker leaves Ctrl-C to its supervisor, which sends it SIGTERM.
    for sig in (signal.SIGINT, signal.SIGTERM) if role is None else (signal.SIGTERM,):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    exit_timeout_s = settings.exit_timeout
    log.info(
        "shutting down: draining", exit_timeout_s=exit_timeout_s, in_flight=servers.in_flight()
    )
    cut_off = await servers.stop(exit_timeout_s)
    log.info("stopped", cut_off=cut_off, unfinished=servers.in_flight())
    return 0


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop to serve on: uvloop unless asked otherwise or not installed.

    Every request crosses the loop several times (grpc.aio's completion events, the batch
    hand-off to an instance thread and back, uvicorn's protocol callbacks), and the loop
    thread is where a small model's throughput tops out. uvloop runs the same callbacks with
    less interpreter work per iteration: measured on add_sub, about a tenth less loop CPU per
    gRPC request and 40-60 % more HTTP requests per second at c=8 (benchmarks/RESULTS.md).
    """
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise RuntimeError("--event-loop uvloop: uvloop is not installed") from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(settings: Settings) -> int:
    """Configure logging and run the server's event loop (or, with --workers, the
    supervisor of worker processes)."""
    log_control = LogControl(
        settings.log_level, settings.dev, settings.log_format, settings.log_file
    )
    try:
        factory = loop_factory(settings.event_loop)
    except RuntimeError as exc:
        log.error(str(exc))
        return 2
    if settings.workers != "1":
        from tensorgate.workers.supervisor import supervise, worker_count

        for root in settings.model_repository:
            if not root.is_dir():
                log.error(f"model repository {root} is not a directory")
                return 2
        count = worker_count(settings)
        if count > 1:
            with asyncio.Runner(loop_factory=factory) as runner:
                return runner.run(supervise(settings, count))
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(serve(settings, log_control))
