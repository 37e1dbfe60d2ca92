"""Expected failures, and the one table that maps each kind to a gRPC status and an HTTP code.

Anything raised that is not a `TensorgateError` is a bug: transports answer it with a generic
INTERNAL error and log the details, so internals never leak to clients.
"""

from __future__ import annotations

import enum

# What a client is told about a bug; the details go to the server log only.
INTERNAL_MESSAGE = "internal error; the server log has the details"


class ErrorKind(enum.Enum):
    """What went wrong, independent of the wire protocol that carries it."""

    INVALID_ARGUMENT = ("INVALID_ARGUMENT", 400)
    NOT_FOUND = ("NOT_FOUND", 404)
    UNAVAILABLE = ("UNAVAILABLE", 503)
    RESOURCE_EXHAUSTED = ("RESOURCE_EXHAUSTED", 429)
    FAILED_PRECONDITION = ("FAILED_PRECONDITION", 400)
    DEADLINE_EXCEEDED = ("DEADLINE_EXCEEDED", 504)
    CANCELLED = ("CANCELLED", 499)
    UNIMPLEMENTED = ("UNIMPLEMENTED", 501)
    UNAUTHENTICATED = ("UNAUTHENTICATED", 401)
    PERMISSION_DENIED = ("PERMISSION_DENIED", 403)
    INTERNAL = ("INTERNAL", 500)
    # What Triton Python models may report besides the above (TritonError's codes).
    ALREADY_EXISTS = ("ALREADY_EXISTS", 409)
    UNKNOWN = ("UNKNOWN", 500)
    # HTTP's own: a route that takes other methods, a body over the size limit.
    METHOD_NOT_ALLOWED = ("UNIMPLEMENTED", 405)
    PAYLOAD_TOO_LARGE = ("RESOURCE_EXHAUSTED", 413)

    @property
    def grpc_status_name(self) -> str:
        """Name of the member of `grpc.StatusCode` this kind maps to."""
        return self.value[0]

    @property
    def http_status(self) -> int:
        """HTTP status code this kind maps to."""
        return self.value[1]


class TensorgateError(Exception):
    """An expected failure whose message is safe and useful to show the client."""

    kind: ErrorKind = ErrorKind.INTERNAL

    def __init__(self, message: str, kind: ErrorKind | None = None) -> None:
        super().__init__(message)
        self.message = message
        if kind is not None:
            self.kind = kind


class InvalidArgument(TensorgateError):
    """The request is wrong: bad input, parameter or sequence."""

    kind = ErrorKind.INVALID_ARGUMENT


class NotFound(TensorgateError):
    """No such model, version or route."""

    kind = ErrorKind.NOT_FOUND


class Unavailable(TensorgateError):
    """The model cannot serve now: not ready, unloading, or its queue timed out."""

    kind = ErrorKind.UNAVAILABLE


class ResourceExhausted(TensorgateError):
    """A bounded queue is full: the request is shed."""

    kind = ErrorKind.RESOURCE_EXHAUSTED


class FailedPrecondition(TensorgateError):
    """The server is not in the state the call needs (e.g. explicit model control)."""

    kind = ErrorKind.FAILED_PRECONDITION


class DeadlineExceeded(TensorgateError):
    """The work did not finish in the time allowed (a model past its timeout)."""

    kind = ErrorKind.DEADLINE_EXCEEDED


class Unauthenticated(TensorgateError):
    """The call needs credentials it does not carry, or carries wrong ones."""

    kind = ErrorKind.UNAUTHENTICATED


class PermissionDenied(TensorgateError):
    """The caller is known but may not call this, or the server forbids the change."""

    kind = ErrorKind.PERMISSION_DENIED


class Unimplemented(TensorgateError):
    """An extension or parameter tensorgate does not implement."""

    kind = ErrorKind.UNIMPLEMENTED


class ModelExecutionError(TensorgateError):
    """The backend raised while running a batch; the message names the model and the cause."""

    kind = ErrorKind.INTERNAL


class ModelLoadError(TensorgateError):
    """A model could not be loaded: bad config, unknown backend, or a config/model mismatch."""

    kind = ErrorKind.INVALID_ARGUMENT
