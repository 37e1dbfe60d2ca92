"""The HTTP server's connection layer: joined writes, whole responses, request bodies read
without receive(), and hearing that a client hung up.

uvicorn's own protocol machinery runs here for real over an in-memory transport that records
what would reach the socket; the end-to-end suite covers the same paths over loopback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvicorn
from tensorgate.transport.asgi import CONNECTION_EXTENSION, HttpProtocol, _CoalescedWrites
from tensorgate.transport.rest.app import Disconnected, _unless_disconnected
from uvicorn.server import ServerState

REQUEST = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n"


def in_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test body on a fresh event loop (pytest-asyncio is not used here)."""

    def run() -> None:
        asyncio.run(test())

    run.__name__ = test.__name__
    return run


class RecordingTransport(asyncio.Transport):
    """Stands in for the socket: keeps every write call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@in_loop
async def test_writes_made_in_one_callback_leave_as_one_write() -> None:
    transport = RecordingTransport()
    joined = _CoalescedWrites(transport, asyncio.get_running_loop())
    joined.write(b"HTTP/1.1 200 OK\r\n\r\n")
    joined.write(b"body")
    assert transport.writes == []
    await asyncio.sleep(0)
    assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    joined.write(b"next")
    await asyncio.sleep(0)
    assert transport.writes[1:] == [b"next"]


@in_loop
async def test_closing_sends_what_is_pending_first_and_nothing_after() -> None:
    transport = RecordingTransport()
    joined = _CoalescedWrites(transport, asyncio.get_running_loop())
    joined.write(b"last words")
    joined.close()
    assert transport.writes == [b"last words"] and transport.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing left to send
    assert transport.writes == [b"last words"]


def _connection(app: Any) -> tuple[HttpProtocol, RecordingTransport]:
    config = uvicorn.Config(app, http=HttpProtocol, lifespan="off", log_config=None)
    config.load()
    protocol = HttpProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


@in_loop
async def test_a_response_reaches_the_socket_as_a_single_write() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-length", b"5")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"hello"})

    protocol, transport = _connection(app)
    protocol.data_received(REQUEST)
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK") and transport.writes[0].endswith(
        b"hello"
    )


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def _responding_app(
    status: int = 200, headers: tuple[tuple[bytes, bytes], ...] = (), body: bytes = b"hello"
) -> tuple[Any, list[bool]]:
    """An app that answers through the connection's `respond`; records what it returned."""
    answered: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        connection = scope["extensions"][CONNECTION_EXTENSION]
        extra = [*headers, (b"content-length", str(len(body)).encode())]
        done = connection.respond(scope, status, extra, body)
        answered.append(done)
        if not done:
            await send({"type": "http.response.start", "status": status, "headers": extra})
            await send({"type": "http.response.body", "body": body})

    return app, answered


async def _respond_once(
    request: bytes = REQUEST, **app_kwargs: Any
) -> tuple[list[bool], RecordingTransport]:
    """One request on a fresh connection to `_responding_app(**app_kwargs)`, answered."""
    app, answered = _responding_app(**app_kwargs)
    protocol, transport = _connection(app)
    protocol.data_received(request)
    await _settle()
    return answered, transport


@in_loop
async def test_respond_sends_the_whole_response_in_one_write_and_keeps_the_connection() -> None:
    app, answered = _responding_app(headers=((b"x-one", b"1"),))
    protocol, transport = _connection(app)
    for _ in range(2):
        protocol.data_received(REQUEST)
        await _settle()
    assert answered == [True, True] and len(transport.writes) == 2
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nx-one: 1\r\n" in head
    assert b"content-length: 5" in head and body == b"hello"
    assert not transport.closed


@in_loop
async def test_respond_sends_a_large_body_whole_after_its_head() -> None:
    body = bytes(range(256)) * 1024  # 256 KiB: written beside the head, not joined to it
    answered, transport = await _respond_once(body=body)
    sent = b"".join(transport.writes)
    assert answered == [True] and sent.endswith(b"\r\n\r\n" + body)
    assert b"content-length: 262144\r\n" in sent


@in_loop
async def test_respond_with_connection_close_closes_after_the_write() -> None:
    answered, transport = await _respond_once(status=413, headers=((b"connection", b"close"),))
    assert answered == [True] and transport.closed
    assert transport.writes[0].startswith(b"HTTP/1.1 413 ")
    assert transport.writes[0].count(b"connection: close") == 1


@in_loop
async def test_respond_to_a_client_that_asked_to_close_says_so_and_closes() -> None:
    answered, transport = await _respond_once(
        REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    )
    assert answered == [True] and transport.closed
    assert transport.writes[0].count(b"connection: close") == 1


@in_loop
async def test_respond_to_head_sends_the_headers_only() -> None:
    answered, transport = await _respond_once(REQUEST.replace(b"GET", b"HEAD"))
    assert answered == [True]
    assert transport.writes[0].endswith(b"content-length: 5\r\n\r\n")


@in_loop
async def test_respond_leaves_a_client_that_stopped_reading_to_asgi_send() -> None:
    app, answered = _responding_app()
    protocol, transport = _connection(app)
    protocol.pause_writing()  # the socket buffer is full: send waits for it to drain
    protocol.data_received(REQUEST)
    await _settle()
    assert answered == [False] and transport.writes == []
    protocol.resume_writing()
    await _settle()
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK") and transport.writes[0].endswith(
        b"hello"
    )


@in_loop
async def test_respond_leaves_a_header_value_uvicorn_refuses_to_asgi_send() -> None:
    answered, transport = await _respond_once(headers=((b"x-bad", b"a\x01b"),))
    assert answered == [False]  # uvicorn's send then refuses it: a 500, nothing of the value
    assert b"\x01" not in b"".join(transport.writes)


@in_loop
async def test_the_body_is_taken_from_the_connection_once_it_has_all_arrived() -> None:
    seen: list[bytes | None] = []
    arrived = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        connection = scope["extensions"][CONNECTION_EXTENSION]
        seen.append(connection.body(scope))  # only the first half is here yet
        await arrived.wait()
        seen.append(connection.body(scope))
        connection.respond(scope, 204, [(b"content-length", b"0")], b"")

    protocol, transport = _connection(app)
    head = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\n"
    protocol.data_received(head + b"abc")
    await _settle()
    protocol.data_received(b"def")
    arrived.set()
    await _settle()
    assert seen == [None, b"abcdef"]
    assert transport.writes[0].startswith(b"HTTP/1.1 204 ")


@in_loop
async def test_hang_up_cancels_the_waiting_request_through_the_scope_extension() -> None:
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert isinstance(scope["extensions"][CONNECTION_EXTENSION], HttpProtocol)
        try:
            await _unless_disconnected(asyncio.sleep(30), scope, receive)
        except Disconnected:
            outcome.set_result("disconnected")
            return
        outcome.set_result("finished")

    protocol, transport = _connection(app)
    protocol.data_received(REQUEST)
    await asyncio.sleep(0.01)
    protocol.connection_lost(None)
    assert await asyncio.wait_for(outcome, 5) == "disconnected"
    assert transport.writes == []


@in_loop
async def test_a_client_gone_before_the_wait_starts_cancels_it_at_once() -> None:
    protocol, _ = _connection(None)
    protocol.connection_lost(None)
    scope = {"extensions": {CONNECTION_EXTENSION: protocol}}

    async def receive() -> dict[str, Any]:
        raise AssertionError("the extension answers; receive() is not needed")

    with pytest.raises(Disconnected):
        await asyncio.wait_for(_unless_disconnected(asyncio.sleep(30), scope, receive), 5)


@in_loop
async def test_other_cancellations_pass_through_untouched() -> None:
    protocol, _ = _connection(None)
    scope = {"extensions": {CONNECTION_EXTENSION: protocol}}

    async def receive() -> dict[str, Any]:
        raise AssertionError("not called")

    task = asyncio.ensure_future(_unless_disconnected(asyncio.sleep(30), scope, receive))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@in_loop
async def test_under_another_asgi_server_a_disconnect_from_receive_cancels_the_wait() -> None:
    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"type": "http.disconnect"}

    with pytest.raises(Disconnected):
        await asyncio.wait_for(_unless_disconnected(asyncio.sleep(30), {}, receive), 5)


@in_loop
async def test_under_another_asgi_server_the_work_result_comes_back() -> None:
    async def receive() -> dict[str, Any]:
        await asyncio.sleep(30)
        return {"type": "http.disconnect"}

    async def work() -> str:
        await asyncio.sleep(0.01)
        return "done"

    assert await _unless_disconnected(work(), {}, receive) == "done"


def test_uvicorn_is_the_version_the_protocol_subclass_is_written_against() -> None:
    # HttpProtocol reaches into uvicorn's private httptools protocol (its request cycle, flow
    # control, status lines), which may change in any minor release: pyproject.toml pins the
    # minor, and the tests in this file run the subclass against exactly that version.
    import tomllib
    from importlib.metadata import version
    from pathlib import Path

    from packaging.requirements import Requirement

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    (pin,) = [Requirement(d) for d in dependencies if d.startswith("uvicorn")]
    assert pin.specifier.contains(version("uvicorn")), (pin, version("uvicorn"))
    assert any(spec.operator == "<" for spec in pin.specifier), "the pin needs an upper bound"


class _AnsweringApp:
    """An app that takes POSTs without a task through `answer_now` (unless `takes` is
    False), answering from a later callback; anything else runs as ASGI."""

    def __init__(self, takes: bool = True) -> None:
        self.takes = takes
        self.offered: list[bytes | None] = []
        self.asgi_bodies: list[bytes] = []
        self.waiting: asyncio.Future[None] | None = None

    def answer_now(self, scope: Any, connection: HttpProtocol) -> bool:
        if not self.takes:
            return False
        body = connection.body(scope)
        self.offered.append(body)
        loop = asyncio.get_running_loop()
        self.waiting = loop.create_future()
        connection.cancel_on_disconnect(self.waiting)

        def answer(waiting: asyncio.Future[None]) -> None:
            connection.cancel_on_disconnect(None)
            if waiting.cancelled():
                return
            payload = b"took " + (body or b"")
            headers = [(b"content-length", str(len(payload)).encode())]
            if not connection.respond(scope, 200, headers, payload):
                connection.respond_later(scope, 200, headers, payload)

        self.waiting.add_done_callback(answer)
        loop.call_soon(self.waiting.set_result, None)
        return True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        self.asgi_bodies.append(body)
        payload = b"asgi %d" % len(body)
        headers = [(b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _answering_connection(app: _AnsweringApp) -> tuple[HttpProtocol, RecordingTransport]:
    # As AsgiServer configures it: no proxy-headers middleware between uvicorn and the app.
    config = uvicorn.Config(
        app, http=HttpProtocol, lifespan="off", log_config=None, proxy_headers=False
    )
    config.load()
    protocol = HttpProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


def _post(body: bytes, extra: bytes = b"") -> bytes:
    return b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


@in_loop
async def test_a_post_is_offered_once_its_body_is_whole_and_answered_without_a_task() -> None:
    app = _AnsweringApp()
    protocol, transport = _answering_connection(app)
    request = _post(b"abcdef")
    protocol.data_received(request[:-3])
    await _settle()
    assert app.offered == [] and not protocol.tasks  # waiting for the rest of the body
    protocol.data_received(request[-3:])
    assert app.offered == [b"abcdef"] and not protocol.tasks
    await _settle()
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK") and transport.writes[0].endswith(
        b"took abcdef"
    )
    assert app.asgi_bodies == []


@in_loop
async def test_a_post_the_app_declines_runs_as_asgi_with_its_body() -> None:
    app = _AnsweringApp(takes=False)
    protocol, transport = _answering_connection(app)
    protocol.data_received(_post(b"abcdef"))
    await _settle()
    assert app.asgi_bodies == [b"abcdef"]
    assert transport.writes[0].endswith(b"asgi 6")


@in_loop
async def test_a_body_past_uvicorns_read_limit_goes_to_asgi_before_it_has_all_arrived() -> None:
    app = _AnsweringApp()
    protocol, transport = _answering_connection(app)
    body = bytes(200_000)
    request = _post(body)
    head = len(request) - len(body)
    protocol.data_received(request[: head + 70_000])  # past 64 KiB: uvicorn pauses reading
    assert len(protocol.tasks) == 1
    protocol.data_received(request[head + 70_000 :])
    await _settle()
    assert app.offered == [] and app.asgi_bodies == [body]
    assert transport.writes[0].endswith(b"asgi 200000")


@in_loop
async def test_a_client_expecting_100_continue_is_served_as_asgi() -> None:
    app = _AnsweringApp()
    protocol, transport = _answering_connection(app)
    protocol.data_received(
        _post(b"", b"Expect: 100-continue\r\n").replace(b"Length: 0", b"Length: 3")
    )
    await _settle()
    assert transport.writes[0].startswith(b"HTTP/1.1 100 Continue")
    protocol.data_received(b"xyz")
    await _settle()
    assert app.offered == [] and app.asgi_bodies == [b"xyz"]


@in_loop
async def test_pipelined_posts_are_each_offered_and_answered_in_order() -> None:
    app = _AnsweringApp()
    protocol, transport = _answering_connection(app)
    protocol.data_received(_post(b"one") + _post(b"two"))
    await _settle()
    assert app.offered == [b"one", b"two"]
    sent = b"".join(transport.writes)
    assert sent.index(b"took one") < sent.index(b"took two")


@in_loop
async def test_an_answer_to_a_client_that_stopped_reading_waits_for_it() -> None:
    app = _AnsweringApp()
    protocol, transport = _answering_connection(app)
    protocol.pause_writing()
    protocol.data_received(_post(b"abc"))
    await _settle()
    assert app.offered == [b"abc"] and transport.writes == []
    protocol.resume_writing()
    await _settle()
    assert b"".join(transport.writes).endswith(b"took abc")


@in_loop
async def test_hang_up_cancels_what_a_request_without_a_task_waits_on() -> None:
    app = _AnsweringApp()
    protocol, transport = _answering_connection(app)
    protocol.data_received(_post(b"abc"))
    assert app.waiting is not None and not app.waiting.done()
    protocol.connection_lost(None)
    assert app.waiting.cancelled()
    await _settle()
    assert transport.writes == []


@in_loop
async def test_a_keep_alive_connection_idle_past_its_timeout_is_closed_by_the_sweep() -> None:
    app = _AnsweringApp()
    protocol, transport = _answering_connection(app)
    protocol.data_received(_post(b"abc"))
    await _settle()
    assert b"".join(transport.writes).endswith(b"took abc")
    assert protocol.timeout_keep_alive_task is None  # no timer per response
    now = asyncio.get_running_loop().time()
    protocol.close_if_late(now + protocol.timeout_keep_alive - 1)
    assert not transport.closed
    protocol.close_if_late(now + protocol.timeout_keep_alive + 1)
    assert transport.closed and b"408" not in b"".join(transport.writes)


@in_loop
async def test_a_new_request_on_a_keep_alive_connection_stops_its_idle_clock() -> None:
    app = _AnsweringApp()
    protocol, transport = _answering_connection(app)
    protocol.data_received(_post(b"abc"))
    await _settle()
    request = _post(b"defghi")
    protocol.data_received(request[:-3])  # the next request has begun
    later = asyncio.get_running_loop().time() + protocol.timeout_keep_alive + 1
    protocol.close_if_late(later)
    assert not transport.closed
    protocol.data_received(request[-3:])
    await _settle()
    assert b"".join(transport.writes).endswith(b"took defghi")
