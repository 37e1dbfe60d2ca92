"""Connection options shared by the clients: retries with backoff, TLS, request ids."""

from __future__ import annotations

import random
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

REQUEST_ID = "x-request-id"
PemSource = bytes | str | Path | None


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a call that failed UNAVAILABLE (server starting, model loading, connection lost).

    `attempts` counts the first try: 1 turns retries off. Delays grow by `multiplier` from
    `initial_backoff_s` up to `max_backoff_s`, each scaled by a random 0.5-1.0 so that many
    clients do not retry in step. A call's own deadline bounds the whole sequence.
    """

    attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0

    def delays(self) -> Iterator[float]:
        """The waits before each retry: exponential backoff with jitter, capped."""
        delay = self.initial_backoff_s
        for _ in range(self.attempts - 1):
            yield delay * random.uniform(0.5, 1.0)
            delay = min(delay * self.multiplier, self.max_backoff_s)


NO_RETRY = RetryPolicy(attempts=1)


def _pem(source: PemSource) -> bytes | None:
    if source is None:
        return None
    if isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


@dataclass(frozen=True)
class TlsOptions:
    """TLS for gRPC and HTTPS. PEM as bytes or a file path.

    root_certificates: CAs to trust (None: the system's). certificate_chain + private_key:
    the client's certificate, for servers that require one (mutual TLS). server_name: the
    name to check the server's certificate against, when it differs from the address.
    """

    root_certificates: PemSource = None
    certificate_chain: PemSource = None
    private_key: PemSource = None
    server_name: str | None = None

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        """These settings as gRPC channel credentials."""
        return grpc.ssl_channel_credentials(
            _pem(self.root_certificates), _pem(self.private_key), _pem(self.certificate_chain)
        )

    def ssl_context(self) -> ssl.SSLContext:
        """These settings as an SSL context for HTTPS."""
        roots = _pem(self.root_certificates)
        context = ssl.create_default_context(cadata=roots.decode() if roots else None)
        if self.certificate_chain is not None:
            chain, key = self.certificate_chain, self.private_key
            if isinstance(chain, bytes) or isinstance(key, bytes):
                raise ValueError("for HTTPS give the client certificate and key as file paths")
            context.load_cert_chain(str(chain), str(key) if key else None)
        return context


def channel_options(max_message_bytes: int, tls: TlsOptions | None) -> list[tuple[str, object]]:
    """gRPC channel options: message size limits, and the TLS name override if any."""
    options: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Our own retry loop applies the policy; gRPC's transparent retries stay as they are.
    ]
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return options


def new_request_id() -> str:
    """A fresh x-request-id."""
    return uuid.uuid4().hex
