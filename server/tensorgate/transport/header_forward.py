"""Triton's header forwarding: request headers whose names match a pattern reach the model as
string parameters (`--grpc-header-forward-pattern`, `--http-header-forward-pattern`).

The pattern is searched in each header's name, case-insensitively as HTTP names compare, unless
it starts with `(?-i)`. A parameter the request itself carries keeps its value. HTTP/1.1 names
arrive lower-cased (uvicorn lowers them, as HTTP/2 and gRPC metadata always are), so a model
reads `x-tenant` for a client's `X-Tenant`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tensorgate.dataplane.types import ParameterValue

_CASE_SENSITIVE = "(?-i)"


class HeaderForward:
    """One transport's pattern, and the parameters it takes from a call's headers."""

    def __init__(self, pattern: str, flag: str) -> None:
        flags = re.IGNORECASE
        if pattern.startswith(_CASE_SENSITIVE):  # Python's re has no global `(?-i)`
            pattern, flags = pattern.removeprefix(_CASE_SENSITIVE), re.NOFLAG
        try:
            self.pattern = re.compile(pattern, flags)
        except re.error as exc:
            raise ValueError(f"{flag} {pattern!r}: not a regular expression: {exc}") from None

    def matching(self, headers: Iterable[tuple[str, str]]) -> dict[str, str]:
        """The headers whose names match, as parameters."""
        search = self.pattern.search
        return {name: value for name, value in headers if search(name)}

    def add_to(
        self, parameters: dict[str, ParameterValue], headers: Iterable[tuple[str, str]]
    ) -> None:
        for name, value in self.matching(headers).items():
            parameters.setdefault(name, value)


def header_forward(pattern: str, flag: str) -> HeaderForward | None:
    """The forwarding a flag's value asks for; None when it is empty."""
    return HeaderForward(pattern, flag) if pattern else None


def asgi_headers(raw: Iterable[tuple[bytes, bytes]]) -> Iterable[tuple[str, str]]:
    """An ASGI scope's headers as text."""
    return ((key.decode("latin-1"), value.decode("latin-1")) for key, value in raw)
