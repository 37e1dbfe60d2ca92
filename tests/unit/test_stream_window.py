"""The bounds of one gRPC stream: pending requests, unwritten responses, and its end."""

from __future__ import annotations

import asyncio

from tensorgate.transport.grpc.stream_window import StreamWindow


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_full_window_stops_reading_until_a_response_is_written() -> None:
    async def main() -> None:
        window: StreamWindow[str] = StreamWindow(2)
        await window.take_slot()
        await window.take_slot()
        third = asyncio.create_task(window.take_slot())
        window.answer("a")  # answered but not yet written: the slot is still held
        await _settle()
        assert not third.done()
        assert await window.next() == "a"
        await asyncio.wait_for(third, 1)
        assert window.pending == 2

    asyncio.run(main())


def test_a_decoupled_request_holds_its_slot_until_it_ends() -> None:
    async def main() -> None:
        window: StreamWindow[str] = StreamWindow(1)
        await window.take_slot()
        await window.put("first of many")
        assert await window.next() == "first of many"
        second = asyncio.create_task(window.take_slot())
        await _settle()
        assert not second.done()
        window.release()
        await asyncio.wait_for(second, 1)

    asyncio.run(main())


def test_decoupled_responses_wait_for_room_among_the_unwritten() -> None:
    async def main() -> None:
        window: StreamWindow[int] = StreamWindow(2)
        await window.take_slot()
        await window.put(1)
        await window.put(2)
        third = asyncio.create_task(window.put(3))
        await _settle()
        assert not third.done()
        assert await window.next() == 1
        await asyncio.wait_for(third, 1)
        assert [await window.next(), await window.next()] == [2, 3]

    asyncio.run(main())


def test_the_writer_ends_after_the_last_pending_request_is_written() -> None:
    async def main() -> None:
        window: StreamWindow[str] = StreamWindow(4)
        await window.take_slot()
        window.close()
        writer = asyncio.create_task(window.next())
        await _settle()
        assert not writer.done()  # one request still running
        window.answer("last")
        assert await asyncio.wait_for(writer, 1) == "last"
        assert await asyncio.wait_for(window.next(), 1) is None

    asyncio.run(main())


def test_failed_input_ends_the_writer_without_waiting_for_running_requests() -> None:
    async def main() -> None:
        window: StreamWindow[str] = StreamWindow(4)
        await window.take_slot()
        await window.take_slot()
        window.answer("done before the failure")
        window.close(wait_for_pending=False)
        assert await window.next() == "done before the failure"
        assert await asyncio.wait_for(window.next(), 1) is None

    asyncio.run(main())
