"""uvicorn (httptools) serving an ASGI app in the gRPC server's process and event loop."""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

import uvicorn
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import (
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from tensorgate.transport import PortInUse
from tensorgate.transport.tls import TlsFiles, harden, reload_forever

# The scope extension that carries the request's connection (an HttpProtocol) to the app.
CONNECTION_EXTENSION = "tensorgate.connection"
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: 39\r\n\r\nthe request head did not arrive in time"
)
# Larger bodies go out with writev beside the head instead of being copied to join it.
_JOIN_MAX_BYTES = 64 * 1024


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a shorter path for apps that know they run on it.

    Each request's scope carries its connection under `extensions["tensorgate.connection"]`,
    which offers what plain ASGI makes expensive on the hot path:

    - `cancel_on_disconnect(task)`: ASGI reports a hang-up only as a `receive()` result, so an
      app that stops work when its client leaves needs a task parked in `receive()` for every
      request. The connection already knows when it is lost and cancels the task itself.
    - `body(scope)`: the request body when it has all arrived, without `receive()`'s event
      wait and message dict.
    - `respond(scope, status, headers, body)`: the whole response in one write. uvicorn's
      `send` takes two messages, re-checks every header and writes head and body apart.

    The REST shim uses each when present and plain ASGI otherwise (any other server, a
    pipelined request, a client not reading). HTTP/1.1 runs one request per connection at
    a time.

    An app may also answer a POST without a task: before uvicorn would start the request's
    ASGI task, the connection waits for the whole body (up to uvicorn's 64 KiB read limit)
    and offers the request to the app's `answer_now(scope, connection)`. The app either takes
    it, answering later through `respond` from a callback, or returns False, and the request
    runs as ASGI with its body already read. A task per request, with the coroutines it
    awaits through, cost the loop about 5 % of an HTTP inference request's instructions.
    """

    client_gone = False
    _watcher: asyncio.Future[Any] | None = None
    _answer_now: Any = None  # the app's `answer_now`, if it has one
    _waiting_body: RequestResponseCycle | None = None  # a POST offered once its body is in
    # The request `answer_now` took. Not always `cycle`, which is the newest request parsed:
    # pipelined requests may already wait behind it.
    _answering: RequestResponseCycle | None = None
    # A request's head must arrive within this many seconds of the connection opening or of
    # its first byte, and its body may pause no longer than this between bytes, or the
    # connection is closed with 408: slow or silent clients (slowloris) cannot hold
    # connections. AsgiServer sets it per server, and sweeps its connections for the late
    # ones (`close_if_late`): a timestamp per request costs less than a timer per request.
    header_timeout_s = 10.0
    _due = 0.0  # loop time by which the head, or the body's next bytes, must come; 0: none
    # Loop time past which a keep-alive connection with no request is closed; 0: not idle.
    # uvicorn arms a timer per response for this and cancels it at the next request's first
    # bytes; the same sweep as `_due` costs a request one attribute.
    _idle_due = 0.0
    _in_body = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_CoalescedWrites(transport, self.loop))  # type: ignore[arg-type]
        self._answer_now = getattr(self.app, "answer_now", None)
        self._due = self.loop.time() + self.header_timeout_s

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {CONNECTION_EXTENSION: self}  # type: ignore[dict-item]
        self._due = self.loop.time() + self.header_timeout_s

    def on_headers_complete(self) -> None:
        self._due = self.loop.time() + self.header_timeout_s  # now for the body's pauses
        self._in_body = True
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        self._idle_due = 0.0
        if self._in_body:
            self._due = self.loop.time() + self.header_timeout_s
        super().data_received(data)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # Only the app itself offers `answer_now`: not uvicorn's answer past the concurrency
        # limit. A client expecting 100-continue sends its body only when the task asks.
        if (
            self._answer_now is None
            or app is not self.app
            or cycle.waiting_for_100_continue
            or cycle.scope["method"] != "POST"
        ):
            super()._start_asgi_task(cycle, app)
        elif cycle.more_body:
            self._waiting_body = cycle
        else:  # a pipelined request, its body all in
            self._offer(cycle)

    def _offer(self, cycle: RequestResponseCycle) -> None:
        self._answering = cycle
        if not self._answer_now(cycle.scope, self):
            self._answering = None
            super()._start_asgi_task(cycle, self.app)

    def on_body(self, body: bytes) -> None:
        cycle = self._waiting_body
        if cycle is not None and len(cycle.body) + len(body) > HIGH_WATER_LIMIT:
            # uvicorn stops reading at this size until the app takes the body: let the task.
            self._waiting_body = None
            super()._start_asgi_task(cycle, self.app)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._due = 0.0
        super().on_message_complete()
        cycle = self._waiting_body
        if cycle is not None:
            self._waiting_body = None
            self._offer(cycle)

    def on_response_complete(self) -> None:
        # uvicorn's, with the keep-alive deadline in place of its timer.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle_due = self.loop.time() + self.timeout_keep_alive

    def close_if_late(self, now: float) -> None:
        """408 and close when the head or the body's next bytes are overdue; close a
        keep-alive connection idle past uvicorn's keep-alive timeout."""
        if self.transport.is_closing():
            return
        if 0.0 < self._due < now:
            self._due = 0.0
            self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()
        elif 0.0 < self._idle_due < now:
            self.transport.close()

    def _cycle_of(self, scope: Any) -> RequestResponseCycle | None:
        """The request cycle of `scope` if it is the current or the answering request."""
        for cycle in (self.cycle, self._answering):
            if cycle is not None and cycle.scope is scope:
                return cycle
        return None

    def body(self, scope: Any) -> bytes | None:
        """The request's whole body if it has arrived, else None (then use `receive()`)."""
        cycle = self._cycle_of(scope)
        if cycle is None or cycle.more_body or cycle.disconnected:
            return None
        if cycle.waiting_for_100_continue or cycle.response_complete:
            return None
        body = bytes(cycle.body)
        cycle.body = bytearray()
        cycle.message_event.clear()
        self.flow.resume_reading()
        return body

    def respond(
        self, scope: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> bool:
        """Send a complete response (headers include content-length) as one write.

        False, with nothing sent, when plain ASGI `send` must do it: the request is neither
        this connection's current one nor the one `answer_now` took, its response has begun,
        the client stopped reading (send waits for the buffer to drain), or a header value
        needs uvicorn's checks to refuse it.
        """
        cycle = self._cycle_of(scope)
        if cycle is None or cycle.response_started:
            return False
        if cycle.disconnected or self.flow.write_paused:
            return False
        head = [STATUS_LINE[status]]
        for name, value in cycle.default_headers:
            head += (name, b": ", value, b"\r\n")
        said_close = False
        for name, value in headers:
            if HEADER_VALUE_RE.search(value):
                return False
            if name == b"connection" and b"close" in value.lower():
                said_close = True
            head += (name, b": ", value, b"\r\n")
        if said_close:
            cycle.keep_alive = False
        elif not cycle.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        if scope["method"] == "HEAD":
            body = b""
        cycle.response_started = cycle.response_complete = True
        cycle.waiting_for_100_continue = False
        transport: _CoalescedWrites = self.transport  # type: ignore[assignment]
        if len(body) <= _JOIN_MAX_BYTES:
            head.append(body)
            transport.write_now((b"".join(head),))
        else:
            transport.write_now((b"".join(head), body))
        cycle.message_event.set()
        if not cycle.keep_alive:
            transport.close()
        cycle.on_response()
        return True

    def respond_later(
        self, scope: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        """`respond` for an answer made outside the request's task, when `respond` could not
        send it: through uvicorn's ASGI `send` in a task, which waits for the client to read."""
        cycle = self._cycle_of(scope)
        if cycle is None or cycle.disconnected:
            return

        async def send() -> None:
            await cycle.send({"type": "http.response.start", "status": status, "headers": headers})
            await cycle.send({"type": "http.response.body", "body": body})

        task = self.loop.create_task(send())
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def cancel_on_disconnect(self, waiting: asyncio.Future[Any] | None) -> None:
        """Cancel `waiting` (a task, or what a request without one waits on) if the client
        goes away (now, if it has); None stops watching."""
        self._watcher = waiting
        if waiting is not None and self.client_gone:
            waiting.cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client_gone = True
        self._waiting_body = None
        self._due = 0.0
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

    def write_now(self, parts: tuple[bytes, ...]) -> None:
        """Write at once, after anything still pending; several parts go as one writev."""
        if self._pending is not None:
            self._flush()
        if self._transport.is_closing():
            return
        if len(parts) == 1:
            self._transport.write(parts[0])
        else:
            self._transport.writelines(parts)

    def is_closing(self) -> bool:  # asked once per response; skips __getattr__
        return self._transport.is_closing()

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
        tls: TlsFiles | None = None,
        header_timeout_s: float = 10.0,
    ) -> None:
        self.host, self.port, self.what, self.reuse_port = host, port, what, reuse_port
        self.config = uvicorn.Config(
            app,
            # A class of this server's own, to carry its header timeout to each connection.
            http=type("HttpProtocol", (HttpProtocol,), {"header_timeout_s": header_timeout_s}),
            lifespan="off",
            access_log=False,
            log_config=None,
            proxy_headers=False,
            server_header=False,
            limit_concurrency=max_connections,
            timeout_graceful_shutdown=int(grace_s) or 1,
            ssl_certfile=str(tls.cert) if tls else None,
            ssl_keyfile=str(tls.key) if tls else None,
            ssl_ca_certs=str(tls.client_ca) if tls and tls.client_ca else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.client_ca else ssl.CERT_NONE,
        )
        self.tls = tls
        self.server = uvicorn.Server(self.config)
        self.sockets: list[socket.socket] = []
        self._ticker: asyncio.Task[None] | None = None
        self._reloader: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.header_timeout_s = header_timeout_s

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
        if self.tls is not None and self.config.ssl is not None:
            harden(self.config.ssl)
            self._reloader = asyncio.create_task(
                reload_forever(self.tls, self.config.ssl, self.what)
            )
        self.server.lifespan = self.config.lifespan_class(self.config)
        await self.server.startup(sockets=self.sockets)
        # uvicorn's tick refreshes the Date header once a second.
        self._ticker = asyncio.create_task(self.server.main_loop())
        self._sweeper = asyncio.create_task(self._sweep())
        return int(sock.getsockname()[1])

    async def _sweep(self) -> None:
        """Close the connections whose request is overdue (see HttpProtocol.header_timeout_s)."""
        loop = asyncio.get_running_loop()
        interval = min(1.0, self.header_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for connection in list(self.server.server_state.connections):
                close_if_late = getattr(connection, "close_if_late", None)
                if close_if_late is not None:
                    close_if_late(now)

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (up to the grace period)."""
        if self._ticker is None:
            return
        self.server.should_exit = True
        if self._reloader is not None:
            self._reloader.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self._ticker
        await self.server.shutdown(sockets=self.sockets)
