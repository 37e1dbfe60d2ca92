"""The REST shim's HTTP server: the route table over the same servicers as gRPC."""

from __future__ import annotations

import orjson

from tensorgate.dataplane.dataplane import DataPlane
from tensorgate.observability.logs import LogControl
from tensorgate.settings import Settings
from tensorgate.transport.access import AccessPolicy
from tensorgate.transport.asgi import AsgiServer
from tensorgate.transport.grpc.handlers import SERVICE, STATUS_SERVICE
from tensorgate.transport.grpc.servicer import InferenceServicer, StatusServicer
from tensorgate.transport.header_forward import header_forward
from tensorgate.transport.rest import cloud
from tensorgate.transport.rest.app import RestApp
from tensorgate.transport.rest.openapi import build_openapi
from tensorgate.transport.rest.routes import build_routes
from tensorgate.transport.tls import tls_files
from tensorgate.workers.siblings import Siblings


def build_app(
    settings: Settings,
    dataplane: DataPlane,
    log_control: LogControl | None = None,
    policy: AccessPolicy | None = None,
    siblings: Siblings | None = None,
) -> RestApp:
    """The ASGI app over the same servicers (and so the same data plane) as gRPC."""
    router = build_routes(
        [
            (
                SERVICE,
                InferenceServicer(dataplane, log_control, settings.log_updates_allowed, siblings),
            ),
            (STATUS_SERVICE, StatusServicer(dataplane)),
        ]
    )
    openapi = orjson.dumps(build_openapi(router))
    return RestApp(
        dataplane,
        router,
        openapi,
        settings.http_max_body_bytes,
        settings.cors_allow_origins,
        policy,
        header_forward(settings.http_header_forward_pattern, "--http-header-forward-pattern"),
    )


def http_server(settings: Settings, app: RestApp, grace_s: float) -> AsgiServer:
    """The HTTP server: the REST app built from the schema, on tensorgate's uvicorn protocol."""
    return AsgiServer(
        app,
        settings.address("http"),
        settings.http_port,
        "HTTP",
        settings.reuse_port,
        settings.http_max_connections,
        grace_s,
        tls_files(settings, "http"),
        settings.http_header_timeout,
    )


def cloud_servers(
    settings: Settings, app: RestApp, dataplane: DataPlane, grace_s: float
) -> list[AsgiServer]:
    """SageMaker's and Vertex AI's ports, where turned on (ValueError naming what is
    missing). They listen on the HTTP address, with HTTP's TLS, as in Triton."""
    contracts = []
    if settings.allow_sagemaker:
        contracts.append((cloud.sagemaker(), settings.sagemaker_port))
    if settings.allow_vertex_ai:
        contract = cloud.vertex_ai(dataplane, settings.vertex_ai_default_model)
        contracts.append((contract, settings.vertex_ai_port))
    return [
        AsgiServer(
            cloud.CloudApp(app, contract),
            settings.address("http"),
            port,
            contract.name,
            settings.reuse_port,
            settings.http_max_connections,
            grace_s,
            tls_files(settings, "http"),
            settings.http_header_timeout,
        )
        for contract, port in contracts
    ]
