"""The OpenAI-compatible routes: `GET /v1/models`, `POST /v1/completions` and
`POST /v1/chat/completions`, streamed as server-sent events ending with `data: [DONE]`.

Each request goes through the data plane's `stream` like any other request of a generation
model; generation/openai_api.py maps the shapes. Errors are OpenAI's error objects with the
HTTP code from the one error table, so the `openai` client raises its usual exceptions.
"""

from __future__ import annotations

import json
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
            responses = self.dataplane.stream(decoded.request)
            if decoded.stream:

                def events(response: InferResponse) -> list[bytes]:
                    return [json.dumps(chunk).encode() for chunk in answer.chunks(response)]

                def error_event(exc: TensorgateError | None) -> bytes:
                    if exc is None:
                        return openai_api.error_body(INTERNAL_MESSAGE, 500)
                    return openai_api.error_body(exc.message, exc.kind.http_status)

                await send_events(responses, send, headers, events, error_event, b"[DONE]")
                return None
            async with aclosing(responses) as items:
                async for response in items:
                    answer.add(response)
                    if response.final:
                        document = answer.whole(response)
            return 200, json.dumps(document).encode(), [(b"content-type", _JSON)]
        except TensorgateError as exc:
            status = exc.kind.http_status
            return status, openai_api.error_body(exc.message, status), [(b"content-type", _JSON)]


def _unique(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for model in models:
        seen.setdefault(model["id"], model)
    return list(seen.values())
