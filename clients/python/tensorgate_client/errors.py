"""The one exception the client raises for a failed call, whichever protocol carried it."""

from __future__ import annotations

# HTTP status -> the gRPC status name the server's error table pairs with it.
HTTP_TO_CODE = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class InferenceServerError(Exception):
    """A call the server (or the network) failed: `code` is a gRPC status name."""

    def __init__(self, code: str, message: str, request_id: str = "") -> None:
        super().__init__(
            f"[{code}] {message}" + (f" (request id {request_id})" if request_id else "")
        )
        self.code = code
        self.message = message
        self.request_id = request_id
