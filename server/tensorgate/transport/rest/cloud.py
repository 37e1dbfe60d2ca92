"""SageMaker's and Vertex AI's serving contracts in front of the REST app, as Triton serves them.

Each platform sends every call to one port and two routes: a health check and a prediction.
These apps rewrite those calls into the REST app's own (`/v2/health/ready`,
`/v2/models/<default model>/infer`), so validation, batching, access control and errors are
the REST API's. What differs is the binary tensor format's framing: the platforms pass no
custom headers, so the JSON header's length rides in the content type
(`application/vnd.sagemaker-triton.binary+json;json-header-size=N`), both ways.

- SageMaker: `GET /ping` and `POST /invocations` on `--sagemaker-port` (8080). The model is
  `SAGEMAKER_TRITON_DEFAULT_MODEL_NAME`; `SAGEMAKER_TRITON_PING_MODE` (`ready` or `live`)
  and `SAGEMAKER_TRITON_INFERENCE_TYPE` (`infer`, `generate`, `generate_stream`) as in
  Triton. A failed invocation is 400 with `{"error": ...}`, as Triton answers SageMaker.
  Multi-model endpoints (`/models`) are not served.
- Vertex AI: `AIP_HEALTH_ROUTE` and `AIP_PREDICT_ROUTE` on `--vertex-ai-port`
  (`AIP_HTTP_PORT`, else 8080), on by default when `AIP_MODE=PREDICTION`. The model is
  `--vertex-ai-default-model`, else the repository's only model. A prediction carrying
  `X-Vertex-Ai-Triton-Redirect: v2/...` is sent to that REST endpoint instead (Vertex AI
  itself only POSTs), with the method that endpoint takes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

from tensorgate.dataplane.dataplane import DataPlane
from tensorgate.transport.rest.app import Message, Receive, Scope, Send

App = Callable[[Scope, Receive, Send], Awaitable[None]]

_HEADER_LENGTH = b"inference-header-content-length"
_REDIRECT = b"x-vertex-ai-triton-redirect"
# Redirect targets answered with POST; every other REST endpoint is a GET.
_POSTED = re.compile(
    r"/v2/models/[^/]+(/versions/[^/]+)?/(infer|generate|generate_stream)"
    r"|/v2/repository/.*"
    r"|/v2/(systemsharedmemory|cudasharedmemory)(/region/[^/]+)?/(register|unregister)"
)
_INFERENCE_TYPES = ("infer", "generate", "generate_stream")


@dataclass(frozen=True, slots=True)
class Contract:
    """One platform's routes and framing."""

    name: str  # for logs and errors
    health_route: str
    predict_route: str
    health: str  # ready | live
    binary_type: bytes  # the content type's prefix before the header's length
    model: Callable[[], str]  # the model a plain prediction goes to
    inference_type: str = "infer"
    errors_as_400: bool = False  # SageMaker: Triton answers every failed invocation 400
    redirects: bool = False  # Vertex AI's redirect header


def sagemaker(environ: dict[str, str] | None = None) -> Contract:
    """SageMaker's contract, from the variables its Triton containers read."""
    environ = dict(os.environ) if environ is None else environ
    ping = environ.get("SAGEMAKER_TRITON_PING_MODE", "ready")
    kind = environ.get("SAGEMAKER_TRITON_INFERENCE_TYPE", "infer")
    if ping not in ("ready", "live"):
        raise ValueError(f"SAGEMAKER_TRITON_PING_MODE must be ready or live, got {ping!r}")
    if kind not in _INFERENCE_TYPES:
        raise ValueError(
            f"SAGEMAKER_TRITON_INFERENCE_TYPE must be one of {', '.join(_INFERENCE_TYPES)}, "
            f"got {kind!r}"
        )
    model = environ.get("SAGEMAKER_TRITON_DEFAULT_MODEL_NAME", "")
    if not model:
        raise ValueError("--allow-sagemaker needs SAGEMAKER_TRITON_DEFAULT_MODEL_NAME")
    return Contract(
        "SageMaker",
        "/ping",
        "/invocations",
        ping,
        b"application/vnd.sagemaker-triton.binary+json;json-header-size=",
        lambda: model,
        kind,
        errors_as_400=True,
    )


def vertex_ai(
    dataplane: DataPlane, default_model: str, environ: dict[str, str] | None = None
) -> Contract:
    """Vertex AI's contract: its routes from AIP_* variables, its model named or the only one."""
    environ = dict(os.environ) if environ is None else environ
    routes = {key: environ.get(key, "") for key in ("AIP_HEALTH_ROUTE", "AIP_PREDICT_ROUTE")}
    missing = [key for key, route in routes.items() if not route]
    if missing:
        raise ValueError(f"--allow-vertex-ai needs {' and '.join(missing)}")

    def model() -> str:
        if default_model:
            return default_model
        names = sorted({version.name for version in dataplane.loaded_versions()})
        if len(names) != 1:
            raise LookupError(
                f"{len(names)} models are loaded and no --vertex-ai-default-model names the "
                "one to predict with"
            )
        return names[0]

    return Contract(
        "Vertex AI",
        routes["AIP_HEALTH_ROUTE"],
        routes["AIP_PREDICT_ROUTE"],
        "ready",
        b"application/vnd.vertex-ai-triton.binary+json;json-header-size=",
        model,
        redirects=True,
    )


class CloudApp:
    """A platform's two routes, rewritten into the REST app's calls."""

    def __init__(self, rest: App, contract: Contract) -> None:
        self.rest = rest
        self.contract = contract

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        contract, path, method = self.contract, scope["path"], scope["method"]
        if path == contract.health_route:
            if method != "GET":
                await _answer(send, 405, "health is a GET")
                return
            await self.rest(
                _rewritten(scope, f"/v2/health/{contract.health}", "GET"), receive, send
            )
            return
        if path != contract.predict_route:
            await _answer(
                send,
                400,
                f"{contract.name} serves {contract.health_route} and {contract.predict_route} here",
            )
            return
        if method != "POST":
            await _answer(send, 405, "predictions are POSTed")
            return
        headers = dict(scope["headers"])
        target = headers.get(_REDIRECT) if contract.redirects else None
        try:
            if target is not None:
                path = "/" + target.decode("latin-1").lstrip("/")
                method = "POST" if _POSTED.fullmatch(path) else "GET"
            else:
                path = f"/v2/models/{contract.model()}/{contract.inference_type}"
            request_headers = self._framing_in(scope["headers"])
        except (LookupError, ValueError) as exc:
            await _answer(send, 400, str(exc))
            return
        await self.rest(
            _rewritten(scope, path, method, request_headers), receive, self._framing_out(send)
        )

    def _framing_in(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The platform's binary content type as the REST API's header-length header."""
        out = []
        prefix = self.contract.binary_type
        for key, value in headers:
            if key == b"content-type" and prefix in value:
                if not value.startswith(prefix):
                    raise ValueError(
                        f"expected the binary content type to start with '{prefix.decode()}', "
                        f"got '{value.decode('latin-1')}'"
                    )
                length = value[len(prefix) :].split(b";", 1)[0].strip()
                if not length.isdigit():
                    raise ValueError(f"inference header size is not a number: {length!r}")
                out += [(b"content-type", b"application/octet-stream"), (_HEADER_LENGTH, length)]
            elif key != _HEADER_LENGTH:
                out.append((key, value))
        return out

    def _framing_out(self, send: Send) -> Send:
        """The REST API's binary response framing as the platform's content type; for
        SageMaker, a failure's status as 400."""
        contract = self.contract

        async def framed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                length = next((v for k, v in headers if k == _HEADER_LENGTH), None)
                if length is not None:
                    dropped = (_HEADER_LENGTH, b"content-type")
                    headers = [(k, v) for k, v in headers if k not in dropped]
                    headers.append((b"content-type", contract.binary_type + length))
                status = message["status"]
                if contract.errors_as_400 and status >= 400:
                    status = 400
                message = {**message, "headers": headers, "status": status}
            await send(message)

        return framed


def _rewritten(
    scope: Scope, path: str, method: str, headers: list[tuple[bytes, bytes]] | None = None
) -> Scope:
    """A new scope for the REST app. Being new matters: the REST app writes a response
    straight to the connection only for the connection's own scope (HttpProtocol.respond),
    so these responses go through `send`, where `_framing_out` rewrites them."""
    return {
        **scope,
        "path": path,
        "raw_path": path.encode(),
        "method": method,
        "query_string": b"",
        "headers": scope["headers"] if headers is None else headers,
    }


async def _answer(send: Send, status: int, message: str) -> None:
    body = orjson.dumps({"error": message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
