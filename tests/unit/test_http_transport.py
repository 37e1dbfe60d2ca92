"""The HTTP server's connection layer: joined writes and hearing that a client hung up.

uvicorn's own protocol machinery runs here for real over an in-memory transport that records
what would reach the socket; the end-to-end suite covers the same paths over loopback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvicorn
from tensorgate.transport.asgi import DISCONNECT_EXTENSION, HttpProtocol, _CoalescedWrites
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


@in_loop
async def test_hang_up_cancels_the_waiting_request_through_the_scope_extension() -> None:
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert isinstance(scope["extensions"][DISCONNECT_EXTENSION], HttpProtocol)
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
    scope = {"extensions": {DISCONNECT_EXTENSION: protocol}}

    async def receive() -> dict[str, Any]:
        raise AssertionError("the extension answers; receive() is not needed")

    with pytest.raises(Disconnected):
        await asyncio.wait_for(_unless_disconnected(asyncio.sleep(30), scope, receive), 5)


@in_loop
async def test_other_cancellations_pass_through_untouched() -> None:
    protocol, _ = _connection(None)
    scope = {"extensions": {DISCONNECT_EXTENSION: protocol}}

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
