"""Who may call what: endpoint groups, restricted headers and bearer tokens.

Every endpoint belongs to one of Triton's groups (`inference`, `health`, `metadata`,
`model-config`, `model-repository`, `statistics`, `trace`, `logging`, `shared-memory`). The
transports name the group of each call and its few relevant headers; `AccessPolicy.check`
decides, the same way for gRPC, HTTP (the REST API, the browser page's calls, the OpenAI
routes) and the metrics port.

Two mechanisms, which may be combined:
- `--restrict GROUPS:HEADER=VALUE`, Triton's restricted-protocol shape: calls of those groups
  must carry the header with that value. Triton's own flags, `--grpc-restricted-protocol`
  and `--http-restricted-api`, take the same shape for one transport.
- `--auth-token-file`: calls of every group but the public ones (`--auth-public`, health by
  default, for probes) carry `Authorization: Bearer <token>`. The file holds one token per
  line, optionally followed by the groups it grants; it is read again when it changes, so
  tokens rotate without a restart.

A missing or wrong credential is UNAUTHENTICATED, whichever part was wrong; a valid token
without the group is PERMISSION_DENIED. Tokens are compared as SHA-256 digests with
`hmac.compare_digest`, against every known token, so timing tells nothing of how close a
guess came. Refusals are counted by group and reason and logged without the credential.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from tensorgate.errors import PermissionDenied, Unauthenticated
from tensorgate.settings import Settings

log = logging.getLogger(__name__)

GROUPS = (
    "inference",
    "health",
    "metadata",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
    "shared-memory",
)

# The group of each RPC; the REST routes generated from the schema map to their RPC's group.
# Reflection is in none: like /openapi.json it tells the public schema only, and grpcurl
# needs it to call anything, health checks included.
RPC_GROUPS = {
    "ModelInfer": "inference",
    "ModelStreamInfer": "inference",
    "ServerLive": "health",
    "ServerReady": "health",
    "ModelReady": "health",
    "Check": "health",  # grpc.health.v1
    "Watch": "health",
    "List": "health",
    "ServerMetadata": "metadata",
    "ModelMetadata": "metadata",
    "ModelConfig": "model-config",
    "RepositoryIndex": "model-repository",
    "RepositoryModelLoad": "model-repository",
    "RepositoryModelUnload": "model-repository",
    "ModelStatistics": "statistics",
    "SchedulerStatus": "statistics",
    "Metrics": "statistics",
    "TraceSetting": "trace",
    "LogSettings": "logging",
    "SystemSharedMemoryStatus": "shared-memory",
    "SystemSharedMemoryRegister": "shared-memory",
    "SystemSharedMemoryUnregister": "shared-memory",
    "CudaSharedMemoryStatus": "shared-memory",
    "CudaSharedMemoryRegister": "shared-memory",
    "CudaSharedMemoryUnregister": "shared-memory",
}

AUTHORIZATION = "authorization"
# Sent with a 401, as RFC 6750 asks; it names no reason.
WWW_AUTHENTICATE = 'Bearer realm="tensorgate"'
_REFUSED = "missing or invalid credentials"
# How often the token file's status is looked at, at most.
_RELOAD_CHECK_S = 1.0


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def _groups(text: str, where: str) -> frozenset[str]:
    names = frozenset(g.strip() for g in text.split(",") if g.strip())
    unknown = sorted(names - set(GROUPS))
    if unknown or not names:
        raise ValueError(f"{where}: unknown endpoint groups {unknown}; known: {', '.join(GROUPS)}")
    return names


# The transports a check names; a restriction without one covers them all.
TRANSPORTS = ("grpc", "http", "metrics")


@dataclass(frozen=True, slots=True)
class Restriction:
    """Calls of `groups` over `transports` must carry header `header` with value `value`."""

    groups: frozenset[str]
    header: str  # lower case, as gRPC metadata and ASGI headers are
    digest: bytes
    transports: tuple[str, ...] = TRANSPORTS

    @classmethod
    def parse(
        cls, text: str, transports: tuple[str, ...] = TRANSPORTS, flag: str = "--restrict"
    ) -> Restriction:
        """`GROUP[,GROUP]:HEADER=VALUE`."""
        groups, sep, rest = text.partition(":")
        header, eq, value = rest.partition("=")
        if not sep or not eq or not header.strip() or not value:
            raise ValueError(f"{flag} {text!r}: expected GROUP[,GROUP]:HEADER=VALUE")
        return cls(_groups(groups, flag), header.strip().lower(), _digest(value), transports)


@dataclass(frozen=True, slots=True)
class Token:
    """A bearer token's digest and the groups it grants."""

    digest: bytes
    groups: frozenset[str]


def parse_tokens(text: str, where: str) -> list[Token]:
    """Token file lines: `TOKEN [GROUP,GROUP]`; no groups grants them all; `#` comments."""
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) > 2:
            raise ValueError(f"{where}:{number}: expected 'TOKEN [GROUP,GROUP]'")
        groups = _groups(fields[1], f"{where}:{number}") if len(fields) == 2 else frozenset(GROUPS)
        tokens.append(Token(_digest(fields[0]), groups))
    if not tokens:
        raise ValueError(f"{where}: no tokens")
    return tokens


class TokenFile:
    """The tokens of a file, read again when its size, time or inode changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # gRPC checks run on the loop; metrics too
        self._stamp = self._status()
        self.tokens = parse_tokens(path.read_text(), str(path))
        self._checked = time.monotonic()

    def _status(self) -> tuple[int, int, int]:
        status = os.stat(self.path)
        return status.st_ino, status.st_size, status.st_mtime_ns

    def current(self) -> list[Token]:
        now = time.monotonic()
        if now - self._checked < _RELOAD_CHECK_S:
            return self.tokens
        with self._lock:
            self._checked = now
            try:
                stamp = self._status()
                if stamp != self._stamp:
                    self.tokens = parse_tokens(self.path.read_text(), str(self.path))
                    self._stamp = stamp
                    log.info("token file reloaded", extra={"tokens": len(self.tokens)})
            except (OSError, ValueError) as exc:  # mid-rotation or broken: keep the old ones
                log.error("token file not reloaded, keeping the previous tokens: %s", exc)
        return self.tokens


class AccessPolicy:
    """The one check every transport calls before serving a call."""

    def __init__(
        self,
        restrictions: Iterable[Restriction] = (),
        tokens: TokenFile | None = None,
        public: Iterable[str] = ("health",),
    ) -> None:
        self.by_call: dict[tuple[str, str], Restriction] = {}  # (transport, group)
        for restriction in restrictions:
            for transport in restriction.transports:
                for group in restriction.groups:
                    if (transport, group) in self.by_call:
                        raise ValueError(
                            f"group '{group}' is restricted twice for {transport} calls"
                        )
                    self.by_call[transport, group] = restriction
        self.tokens = tokens
        self.public = frozenset(public)
        # The headers a transport must hand over: nothing else is looked at.
        self.headers = frozenset(
            {r.header for r in self.by_call.values()} | ({AUTHORIZATION} if tokens else set())
        )
        self.refused: dict[tuple[str, str], int] = {}  # (group, reason) -> count

    @property
    def active(self) -> bool:
        return bool(self.headers)

    def asgi_headers(self, raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
        """The headers `check` reads, from an ASGI scope's list."""
        wanted = self.headers
        found = {}
        for key, value in raw:
            name = key.decode("latin-1")
            if name in wanted:
                found[name] = value.decode("latin-1")
        return found

    def check(self, group: str, headers: Mapping[str, str], transport: str, what: str) -> None:
        """Raise Unauthenticated or PermissionDenied unless `headers` allow a call of `group`.

        `transport` (grpc, http or metrics) selects the restrictions that apply; `what` (the
        RPC or the path) only goes to the log."""
        restriction = self.by_call.get((transport, group))
        if restriction is not None:
            presented = headers.get(restriction.header)
            if presented is None or not hmac.compare_digest(_digest(presented), restriction.digest):
                self._refuse(group, "unauthenticated", transport, what)
        if self.tokens is None or group in self.public:
            return
        token = self._token(headers.get(AUTHORIZATION))
        if token is None:
            self._refuse(group, "unauthenticated", transport, what)
        elif group not in token.groups:
            self._refuse(group, "permission_denied", transport, what)

    def _token(self, authorization: str | None) -> Token | None:
        assert self.tokens is not None
        scheme, _, secret = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return None
        digest = _digest(secret.strip())
        found = None
        for token in self.tokens.current():  # every one, so the time says nothing
            if hmac.compare_digest(digest, token.digest):
                found = token
        return found

    def _refuse(self, group: str, reason: str, transport: str, what: str) -> None:
        key = (group, reason)
        self.refused[key] = self.refused.get(key, 0) + 1
        log.warning(
            "access refused",
            extra={"group": group, "reason": reason, "transport": transport, "call": what},
        )
        if reason == "unauthenticated":
            raise Unauthenticated(_REFUSED)
        raise PermissionDenied(f"not permitted to call the '{group}' endpoints")


def restrictions(settings: Settings) -> list[Restriction]:
    """Every restriction the settings give: for all transports, and for gRPC or HTTP only."""
    return [
        *(Restriction.parse(r) for r in settings.restrict),
        *(
            Restriction.parse(r, ("grpc",), "--grpc-restricted-protocol")
            for r in settings.grpc_restricted_protocol
        ),
        *(
            Restriction.parse(r, ("http",), "--http-restricted-api")
            for r in settings.http_restricted_api
        ),
    ]


def build_policy(settings: Settings) -> AccessPolicy:
    """The policy the settings describe (ValueError naming what is wrong)."""
    for group in settings.auth_public:
        if group not in GROUPS:
            raise ValueError(f"--auth-public: unknown endpoint group '{group}'")
    token_file = settings.auth_token_file
    tokens = TokenFile(token_file) if token_file is not None else None
    return AccessPolicy(restrictions(settings), tokens, settings.auth_public)


class AccessCollector(Collector):
    """`tensorgate_access_refused_total{group, reason}` for /metrics."""

    def __init__(self, policy: AccessPolicy) -> None:
        self.policy = policy

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "tensorgate_access_refused",
            "Calls refused by access control, by endpoint group and reason "
            "(unauthenticated, permission_denied).",
            labels=["group", "reason"],
        )
        for (group, reason), count in sorted(self.policy.refused.items()):
            family.add_metric([group, reason], count)
        yield family
