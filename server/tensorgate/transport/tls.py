"""TLS from PEM files, reloaded when they change: certificates rotate without a restart.

gRPC asks for its certificates at each handshake (grpcio's dynamic credentials) and gets new
ones once the files changed; the HTTP and metrics servers load the new files into the SSL
context they listen with, which every later handshake uses. Connections already open keep
their certificate. TLS 1.2 is the oldest version accepted (grpc's own floor, and set on the
HTTP servers' contexts).

A rotation that leaves the files half written (a certificate that does not match its key)
is logged and the previous certificate stays in use until the files are whole again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from pathlib import Path

import grpc

from tensorgate.settings import Settings

log = logging.getLogger(__name__)

# How often the files' status is looked at, at most.
CHECK_INTERVAL_S = 1.0


class TlsFiles:
    """A certificate, its key and an optional client CA bundle (mutual TLS), as files.

    Each consumer holds its own instance: `changed()` answers for that consumer's last look.
    """

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._stamp = self._status()
        self._checked = time.monotonic()

    def _status(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for path in (self.cert, self.key, self.client_ca):
            if path is not None:
                status = os.stat(path)
                stamps.append((status.st_ino, status.st_size, status.st_mtime_ns))
        return tuple(stamps)

    def changed(self) -> bool:
        """True once after the files changed (looked at no more than once a second)."""
        now = time.monotonic()
        if now - self._checked < CHECK_INTERVAL_S:
            return False
        self._checked = now
        try:
            stamp = self._status()
        except OSError:  # a file replaced right now: look again next time
            return False
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """Certificate chain, key and client CA bundle."""
        ca = self.client_ca.read_bytes() if self.client_ca is not None else None
        return self.cert.read_bytes(), self.key.read_bytes(), ca


def tls_files(settings: Settings, port: str) -> TlsFiles | None:
    """The settings' TLS files, a fresh view for the server of `port` (grpc, http or
    metrics); None when that port is served without TLS."""
    if settings.tls_cert is None or settings.tls_key is None or port not in settings.tls_ports:
        return None
    return TlsFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca)


def grpc_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Server credentials that pick up changed files at the next handshake."""

    def configuration() -> grpc.ServerCertificateConfiguration:
        cert, key, ca = files.read()
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        if not files.changed():
            return None
        try:
            reloaded = configuration()
        except OSError as exc:
            log.error("TLS files not reloaded for gRPC: %s", exc)
            return None
        log.info("TLS certificate reloaded", extra={"server": "gRPC"})
        return reloaded

    # grpcio's stubs say the fetcher returns a configuration; None means "unchanged".
    return grpc.dynamic_ssl_server_credentials(
        configuration(),
        fetch,  # type: ignore[arg-type]
        require_client_authentication=files.client_ca is not None,
    )


def harden(context: ssl.SSLContext) -> None:
    """TLS 1.2 or later only."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2


async def reload_forever(files: TlsFiles, context: ssl.SSLContext, what: str) -> None:
    """Load changed files into `context` (runs until cancelled)."""
    while True:
        await asyncio.sleep(CHECK_INTERVAL_S)
        if not files.changed():
            continue
        try:
            context.load_cert_chain(files.cert, files.key)
            if files.client_ca is not None:
                # Adds the new bundle's CAs; a CA taken out stays trusted until a restart.
                context.load_verify_locations(files.client_ca)
        except (OSError, ssl.SSLError) as exc:
            log.error("TLS files not reloaded for %s: %s", what, exc)
            continue
        log.info("TLS certificate reloaded", extra={"server": what})
