"""Transports: the gRPC server and the ASGI servers (REST shim, metrics) it shares a loop with."""


class PortInUse(RuntimeError):
    """A listening port (gRPC, HTTP or metrics) could not be bound."""
