"""uvicorn (httptools) serving an ASGI app in the gRPC server's process and event loop."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

import uvicorn

from tensorgate.transport import PortInUse


class AsgiServer:
    """Binds the socket itself so a busy port is an error here, not a sys.exit in uvicorn."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        what: str,
        reuse_port: bool = False,
        max_connections: int | None = None,
        grace_s: float = 1.0,
        tls: tuple[Path, Path, Path | None] | None = None,  # cert, key, client CA
    ) -> None:
        self.host, self.port, self.what, self.reuse_port = host, port, what, reuse_port
        self.config = uvicorn.Config(
            app,
            http="httptools",
            lifespan="off",
            access_log=False,
            log_config=None,
            proxy_headers=False,
            server_header=False,
            limit_concurrency=max_connections,
            timeout_graceful_shutdown=int(grace_s) or 1,
            ssl_certfile=str(tls[0]) if tls else None,
            ssl_keyfile=str(tls[1]) if tls else None,
            ssl_ca_certs=str(tls[2]) if tls and tls[2] else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls[2] else ssl.CERT_NONE,
        )
        self.server = uvicorn.Server(self.config)
        self.sockets: list[socket.socket] = []
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> int:
        host, port = self.host, self.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio turns Nagle off only on sockets that say TCP, and with
        # Nagle on, a response's header and body writes wait ~40 ms for the client's ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise PortInUse(f"cannot listen on {host}:{port} for {self.what}: {exc}") from None
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
