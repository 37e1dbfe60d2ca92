"""The requests of one gRPC stream that are pending and the responses waiting to be written.

A stream's requests run concurrently and answer in the order they finish, so the servicer
needs a bound on what one client can have pending and a way to hand finished responses to
the one coroutine that writes them. A request takes a slot when it is read. A request with
one response gives its slot back when that response is taken for writing, so requests
running and responses waiting never add up to more than the window's size: a client that
sends without reading is no longer read. A decoupled request gives its slot back when it
ends, and each of its responses waits for room among the unwritten ones.

One small object in place of a semaphore and a bounded queue: a streamed request costs it a
few attribute updates and, only when something waits, a future.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class StreamWindow(Generic[T]):
    """Slots for a stream's pending requests and the queue of its unwritten responses.

    Every method runs on the event loop. The reader calls `take_slot` before each request
    and `close` at the end of the stream's input; the writer iterates with `next`.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.pending = 0  # requests holding a slot
        self._responses: deque[tuple[T, bool]] = deque()  # (response, frees a slot)
        self._closed = False
        self._aborted = False
        self._writer: asyncio.Future[None] | None = None  # the writer waiting for work
        self._reader: asyncio.Future[None] | None = None  # the reader waiting for a slot
        self._room: deque[asyncio.Future[None]] = deque()  # decoupled responses waiting

    async def take_slot(self) -> None:
        """Wait for a free slot and take it."""
        while self.pending >= self.size:
            self._reader = asyncio.get_running_loop().create_future()
            await self._reader
        self.pending += 1

    def answer(self, response: T) -> None:
        """A request's only response: its slot is freed when the writer takes it."""
        self._responses.append((response, True))
        self._wake_writer()

    async def put(self, response: T) -> None:
        """One of a decoupled request's responses, once the unwritten ones leave room."""
        while len(self._responses) >= self.size:
            room = asyncio.get_running_loop().create_future()
            self._room.append(room)
            await room
        self._responses.append((response, False))
        self._wake_writer()

    def release(self) -> None:
        """A decoupled request ended: its slot is free."""
        self._free_slot()
        self._wake_writer()

    def close(self, wait_for_pending: bool = True) -> None:
        """No more requests will come: the writer ends once every pending request is
        written, or, if the input failed, once the responses already waiting are."""
        self._closed = True
        self._aborted = not wait_for_pending
        self._wake_writer()

    async def next(self) -> T | None:
        """The next response to write, or None when the stream is over."""
        while not self._responses:
            if self._closed and (not self.pending or self._aborted):
                return None
            self._writer = asyncio.get_running_loop().create_future()
            await self._writer
        response, frees_slot = self._responses.popleft()
        if frees_slot:
            self._free_slot()
        while self._room:  # a decoupled response may now go in
            room = self._room.popleft()
            if not room.done():
                room.set_result(None)
                break
        return response

    def _free_slot(self) -> None:
        self.pending -= 1
        reader = self._reader
        if reader is not None:
            self._reader = None
            if not reader.done():
                reader.set_result(None)

    def _wake_writer(self) -> None:
        writer = self._writer
        if writer is not None:
            self._writer = None
            if not writer.done():
                writer.set_result(None)
