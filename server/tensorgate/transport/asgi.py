"""uvicorn (httptools) serving an ASGI app in the gRPC server's process and event loop."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tensorgate.transport import PortInUse

# The scope extension through which an app hears that its client hung up.
DISCONNECT_EXTENSION = "tensorgate.disconnect"


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol that tells the app, without a receive(), of a hang-up.

    ASGI reports a disconnect only as a `receive()` result, so an app that stops work when
    its client leaves needs a task parked in `receive()` for every request: a task, an event
    wait and a cancellation each time, about a tenth of the REST shim's cost per inference.
    The connection already knows when it is lost; each request's scope carries it under
    `extensions["tensorgate.disconnect"]`, and the running request's task is cancelled
    when the connection goes. HTTP/1.1 runs one request per connection at a time.
    """

    client_gone = False
    _watcher: asyncio.Task[Any] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_CoalescedWrites(transport, self.loop))  # type: ignore[arg-type]

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {DISCONNECT_EXTENSION: self}  # type: ignore[dict-item]

    def cancel_on_disconnect(self, task: asyncio.Task[Any] | None) -> None:
        """Cancel `task` if the client goes away (now, if it has); None stops watching."""
        self._watcher = task
        if task is not None and self.client_gone:
            task.cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client_gone = True
        super().connection_lost(exc)
        if self._watcher is not None:
            self._watcher.cancel()


class _CoalescedWrites:
    """A connection's transport whose writes within one loop iteration leave as one send.

    uvicorn writes a response's head and its body separately, which is two system calls and
    two TCP segments per response; joined, a small response is one of each. The join waits
    for nothing but the end of the current callback.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self._flush)
        else:
            self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            if len(pending) == 1:
                self._transport.write(pending[0])
            else:  # one writev under uvloop: a large body is not copied to be joined
                self._transport.writelines(pending)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


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
            http=HttpProtocol,
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
