"""The grpc.aio server: inference service, standard health checking and reflection.

Health (grpc.health.v1, Check and Watch) answers for these service names:
  ""                               overall readiness, the same answer as v2 ServerReady
  "readiness"                      the same, under a name a probe can state explicitly
  "liveness"                       SERVING while the process serves at all
  "inference.GRPCInferenceService" readiness, for clients that ask by service
  "<model name>"                   SERVING while the model has a READY version
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tensorgate.dataplane.dataplane import DataPlane
from tensorgate.observability.logs import LogControl
from tensorgate.repository.manager import READY
from tensorgate.settings import Settings
from tensorgate.transport import PortInUse
from tensorgate.transport.access import AccessPolicy
from tensorgate.transport.grpc.access import AccessInterceptor
from tensorgate.transport.grpc.handlers import SERVICE, STATUS_SERVICE, build_handler
from tensorgate.transport.grpc.servicer import InferenceServicer, StatusServicer
from tensorgate.transport.header_forward import header_forward
from tensorgate.transport.tls import grpc_credentials, tls_files
from tensorgate.workers.siblings import Siblings

# The health service names besides the models' (see the module docstring).
HEALTH_SERVICES = ("", "readiness", "liveness", SERVICE.full_name)


class GrpcServer:
    """Owns the grpc.aio server and the health servicer whose status tracks readiness."""

    def __init__(
        self,
        settings: Settings,
        dataplane: DataPlane,
        log_control: LogControl | None = None,
        policy: AccessPolicy | None = None,
        metrics_text: Callable[[], bytes] | None = None,
        siblings: Siblings | None = None,
        private_address: str | None = None,
    ) -> None:
        """`private_address`: a worker's own unix socket for its siblings and supervisor,
        plain and unrestricted (the socket's directory is the process owner's only)."""
        self.dataplane = dataplane
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 1 if settings.reuse_port and not private_address else 0),
            ("grpc.keepalive_time_ms", settings.grpc_keepalive_time),
            ("grpc.keepalive_timeout_ms", settings.grpc_keepalive_timeout),
            # grpc's transport waits for any ping's answer this long (a minute by default)
            # whatever the keepalive timeout says: the same bound, so the flag holds.
            ("grpc.http2.ping_timeout_ms", settings.grpc_keepalive_timeout),
            (
                "grpc.keepalive_permit_without_calls",
                int(settings.grpc_keepalive_permit_without_calls),
            ),
            ("grpc.http2.max_pings_without_data", settings.grpc_http2_max_pings_without_data),
            (
                "grpc.http2.min_ping_interval_without_data_ms",
                settings.grpc_http2_min_recv_ping_interval_without_data,
            ),
            ("grpc.http2.max_ping_strikes", settings.grpc_http2_max_ping_strikes),
        ]
        # A connection's age and the grace after it (grpc's own default is no limit), and the
        # responses' compression: set per call (ServicerContext.set_compression), grpc.aio
        # 1.85 still sends them uncompressed, so it is the server's, for every response.
        level = _COMPRESSION_LEVELS[settings.grpc_infer_response_compression_level]
        for option, value in (
            ("grpc.max_connection_age_ms", settings.grpc_max_connection_age),
            ("grpc.max_connection_age_grace_ms", settings.grpc_max_connection_age_grace),
            ("grpc.default_compression_level", level),
        ):
            if value and not private_address:
                options.append((option, value))
        interceptors = []
        if policy is not None and policy.active and private_address is None:
            interceptors.append(AccessInterceptor(policy))
        self.server = grpc.aio.server(options=options, interceptors=interceptors)
        inference = InferenceServicer(
            dataplane,
            log_control,
            settings.log_updates_allowed,
            siblings,
            None
            if private_address
            else header_forward(
                settings.grpc_header_forward_pattern, "--grpc-header-forward-pattern"
            ),
        )
        self.server.add_generic_rpc_handlers(
            (
                build_handler(inference),
                build_handler(StatusServicer(dataplane, metrics_text), STATUS_SERVICE),
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
        self.address = private_address or _host_port(settings.address("grpc"), settings.grpc_port)
        self.credentials = None if private_address else _server_credentials(settings)
        self._published: dict[str, int] = {}
        self._refreshes: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Bind and start; NOT_SERVING until `set_serving(True)`."""
        try:
            if self.credentials is not None:
                port = self.server.add_secure_port(self.address, self.credentials)
            else:
                port = self.server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise PortInUse(f"cannot listen on {self.address}: {exc}") from None
        if port == 0:
            raise PortInUse(f"cannot listen on {self.address} (port in use?)")
        await self.refresh_health()
        await self.server.start()
        return int(port)

    def health_statuses(self) -> dict[str, int]:
        """Every health service name and its status, from the data plane's one answer."""
        serving, not_serving = (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        ready = serving if self.dataplane.server_ready() else not_serving
        statuses = {name: ready for name in HEALTH_SERVICES}
        statuses["liveness"] = serving
        for name, record in self.dataplane.repository.records.items():
            statuses.setdefault(
                name, serving if record.state == READY and record.versions else not_serving
            )
        return statuses

    async def refresh_health(self) -> None:
        """Publish the statuses that changed; Watch streams see each change."""
        for name, status in self.health_statuses().items():
            if self._published.get(name) != status:
                self._published[name] = status
                await self.health.set(name, status)

    def health_changed(self) -> None:
        """Synchronous hook (a model's state changed): refresh on the loop right after."""
        task = asyncio.get_running_loop().create_task(self.refresh_health())
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)

    async def stop(self, grace: float) -> None:
        """Calls in flight get `grace` seconds (readiness is already off: Servers.stop)."""
        await self.server.stop(grace)


# Triton's response compression levels, grpc's own: grpc picks the algorithm for a level
# from those the client accepts (gzip for low, deflate above, from a grpc client).
_COMPRESSION_LEVELS = {"none": 0, "low": 1, "medium": 2, "high": 3}


def _host_port(host: str, port: int) -> str:
    """grpc's `host:port`, with an IPv6 address in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    files = tls_files(settings, "grpc")
    return grpc_credentials(files) if files is not None else None
