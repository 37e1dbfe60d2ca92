"""The Prometheus endpoint: GET /metrics on its own port (8002, as Triton), same event loop.

Scrapes run on the loop, the one thread that updates the recorders, so a scrape sees every
counter and histogram at one consistent instant.
"""

from __future__ import annotations

import gzip
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from tensorgate.errors import TensorgateError
from tensorgate.observability.triton_metrics import triton_names
from tensorgate.settings import Settings
from tensorgate.transport.access import WWW_AUTHENTICATE, AccessPolicy
from tensorgate.transport.asgi import AsgiServer
from tensorgate.transport.tls import tls_files

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class MetricsApp:
    """prometheus_client's exposition (text or OpenMetrics, gzip) at /metrics, 404 elsewhere.

    Under access control /metrics is in the `statistics` group (Prometheus sends a bearer
    token with `authorization` in its scrape config)."""

    def __init__(self, registry: CollectorRegistry, policy: AccessPolicy | None = None) -> None:
        self.registry = registry
        self.policy = policy if policy is not None and policy.active else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] not in ("/metrics", "/metrics/"):
            await _plain(send, 404, b"not found: metrics are at /metrics\n")
            return
        if self.policy is not None:
            try:
                headers = self.policy.asgi_headers(scope["headers"])
                self.policy.check("statistics", headers, "metrics", scope["path"])
            except TensorgateError as exc:
                status = exc.kind.http_status
                extra = [(b"www-authenticate", WWW_AUTHENTICATE.encode())] if status == 401 else []
                await _plain(send, status, exc.message.encode() + b"\n", extra)
                return
        await _exposition(self.registry, scope, send)


async def _exposition(registry: CollectorRegistry, scope: Scope, send: Send) -> None:
    """The registry in the format the scraper accepts (Prometheus text or OpenMetrics),
    gzipped if it says it takes gzip."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    encoder, content_type = choose_encoder(headers.get("accept", ""))
    body = encoder(registry)
    if content_type.startswith("text/plain"):
        body = triton_names(body)
    response = [(b"content-type", content_type.encode())]
    if gzip_accepted(headers.get("accept-encoding", "")):
        body = gzip.compress(body)
        response.append((b"content-encoding", b"gzip"))
    response.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": response})
    await send({"type": "http.response.body", "body": body})


async def _plain(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    headers += extra or []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def metrics_server(app: Any, settings: Settings) -> AsgiServer:
    """The metrics port's server: TLS and the slow-client timeout as the other ports."""
    return AsgiServer(
        app,
        settings.address("metrics"),
        settings.metrics_port,
        "metrics",
        settings.reuse_port,
        tls=tls_files(settings, "metrics"),
        header_timeout_s=settings.http_header_timeout,
    )
