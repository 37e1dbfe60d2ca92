"""The grpc.aio server: inference service, standard health checking and reflection."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tensorgate.dataplane.dataplane import DataPlane
from tensorgate.settings import Settings
from tensorgate.transport.grpc.handlers import SERVICE, STATUS_SERVICE, build_handler
from tensorgate.transport.grpc.servicer import InferenceServicer, StatusServicer


class PortInUse(RuntimeError):
    """The gRPC port could not be bound."""


class GrpcServer:
    """Owns the grpc.aio server and the health servicer whose status tracks readiness."""

    def __init__(self, settings: Settings, dataplane: DataPlane) -> None:
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
        ]
        self.server = grpc.aio.server(options=options)
        self.server.add_generic_rpc_handlers(
            (
                build_handler(InferenceServicer(dataplane)),
                build_handler(StatusServicer(dataplane), STATUS_SERVICE),
            )
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                SERVICE.full_name,
                STATUS_SERVICE.full_name,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        self.address = f"{settings.host}:{settings.grpc_port}"

    async def start(self) -> int:
        """Bind and start; NOT_SERVING until `set_serving(True)`."""
        try:
            port = self.server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise PortInUse(f"cannot listen on {self.address}: {exc}") from None
        if port == 0:
            raise PortInUse(f"cannot listen on {self.address} (port in use?)")
        await self.set_serving(False)
        await self.server.start()
        return int(port)

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE.full_name):
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)
