"""`tensorgate serve --workers N`: a supervisor process and N workers sharing the ports.

Why processes, and why this way: one process's Python layer (grpcio's Python side, the event
loop) tops out near one core, whatever the model does. N worker processes each run the whole
server (event loop, batchers, model instances: `instance_group` counts are per worker) and
bind the gRPC and HTTP ports with SO_REUSEPORT, so the kernel spreads connections over them
and a request never crosses a process. The supervisor holds no model and shares no memory
with the workers: a worker that crashes corrupts nothing of the others'. It talks to each
over that worker's private unix socket (gRPC), in a directory only the server's user can
open, which is also how workers reach each other for the answers that cover the whole
server (statistics, the repository index, control and log settings; workers/siblings.py).

The supervisor serves the metrics port: each scrape gathers every worker's series and
sums them (workers/metrics_merge.py). It restarts a worker that dies, after a backoff that
grows while the worker keeps dying (a crash loop is logged, and counted in
`tensorgate_worker_restarts_total`); the others serve meanwhile. SIGTERM (or a first
SIGINT) drains every worker; a second SIGINT ends them at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import grpc
import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from tensorgate_protos import server_status_pb2 as status_pb
from tensorgate_protos import server_status_pb2_grpc as status_grpc

from tensorgate.errors import TensorgateError
from tensorgate.observability.logs import LogControl
from tensorgate.observability.metrics_server import metrics_server
from tensorgate.repository.config import read_config
from tensorgate.settings import Settings
from tensorgate.transport import PortInUse
from tensorgate.transport.access import WWW_AUTHENTICATE, AccessPolicy, build_policy
from tensorgate.transport.asgi import AsgiServer
from tensorgate.workers import metrics_merge
from tensorgate.workers.role import WorkerRole

log = structlog.stdlib.get_logger("tensorgate")

# A worker that lived this long is healthy again: its backoff starts over.
HEALTHY_AFTER_S = 60.0
CRASH_LOOP_RESTARTS = 5  # restarts within HEALTHY_AFTER_S that count as a crash loop
MAX_BACKOFF_S = 30.0
# A worker's drain past its --exit-timeout (answering what it cut off, closing its models)
# before it is killed.
DRAIN_S = 10.0


def worker_count(settings: Settings) -> int:
    """`--workers`: a number, or `auto`: one per usable core, but one when a model in the
    repository cannot be repeated per process (a language model's KV cache, GPU instances)."""
    if settings.workers != "auto":
        return int(settings.workers)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    dirs = sorted(p for root in settings.model_repository for p in root.iterdir() if p.is_dir())
    for model_dir in dirs:
        try:
            config = read_config(model_dir, settings.model_config_name)
        except TensorgateError:
            continue
        if config is None:
            continue
        # KIND_MODEL: model code places itself, on a GPU as likely as not.
        gpu = any(g.kind in (g.KIND_GPU, g.KIND_MODEL) for g in config.instance_group)
        if config.backend == "generation" or gpu:
            log.info(
                "--workers auto: one worker",
                reason=f"model {model_dir.name} holds a "
                "GPU or a KV cache that each worker would repeat",
            )
            return 1
    return max(1, cores or 1)


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host.strip("[]"), 0))
        return int(sock.getsockname()[1])


# Linux resets the connections a dying listener had queued but not accepted unless this is 1
# (Linux 5.14 on), when they move to another listener on the port: a live worker.
MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def _say_if_queued_connections_are_reset() -> None:
    try:
        migrate = MIGRATE_REQ.read_text().strip()
    except OSError:
        return  # not Linux, or a kernel without it
    if migrate == "0":
        log.info(
            "connections queued at a worker that dies are reset, not moved to another worker; "
            "sysctl net.ipv4.tcp_migrate_req=1 moves them",
        )


def worker_main(settings: Settings, role: WorkerRole) -> None:
    """A worker process: the whole server, in a process of its own (spawned)."""
    from tensorgate.app import loop_factory, serve

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides on Ctrl-C
    structlog.contextvars.bind_contextvars(worker=role.index)
    log_control = LogControl(
        settings.log_level, settings.dev, settings.log_format, settings.log_file
    )
    with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
        code = runner.run(serve(settings, log_control, role))
    raise SystemExit(code)


@dataclasses.dataclass(slots=True)
class _Slot:
    """One worker position: its current process and its history of restarts."""

    role: WorkerRole
    process: Any = None  # multiprocessing.Process
    started: float = 0.0
    restarts: int = 0
    recent: list[float] = dataclasses.field(default_factory=list)  # restart times
    restart_at: float = 0.0  # when a dead worker is due to start again; 0: not dead


class Supervisor:
    """Starts, watches and stops the workers; serves the merged metrics."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.socket_dir = Path(tempfile.mkdtemp(prefix="tensorgate-workers-"))
        os.chmod(self.socket_dir, 0o700)
        # Workers must agree on the ports: a 0 (any free port) is chosen here, once.
        self.worker_settings = dataclasses.replace(
            settings,
            workers="1",
            reuse_port=True,
            grpc_port=settings.grpc_port or _free_port(settings.address("grpc")),
            http_port=settings.http_port or _free_port(settings.address("http")),
        )
        self.slots = [_Slot(WorkerRole(i, count, self.socket_dir)) for i in range(count)]
        self.context = multiprocessing.get_context("spawn")
        self.stopping = False
        self.policy = build_policy(settings)
        self.metrics_server: AsgiServer | None = None
        if settings.metrics_port >= 0:
            self.metrics_server = metrics_server(_MetricsApp(self), settings)
        self._stubs: dict[int, status_grpc.ServerStatusStub] = {}
        _say_if_queued_connections_are_reset()

    # Workers ----------------------------------------------------------------------------

    def _start(self, slot: _Slot) -> None:
        process = self.context.Process(
            target=worker_main,
            args=(self.worker_settings, slot.role),
            name=f"tensorgate-worker-{slot.role.index}",
        )
        process.start()
        slot.process, slot.started, slot.restart_at = process, time.monotonic(), 0.0
        log.info("worker started", worker=slot.role.index, pid=process.pid)

    def _died(self, slot: _Slot) -> None:
        now = time.monotonic()
        code = slot.process.exitcode
        slot.recent = [t for t in slot.recent if now - t < HEALTHY_AFTER_S]
        backoff = (
            0.0
            if now - slot.started > HEALTHY_AFTER_S
            else min(MAX_BACKOFF_S, 0.5 * 2 ** len(slot.recent))
        )
        slot.recent.append(now)
        slot.restarts += 1
        slot.restart_at = now + backoff
        if len(slot.recent) >= CRASH_LOOP_RESTARTS:
            log.error(
                "worker is crash looping",
                worker=slot.role.index,
                exit_code=code,
                restarts=len(slot.recent),
                within_s=HEALTHY_AFTER_S,
                next_in_s=backoff,
            )
        else:
            log.error(
                "worker died; restarting it",
                worker=slot.role.index,
                exit_code=code,
                backoff_s=round(backoff, 2),
            )

    async def watch(self) -> None:
        """Restart workers that die, until stopping."""
        while not self.stopping:
            now = time.monotonic()
            for slot in self.slots:
                if slot.restart_at:
                    if now >= slot.restart_at:
                        self._start(slot)
                elif slot.process is not None and slot.process.exitcode is not None:
                    self._died(slot)
            await asyncio.sleep(0.1)

    async def stop(self, kill: bool = False) -> None:
        """SIGTERM every worker and wait for their drain (SIGKILL when `kill`, or late)."""
        self.stopping = True
        processes = [s.process for s in self.slots if s.process is not None]
        for process in processes:
            if process.exitcode is None:
                os.kill(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + self.settings.exit_timeout + DRAIN_S
        while any(p.exitcode is None for p in processes) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for process in processes:
            if process.exitcode is None:
                log.error("worker did not drain in time; killing it", pid=process.pid)
                process.kill()
                process.join(5)

    # Metrics ----------------------------------------------------------------------------

    def _stub(self, index: int) -> status_grpc.ServerStatusStub:
        stub = self._stubs.get(index)
        if stub is None:
            channel = self.slots[index].role.channel(index)
            stub = self._stubs[index] = status_grpc.ServerStatusStub(channel)
        return stub

    async def metrics(self) -> bytes:
        """Every live worker's series, merged, and the supervisor's own."""

        async def one(index: int) -> tuple[int, str] | None:
            try:
                call = self._stub(index).Metrics(status_pb.MetricsRequest(), timeout=5)
                reply: status_pb.MetricsResponse = await call  # type: ignore[misc]
            except grpc.aio.AioRpcError:
                return None  # starting or restarting: its series come back with it
            return index, reply.text.decode()

        gathered = await asyncio.gather(*(one(s.role.index) for s in self.slots))
        families = metrics_merge.merge(g for g in gathered if g is not None)
        return metrics_merge.render([*families, *self._own(sum(g is not None for g in gathered))])

    def _own(self, answering: int) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "tensorgate_workers", "Worker processes, by state (serving, down).", labels=["state"]
        )
        up.add_metric(["serving"], answering)
        up.add_metric(["down"], len(self.slots) - answering)
        yield up
        restarts = CounterMetricFamily(
            "tensorgate_worker_restarts",
            "Times each worker process was restarted after it died.",
            labels=["worker"],
        )
        for slot in self.slots:
            restarts.add_metric([str(slot.role.index)], slot.restarts)
        yield restarts

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Each worker: up or down, its restarts, and whether it is crash looping."""
        now = time.monotonic()
        workers = []
        for slot in self.slots:
            recent = [t for t in slot.recent if now - t < HEALTHY_AFTER_S]
            alive = slot.process is not None and slot.process.exitcode is None
            workers.append(
                {
                    "worker": slot.role.index,
                    "pid": slot.process.pid if alive else None,
                    "up": alive,
                    "restarts": slot.restarts,
                    "crash_looping": len(recent) >= CRASH_LOOP_RESTARTS,
                }
            )
        healthy = all(w["up"] and not w["crash_looping"] for w in workers)
        return healthy, {"healthy": healthy, "workers": workers}

    def close(self) -> None:
        shutil.rmtree(self.socket_dir, ignore_errors=True)


Scope = MutableMapping[str, Any]


class _MetricsApp:
    """GET /metrics on the supervisor: the workers' series merged; GET /health: the
    workers' state as JSON, 200 while none is down or crash looping, else 503."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        policy: AccessPolicy = supervisor.policy
        self.policy = policy if policy.active else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        status, body, extra = 200, b"", [(b"content-type", b"text/plain; version=0.0.4")]
        if scope["path"] == "/health":
            healthy, document = self.supervisor.health()
            status, body = (200 if healthy else 503), json.dumps(document).encode()
            extra = [(b"content-type", b"application/json")]
        elif scope["path"] not in ("/metrics", "/metrics/"):
            status, body = 404, b"not found: metrics are at /metrics\n"
        else:
            try:
                if self.policy is not None:
                    headers = self.policy.asgi_headers(scope["headers"])
                    self.policy.check("statistics", headers, "metrics", scope["path"])
                body = await self.supervisor.metrics()
            except TensorgateError as exc:
                status, body = exc.kind.http_status, exc.message.encode() + b"\n"
                if status == 401:
                    extra.append((b"www-authenticate", WWW_AUTHENTICATE.encode()))
        extra.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": body})


async def supervise(settings: Settings, count: int) -> int:
    """Run the workers until a signal; returns the exit code."""
    supervisor = Supervisor(settings, count)
    try:
        if supervisor.metrics_server is not None:
            try:
                await supervisor.metrics_server.start()
            except PortInUse as exc:
                log.error(str(exc))
                return 2
        for slot in supervisor.slots:
            supervisor._start(slot)
        log.info(
            "supervising workers",
            workers=count,
            grpc=supervisor.worker_settings.grpc_port,
            http=supervisor.worker_settings.http_port,
            metrics=settings.metrics_port,
        )
        watcher = asyncio.create_task(supervisor.watch())
        stop, interrupts = asyncio.Event(), [0]
        loop = asyncio.get_running_loop()

        def interrupted() -> None:
            interrupts[0] += 1
            stop.set()

        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, interrupted)
        await stop.wait()
        watcher.cancel()
        log.info("shutting down: draining every worker")
        draining = asyncio.create_task(supervisor.stop())
        while True:
            stop.clear()
            again = asyncio.create_task(stop.wait())
            await asyncio.wait([draining, again], return_when=asyncio.FIRST_COMPLETED)
            again.cancel()
            if draining.done():
                break
            if interrupts[0] >= 2:  # a second Ctrl-C: no more waiting
                draining.cancel()
                await supervisor.stop(kill=True)
                return 1
        if supervisor.metrics_server is not None:
            await supervisor.metrics_server.stop()
        log.info("stopped")
        return 0
    finally:
        supervisor.close()
