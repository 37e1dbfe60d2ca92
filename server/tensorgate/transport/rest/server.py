"""uvicorn (httptools) serving the REST shim in the gRPC server's process and event loop."""

from __future__ import annotations

import asyncio
import socket

import orjson
import uvicorn

from tensorgate.dataplane.dataplane import DataPlane
from tensorgate.settings import Settings
from tensorgate.transport.grpc.handlers import SERVICE, STATUS_SERVICE
from tensorgate.transport.grpc.servicer import InferenceServicer, StatusServicer
from tensorgate.transport.rest.app import RestApp
from tensorgate.transport.rest.openapi import build_openapi
from tensorgate.transport.rest.routes import build_routes


class HttpPortInUse(RuntimeError):
    """The HTTP port could not be bound."""


def build_app(settings: Settings, dataplane: DataPlane) -> RestApp:
    """The ASGI app over the same servicers (and so the same data plane) as gRPC."""
    router = build_routes(
        [(SERVICE, InferenceServicer(dataplane)), (STATUS_SERVICE, StatusServicer(dataplane))]
    )
    openapi = orjson.dumps(build_openapi(router))
    return RestApp(
        dataplane, router, openapi, settings.http_max_body_bytes, settings.cors_allow_origins
    )


class HttpServer:
    """Binds the socket itself so a busy port is an error here, not a sys.exit in uvicorn."""

    def __init__(self, settings: Settings, dataplane: DataPlane, grace_s: float) -> None:
        self.settings = settings
        self.config = uvicorn.Config(
            build_app(settings, dataplane),
            http="httptools",
            lifespan="off",
            access_log=False,
            log_config=None,
            proxy_headers=False,
            server_header=False,
            limit_concurrency=settings.http_max_connections,
            timeout_graceful_shutdown=int(grace_s) or 1,
        )
        self.server = uvicorn.Server(self.config)
        self.sockets: list[socket.socket] = []
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> int:
        host, port = self.settings.host, self.settings.http_port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio turns Nagle off only on sockets that say TCP, and with
        # Nagle on, a response's header and body writes wait ~40 ms for the client's ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.settings.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise HttpPortInUse(f"cannot listen on {host}:{port} for HTTP: {exc}") from None
        sock.listen(2048)
        sock.setblocking(False)
        self.sockets = [sock]
        self.config.load()
        self.server.lifespan = self.config.lifespan_class(self.config)
        await self.server.startup(sockets=self.sockets)
        # uvicorn's tick refreshes the Date header once a second.
        self._ticker = asyncio.create_task(self.server.main_loop())
        return int(sock.getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (up to the grace period)."""
        if self._ticker is None:
            return
        self.server.should_exit = True
        await self._ticker
        await self.server.shutdown(sockets=self.sockets)
