"""The Prometheus endpoint: GET /metrics on its own port (8002, as Triton), same event loop.

Scrapes run on the loop, the one thread that updates the recorders, so a scrape sees every
counter and histogram at one consistent instant.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, make_asgi_app

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class MetricsApp:
    """prometheus_client's exposition (text or OpenMetrics, gzip) at /metrics, 404 elsewhere."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.exposition = make_asgi_app(registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] in ("/metrics", "/metrics/"):
            await self.exposition(scope, receive, send)
            return
        body = b"not found: metrics are at /metrics\n"
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": body})
