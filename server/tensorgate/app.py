"""Start-up and shut-down: load the repository, serve, drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time

from tensorgate.dataplane.dataplane import DataPlane
from tensorgate.errors import TensorgateError
from tensorgate.repository.manager import ModelRepository
from tensorgate.settings import Settings
from tensorgate.transport.grpc.server import GrpcServer, PortInUse
from tensorgate.transport.rest.server import HttpPortInUse, HttpServer

log = logging.getLogger("tensorgate")

SHUTDOWN_GRACE_S = 5.0


def models_to_load(settings: Settings, names: list[str]) -> list[str]:
    """Every model in mode none; in explicit mode only those named by --load-model."""
    if settings.model_control_mode == "none" or "*" in settings.load_model:
        return names
    return list(settings.load_model)


async def serve(settings: Settings) -> int:
    """Run the server until a signal arrives; returns the process exit code."""
    started = time.perf_counter()
    root = settings.model_repository
    if not root.is_dir():
        log.error("model repository %s does not exist or is not a directory", root)
        return 2
    repository = ModelRepository(settings)
    dataplane = DataPlane(repository, settings.model_control_mode == "explicit")
    grpc_server = GrpcServer(settings, dataplane)
    http_server = HttpServer(settings, dataplane, SHUTDOWN_GRACE_S)
    try:
        port = await grpc_server.start()
        http_port = await http_server.start() if settings.http_port >= 0 else None
    except (PortInUse, HttpPortInUse) as exc:
        log.error("%s", exc)
        await grpc_server.stop(0)
        return 2
    log.info("gRPC listening on %s:%d (not ready until models load)", settings.host, port)
    if http_port is not None:
        log.info("HTTP listening on %s:%d (browser page at /)", settings.host, http_port)

    names = models_to_load(settings, repository.scan())
    results = await asyncio.gather(*(repository.load(n) for n in names), return_exceptions=True)
    failed = [(n, r) for n, r in zip(names, results, strict=True) if isinstance(r, BaseException)]
    for name, error in failed:
        message = error.message if isinstance(error, TensorgateError) else repr(error)
        log.error("model %s is unavailable: %s", name, message)
    if failed and settings.exit_on_error:
        log.error("exiting: %d model(s) failed to load and --exit-on-error is set", len(failed))
        await asyncio.gather(grpc_server.stop(0), http_server.stop())
        await repository.close()
        return 1
    dataplane.ready = not failed or not settings.strict_readiness
    await grpc_server.set_serving(dataplane.ready)
    log.info(
        "ready: %d model(s) loaded, %d failed, in %.2f s",
        len(names) - len(failed),
        len(failed),
        time.perf_counter() - started,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining for up to %.0f s", SHUTDOWN_GRACE_S)
    dataplane.ready = False
    await asyncio.gather(grpc_server.stop(SHUTDOWN_GRACE_S), http_server.stop())
    await repository.close()
    return 0


def run(settings: Settings) -> int:
    """Configure logging and run the server's event loop."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return asyncio.run(serve(settings))
