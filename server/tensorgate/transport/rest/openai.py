"""The OpenAI-compatible routes: `GET /v1/models`, `POST /v1/completions` and
`POST /v1/chat/completions`, streamed as server-sent events ending with `data: [DONE]`.

Each choice of a request (`n` of them) goes through the data plane's `stream` like any other
request of a generation model, and their responses are merged as they come;
generation/openai_api.py maps the shapes. Errors are OpenAI's error objects with the
HTTP code from the one error table, so the `openai` client raises its usual exceptions.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from tensorgate.dataplane.dataplane import DataPlane
from tensorgate.dataplane.types import InferResponse
from tensorgate.errors import INTERNAL_MESSAGE, NotFound, TensorgateError
from tensorgate.generation import openai_api
from tensorgate.transport.rest.sse import Send, send_events

ROUTES = {
    ("GET", "/v1/models"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/chat/completions"),
}
GENERATION_BACKEND = "generation"
_JSON = b"application/json"


class OpenAIRoutes:
    """The three routes over the data plane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def models(self) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """`/v1/models`: the generation models that are ready."""
        data = [
            {"id": m.name, "object": "model", "created": 0, "owned_by": "tensorgate"}
            for m in self.dataplane.loaded_versions()
            if m.config.backend == GENERATION_BACKEND and self.dataplane.model_ready(m.name)
        ]
        body = json.dumps({"object": "list", "data": _unique(data)}).encode()
        return 200, body, [(b"content-type", _JSON)]

    async def complete(
        self, body: bytes, chat: bool, send: Send, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
        """A completion: one JSON answer, or (stream) the events sent here; None then."""
        try:
            decoded = openai_api.decode(body, chat)
            model = self.dataplane.model(decoded.request.model_name)
            if model.config.backend != GENERATION_BACKEND:
                raise NotFound(f"model '{model.name}' is not a generation model")
            answer = openai_api.Answer(decoded, model.name)
            responses = _merged([self.dataplane.stream(r) for r in decoded.choice_requests()])
            if decoded.stream:

                def events(item: tuple[int, InferResponse]) -> list[bytes]:
                    return [json.dumps(chunk).encode() for chunk in answer.chunks(*item)]

                def error_event(exc: TensorgateError | None) -> bytes:
                    if exc is None:
                        return openai_api.error_body(INTERNAL_MESSAGE, 500)
                    return openai_api.error_body(exc.message, exc.kind.http_status)

                await send_events(responses, send, headers, events, error_event, b"[DONE]")
                return None
            async with aclosing(responses) as items:
                async for index, response in items:
                    answer.add(index, response)
            document = answer.whole()
            return 200, json.dumps(document).encode(), [(b"content-type", _JSON)]
        except TensorgateError as exc:
            status = exc.kind.http_status
            return status, openai_api.error_body(exc.message, status), [(b"content-type", _JSON)]


async def _merged(
    streams: list[AsyncGenerator[InferResponse, None]],
) -> AsyncGenerator[tuple[int, InferResponse], None]:
    """The responses of several streams as they come, each with its stream's index. The
    first error ends them all; closing this closes every stream."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as items:
            async for response in items:
                yield 0, response
        return
    # One slot per stream: a stream waits while the client is not reading.
    queue: asyncio.Queue[tuple[int, InferResponse] | Exception | None]
    queue = asyncio.Queue(len(streams))

    async def pump(index: int, stream: AsyncGenerator[InferResponse, None]) -> None:
        try:
            async with aclosing(stream) as items:
                async for response in items:
                    await queue.put((index, response))
        except Exception as exc:
            await queue.put(exc)
        await queue.put(None)

    tasks = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _unique(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for model in models:
        seen.setdefault(model["id"], model)
    return list(seen.values())
