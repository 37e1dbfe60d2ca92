"""The decoupled runner with real instance threads: pull steps, backpressure, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import aclosing
from typing import Any

import numpy as np
from tensorgate.backends.base import ModelSignature, ResponseSender
from tensorgate.dataplane.types import Array, InferRequest
from tensorgate.executors.instance_threads import InstanceThreads
from tensorgate.runners.base import Streamed
from tensorgate.runners.decoupled import WINDOW, DecoupledRunner


class CountingGenerator:
    """Yields N responses; counts the steps taken and whether the generator was closed."""

    def __init__(self) -> None:
        self.steps = 0
        self.closed = 0

    def signature(self) -> ModelSignature | None:
        return None

    def execute(self, inputs: dict[str, Array]) -> Iterator[dict[str, Array]]:
        try:
            for value in range(int(inputs["N"][0])):
                self.steps += 1
                yield {"Y": np.array([value])}
        finally:
            self.closed += 1

    def close(self) -> None:
        pass


class Pusher:
    """A push-style model: sends N responses from a thread of its own, then the final flag."""

    def __init__(self) -> None:
        self.sent = 0
        self.done = threading.Event()

    def signature(self) -> ModelSignature | None:
        return None

    def execute_decoupled(self, request: InferRequest, sender: ResponseSender) -> None:
        def push() -> None:
            for value in range(int(request.inputs["N"][0])):
                sender.send({"Y": np.array([value])}, False)
                self.sent += 1
            sender.send(None, True)
            self.done.set()

        threading.Thread(target=push, daemon=True).start()

    def execute(self, inputs: dict[str, Array]) -> dict[str, Array]:
        raise AssertionError("a push-style model is started through execute_decoupled")

    def close(self) -> None:
        pass


def _request(n: int) -> InferRequest:
    return InferRequest("m", inputs={"N": np.array([n])}, datatypes={"N": "INT64"})


def _runner(backend: Any) -> DecoupledRunner:
    return DecoupledRunner("m", InstanceThreads("m", [backend]), max_streams=8)


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


def test_a_slow_reader_holds_its_generator_one_step_ahead() -> None:
    backend = CountingGenerator()

    async def main() -> None:
        runner = _runner(backend)
        async with aclosing(runner.stream(_request(100), 1)) as responses:
            await anext(responses)
            await _settle()
            assert backend.steps == 2  # the one read and the one prepared, no more
        await runner.close()

    asyncio.run(main())


def test_an_unread_stream_does_not_stall_another_on_the_same_instance() -> None:
    backend = CountingGenerator()

    async def main() -> None:
        runner = _runner(backend)
        async with aclosing(runner.stream(_request(100), 1)) as stalled:
            await anext(stalled)
            items = [item async for item in runner.stream(_request(20), 1)]
            assert len(items) == 21 and items[-1] == Streamed(None, True)
        await runner.close()

    asyncio.run(main())


def test_leaving_a_stream_early_closes_its_generator_and_takes_no_further_step() -> None:
    backend = CountingGenerator()

    async def main() -> None:
        runner = _runner(backend)
        async with aclosing(runner.stream(_request(100), 1)) as responses:
            for _ in range(3):
                await anext(responses)
        await _settle()
        steps = backend.steps
        await _settle()
        assert backend.closed == 1
        assert backend.steps == steps <= 4
        await runner.close()

    asyncio.run(main())


def test_a_push_model_blocks_in_send_while_its_reader_is_behind() -> None:
    backend = Pusher()

    async def main() -> None:
        runner = _runner(backend)
        async with aclosing(runner.stream(_request(50), 1)) as responses:
            await anext(responses)
            await _settle()
            assert backend.sent <= WINDOW + 1
            rest = [item async for item in responses]
        assert len(rest) == 50 and rest[-1].final
        assert backend.done.wait(5)
        await runner.close()

    asyncio.run(main())


def test_a_push_model_whose_reader_leaves_is_released_from_send() -> None:
    backend = Pusher()

    async def main() -> None:
        runner = _runner(backend)
        async with aclosing(runner.stream(_request(1000), 1)) as responses:
            await anext(responses)
        started = time.monotonic()
        assert await asyncio.to_thread(backend.done.wait, 5)
        assert time.monotonic() - started < 5
        await runner.close()

    asyncio.run(main())
