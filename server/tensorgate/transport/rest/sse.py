"""Server-sent events over ASGI: a request's responses, one `data:` event each, sent as the
model produces them.

The head goes out with the first response, so a request that fails at once (unknown model,
bad input) still gets its HTTP status. An error after that is the stream's last event.
ASGI `send` waits while the client is not reading, which holds the model back.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from contextlib import aclosing
from typing import Any, TypeVar

from tensorgate.errors import TensorgateError

log = logging.getLogger(__name__)

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Item = TypeVar("Item")  # what the stream yields: a response, or a response and its choice
# The payload of an error event; None: an unexpected error (logged here).
ErrorEvent = Callable[[TensorgateError | None], bytes]


async def send_events(
    responses: AsyncGenerator[Item, None],
    send: Send,
    headers: list[tuple[bytes, bytes]],
    events: Callable[[Item], list[bytes]],  # the event payloads of one item (none or more)
    error_event: ErrorEvent,
    last: bytes | None = None,
) -> None:
    """Stream `responses` as events; `last`, when given, ends the stream (`[DONE]`)."""
    async with aclosing(responses) as items:
        response = await anext(items, None)
        start = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": start + headers})
        try:
            while response is not None:
                for data in events(response):
                    await send(_event(data))
                response = await anext(items, None)
        except TensorgateError as exc:
            await send(_event(error_event(exc)))
        except Exception:
            log.exception("unexpected error in a stream of server-sent events")
            await send(_event(error_event(None)))
    if last is not None:
        await send(_event(last))
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _event(data: bytes) -> MutableMapping[str, Any]:
    return {"type": "http.response.body", "body": b"data: " + data + b"\n\n", "more_body": True}
