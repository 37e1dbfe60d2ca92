"""The current call's request id and trace headers, carried in a context variable.

Each gRPC call and HTTP request runs in its own asyncio task, which starts with a copy of the
context: what the transport sets here at the start of a call is seen by everything that call
awaits, and by no other call.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from tensorgate.observability.logs import accept_request_id, bind_request_id


@dataclass(slots=True)
class CallContext:
    """What a client told us about its call, beyond the request message itself."""

    request_id: str
    traceparent: str = ""  # W3C trace context, as received
    tracestate: str = ""


_current: ContextVar[CallContext | None] = ContextVar("tensorgate_call", default=None)


def begin_call(
    request_id: str | bytes | None, traceparent: str = "", tracestate: str = ""
) -> CallContext:
    """Start a call: accept or make its request id and bind it to the call's log lines."""
    call = CallContext(accept_request_id(request_id), traceparent, tracestate)
    _current.set(call)
    bind_request_id(call.request_id)
    return call


def current_call() -> CallContext | None:
    """The call the current asyncio task serves, if any."""
    return _current.get()
