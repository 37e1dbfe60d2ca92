"""The REST shim: a plain ASGI app whose routes come from the proto schema.

Each request is matched against the route table, decoded into the RPC's request message (or,
for inference, straight into the data plane's request type), handed to the same servicer
methods the gRPC server calls, and encoded back as JSON. Errors are `{"error": "..."}` with the
HTTP code from the one error table.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import copy_context
from functools import partial
from typing import Any, TypeVar

import orjson

from tensorgate.dataplane.dataplane import DataPlane
from tensorgate.dataplane.types import InferRequest, InferResponse
from tensorgate.errors import (
    INTERNAL_MESSAGE,
    ErrorKind,
    InvalidArgument,
    TensorgateError,
    Unavailable,
)
from tensorgate.generation import openai_api
from tensorgate.observability.context import CallContext, begin_call
from tensorgate.observability.tracing import RequestTrace, traced_infer
from tensorgate.protocol import rest_codec
from tensorgate.transport.access import RPC_GROUPS, WWW_AUTHENTICATE, AccessPolicy
from tensorgate.transport.asgi import CONNECTION_EXTENSION, HttpProtocol
from tensorgate.transport.header_forward import HeaderForward, asgi_headers
from tensorgate.transport.rest.generate import Generate, match_generate
from tensorgate.transport.rest.messages import field_to_json, json_to_message, message_to_json
from tensorgate.transport.rest.openai import ROUTES as OPENAI_ROUTES
from tensorgate.transport.rest.openai import OpenAIRoutes
from tensorgate.transport.rest.routes import NoRoute, Route, Router
from tensorgate.transport.rest.static import StaticFiles

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
T = TypeVar("T")

_JSON = b"application/json"
_BINARY = b"application/octet-stream"
_RETRY_AFTER = {429, 503}
# Responses smaller than this go out uncompressed even when the client accepts gzip.
_COMPRESS_MIN_BYTES = 1024
_INFER_SPAN = "POST /v2/models/{model_name}/infer"
_GENERATE_SPAN = "POST /v2/models/{model_name}/generate"
_SENT = 0  # the handler has sent the response itself (a stream of events)


class Disconnected(Exception):
    """The client went away before its response was ready."""


class PayloadTooLarge(TensorgateError):
    """A request body over --http-max-body-bytes; the connection closes after the answer."""

    kind = ErrorKind.PAYLOAD_TOO_LARGE


class RequestHeaders:
    """The few request headers the shim reads, picked out in one pass."""

    __slots__ = (
        "accept_encoding",
        "content_encoding",
        "content_length",
        "header_length",
        "origin",
        "request_id",
        "traceparent",
        "tracestate",
    )

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.content_length = -1
        self.header_length: int | None = None
        self.content_encoding = self.accept_encoding = self.request_id = b""
        self.origin: bytes | None = None
        self.traceparent = self.tracestate = ""
        for key, value in raw:
            if key == b"x-request-id":
                self.request_id = value
            elif key == b"traceparent":
                self.traceparent = value.decode("latin-1")
            elif key == b"tracestate":
                self.tracestate = value.decode("latin-1")
            elif key == b"content-length":
                self.content_length = _int_header("Content-Length", value)
            elif key == b"inference-header-content-length":
                self.header_length = _int_header(rest_codec.HEADER_LENGTH, value)
            elif key == b"content-encoding":
                self.content_encoding = value.strip().lower()
            elif key == b"accept-encoding":
                self.accept_encoding = value.lower()
            elif key == b"origin":
                self.origin = value


def _int_header(name: str, value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"header {name} must be an integer, got {value[:40]!r}") from None


def _decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    if encoding in (b"", b"identity"):
        return body
    if encoding not in (b"gzip", b"deflate"):
        raise InvalidArgument(
            f"unsupported Content-Encoding {encoding.decode(errors='replace')}; "
            "use gzip, deflate or none"
        )
    inflater = zlib.decompressobj(31 if encoding == b"gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidArgument(f"body is not valid {encoding.decode()} data: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body exceeds the limit of {limit} bytes")
    return out


class RestApp:
    """ASGI application serving the route table, /openapi.json and the browser page."""

    def __init__(
        self,
        dataplane: DataPlane,
        router: Router,
        openapi: bytes,
        max_body_bytes: int,
        cors_origins: list[str],
        policy: AccessPolicy | None = None,
        header_forward: HeaderForward | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.policy = policy if policy is not None and policy.active else None
        # Headers forwarded to models as request parameters (--http-header-forward-pattern).
        self.header_forward = header_forward
        self.router = router
        self.openapi = openapi
        self.max_body_bytes = max_body_bytes
        self.cors_origins = {o.encode() for o in cors_origins}
        self.static = StaticFiles()
        self.generate = Generate(dataplane)
        self.openai = OpenAIRoutes(dataplane)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers: RequestHeaders | None = None
        call = None
        try:
            headers = RequestHeaders(scope["headers"])
            call = begin_call(headers.request_id, headers.traceparent, headers.tracestate)
            status, payload, extra = await self._dispatch(scope, receive, send, headers, call)
            if status == _SENT:
                return
        except Disconnected:
            return
        except Exception as exc:
            status, payload, extra = self._error(scope, exc)
        self._finish_headers(extra, payload, headers, call)
        connection = _connection(scope)
        if connection is not None and connection.respond(scope, status, extra, payload):
            return
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": payload})

    def answer_now(self, scope: Scope, connection: HttpProtocol) -> bool:
        """Start a POST whose body has arrived without a task of its own (HttpProtocol
        offers it), or return False to take it as ASGI. Inference requests are taken: the
        data plane answers them through a callback, as it does a gRPC stream's. Traced ones
        are not, since their spans follow `traced_infer`'s awaits."""
        if self.dataplane.tracing is not None:
            return False
        try:
            route, params = self.router.match("POST", scope["path"])
        except NoRoute:
            return False
        if route.method.name != "ModelInfer":
            return False
        # A context of its own, as a task would have: the request id bound for its log lines.
        copy_context().run(self._infer_now, scope, connection, params)
        return True

    def _infer_now(self, scope: Scope, connection: HttpProtocol, params: dict[str, str]) -> None:
        headers: RequestHeaders | None = None
        call = None
        try:
            headers = RequestHeaders(scope["headers"])
            call = begin_call(headers.request_id, headers.traceparent, headers.tracestate)
            if self.dataplane.draining:
                raise Unavailable("the server is shutting down")
            self._authorize(RPC_GROUPS["ModelInfer"], scope)
            body = connection.body(scope)
            if body is None:  # the client has gone
                return
            body = self._checked_body(body, headers)
            model, version = params["model_name"], params.get("model_version", "")
            decoded = self._decode(body, headers, model, version, scope)
        except Exception as exc:
            self._answer_now(scope, connection, headers, call, *self._error(scope, exc))
            return
        answered = partial(self._infer_answered, scope, connection, headers, call, decoded)
        waiting = self.dataplane.infer_soon(decoded.request, answered)
        if waiting is not None:
            connection.cancel_on_disconnect(waiting)

    def _infer_answered(
        self,
        scope: Scope,
        connection: HttpProtocol,
        headers: RequestHeaders,
        call: CallContext,
        decoded: rest_codec.RestInferRequest,
        outcome: InferResponse | BaseException,
    ) -> None:
        connection.cancel_on_disconnect(None)
        if isinstance(outcome, asyncio.CancelledError):
            if connection.client_gone:
                return
            outcome = Unavailable("the request was cancelled before it ran")
        if isinstance(outcome, InferResponse):
            try:
                payload, extra = self._infer_payload(outcome, decoded, headers)
                status = 200
            except Exception as exc:
                status, payload, extra = self._error(scope, exc)
        else:
            status, payload, extra = self._error(scope, outcome)
        self._answer_now(scope, connection, headers, call, status, payload, extra)

    def _answer_now(
        self,
        scope: Scope,
        connection: HttpProtocol,
        headers: RequestHeaders | None,
        call: CallContext | None,
        status: int,
        payload: bytes,
        extra: list[tuple[bytes, bytes]],
    ) -> None:
        self._finish_headers(extra, payload, headers, call)
        if not connection.respond(scope, status, extra, payload):
            connection.respond_later(scope, status, extra, payload)

    def _error(
        self, scope: Scope, exc: BaseException
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """A failed request's answer: the error table's code and `{"error": ...}`."""
        if isinstance(exc, TensorgateError):
            status = exc.kind.http_status
            if scope["path"].startswith("/v1/"):  # the OpenAI routes answer OpenAI's shape
                payload = openai_api.error_body(exc.message, status)
            else:
                payload = orjson.dumps({"error": exc.message})
            return status, payload, [(b"content-type", _JSON), *_error_headers(exc)]
        log.error("unexpected error in %s %s", scope["method"], scope["path"], exc_info=exc)
        return 500, orjson.dumps({"error": INTERNAL_MESSAGE}), [(b"content-type", _JSON)]

    def _finish_headers(
        self,
        extra: list[tuple[bytes, bytes]],
        payload: bytes,
        headers: RequestHeaders | None,
        call: CallContext | None,
    ) -> None:
        """Add what every response carries to its own headers."""
        if call is None:  # the headers themselves were invalid
            call = begin_call(None)
        extra += self._common_headers(headers, call)
        extra.append((b"content-length", str(len(payload)).encode()))

    def _common_headers(
        self, headers: RequestHeaders | None, call: CallContext
    ) -> list[tuple[bytes, bytes]]:
        """What every response carries: CORS headers for an allowed origin, the request id."""
        request_id = (b"x-request-id", call.request_id.encode("latin-1"))
        if headers is None or headers.origin is None:
            return [request_id]
        return [*self._cors(headers.origin), request_id]

    def _cors(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        if b"*" in self.cors_origins:
            allowed = b"*"
        elif origin in self.cors_origins:
            allowed = origin
        else:
            return []
        return [
            (b"access-control-allow-origin", allowed),
            (b"access-control-expose-headers", b"Inference-Header-Content-Length, X-Request-Id"),
            (b"vary", b"Origin"),
        ]

    async def _dispatch(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: RequestHeaders,
        call: CallContext,
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        verb: str = scope["method"]
        path: str = scope["path"]
        if verb == "OPTIONS":  # a CORS preflight carries no credentials
            return 204, b"", self._preflight(scope)
        if verb == "POST" and self.dataplane.draining:  # requests in flight finish; no new
            raise Unavailable("the server is shutting down")
        if path.startswith("/v1/") and (verb, path) in OPENAI_ROUTES:
            self._authorize("metadata" if verb == "GET" else "inference", scope)
            return await self._openai(verb, path, scope, receive, send, headers, call)
        if verb == "GET" and not path.startswith("/v2"):  # the page and the schema: public
            if path == "/openapi.json":
                return 200, self.openapi, [(b"content-type", _JSON)]
            content, content_type = self.static.get(path)
            return 200, content, [(b"content-type", content_type), (b"cache-control", b"no-cache")]
        if verb == "POST" and (generate := match_generate(path)) is not None:
            self._authorize("inference", scope)
            model, version, streaming = generate
            body = await self._read_body(scope, receive, headers)
            started = time.perf_counter_ns()
            request = self.generate.decode(body, model, version)
            if self.header_forward is not None:
                self.header_forward.add_to(request.parameters, asgi_headers(scope["headers"]))
            tracing = self.dataplane.tracing
            if tracing is not None and (
                trace := tracing.start_call(_GENERATE_SPAN, {"http.request.method": "POST"}, model)
            ):
                trace.child("decode", started, time.perf_counter_ns())
                request.trace = trace
            if not streaming:
                payload = await _unless_disconnected(self.generate.one(request), scope, receive)
                return 200, payload, [(b"content-type", _JSON)]
            common = self._common_headers(headers, call)
            await _unless_disconnected(self.generate.events(request, send, common), scope, receive)
            return _SENT, b"", []
        route, params = self.router.match(verb, path)
        self._authorize(RPC_GROUPS[route.method.name], scope)
        body = await self._read_body(scope, receive, headers)
        if route.method.name == "ModelInfer":
            return await self._infer(params, body, headers, scope, receive)
        return await self._call(route, params, body)

    def _authorize(self, group: str, scope: Scope) -> None:
        """Access control, before the body is read (see transport/access.py)."""
        policy = self.policy
        if policy is None:
            return
        headers = policy.asgi_headers(scope["headers"])
        policy.check(group, headers, "http", f"{scope['method']} {scope['path']}")

    async def _openai(
        self,
        verb: str,
        path: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: RequestHeaders,
        call: CallContext,
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        if verb == "GET":
            return self.openai.models()
        body = await self._read_body(scope, receive, headers)
        common = self._common_headers(headers, call)
        answer = await _unless_disconnected(
            self.openai.complete(body, path.endswith("/chat/completions"), send, common),
            scope,
            receive,
        )
        return answer if answer is not None else (_SENT, b"", [])

    def _preflight(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        requested = b""
        for key, value in scope["headers"]:
            if key == b"access-control-request-headers":
                requested = value
        return [
            (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
            (b"access-control-allow-headers", requested or b"content-type"),
            (b"access-control-max-age", b"600"),
        ]

    async def _read_body(self, scope: Scope, receive: Receive, headers: RequestHeaders) -> bytes:
        connection = _connection(scope)
        body = connection.body(scope) if connection is not None else None
        if body is None:
            self._check_length(headers)
            body = await _received_body(receive, self.max_body_bytes)
        return self._checked_body(body, headers)

    def _check_length(self, headers: RequestHeaders) -> None:
        """Refuse a body by its Content-Length, before reading it."""
        if headers.content_length > self.max_body_bytes:
            raise PayloadTooLarge(
                f"request body of {headers.content_length} bytes exceeds the limit of "
                f"{self.max_body_bytes} bytes (--http-max-body-bytes)"
            )

    def _checked_body(self, body: bytes, headers: RequestHeaders) -> bytes:
        """A body that has arrived, within the limit and inflated."""
        self._check_length(headers)
        limit = self.max_body_bytes
        if len(body) > limit:  # only a chunked body can outgrow its (absent) Content-Length
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        if headers.content_encoding:
            body = _decompress(body, headers.content_encoding, limit)
        return body

    async def _infer(
        self,
        params: dict[str, str],
        body: bytes,
        headers: RequestHeaders,
        scope: Scope,
        receive: Receive,
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        model, version = params["model_name"], params.get("model_version", "")
        tracing = self.dataplane.tracing
        if tracing is not None and (
            trace := tracing.start_call(_INFER_SPAN, {"http.request.method": "POST"}, model)
        ):
            payload, json_length = await self._traced_infer(
                trace, body, headers, model, version, scope, receive
            )
            return 200, *_infer_headers(payload, json_length, headers)
        decoded = self._decode(body, headers, model, version, scope)
        response = await _unless_disconnected(self.dataplane.infer(decoded.request), scope, receive)
        return 200, *self._infer_payload(response, decoded, headers)

    def _infer_payload(
        self, response: InferResponse, decoded: rest_codec.RestInferRequest, headers: RequestHeaders
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        payload, json_length = rest_codec.encode_infer_response(
            response,
            decoded.binary_outputs,
            decoded.binary_by_default,
            decoded.request.output_regions,
            self.dataplane.shared_memory,
        )
        return _infer_headers(payload, json_length, headers)

    def _decode(
        self, body: bytes, headers: RequestHeaders, model: str, version: str, scope: Scope
    ) -> rest_codec.RestInferRequest:
        """The infer body as a request, with the forwarded headers among its parameters."""
        decoded = rest_codec.decode_infer_request(
            body, headers.header_length, model, version, self.dataplane.shared_memory
        )
        decoded.request.protocol = "http"
        if self.header_forward is not None:
            self.header_forward.add_to(decoded.request.parameters, asgi_headers(scope["headers"]))
        return decoded

    async def _traced_infer(
        self,
        trace: RequestTrace,
        body: bytes,
        headers: RequestHeaders,
        model: str,
        version: str,
        scope: Scope,
        receive: Receive,
    ) -> tuple[bytes, int | None]:
        decoded: rest_codec.RestInferRequest | None = None

        def decode() -> InferRequest:
            nonlocal decoded
            decoded = self._decode(body, headers, model, version, scope)
            return decoded.request

        async def infer(request: InferRequest) -> InferResponse:
            return await _unless_disconnected(self.dataplane.infer(request), scope, receive)

        def encode(response: InferResponse) -> tuple[bytes, int | None]:
            assert decoded is not None
            return rest_codec.encode_infer_response(
                response,
                decoded.binary_outputs,
                decoded.binary_by_default,
                decoded.request.output_regions,
                self.dataplane.shared_memory,
            )

        return await traced_infer(trace, decode, infer, encode)

    async def _call(
        self, route: Route, params: dict[str, str], body: bytes
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        request = route.request_class()
        if route.body and body:  # an empty body is {} (tritonclient sends one); blanks are not
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise InvalidArgument(f"malformed JSON body: {exc}") from None
            if route.body != "*":  # the body is one field of the request (`body: "settings"`)
                if not isinstance(document, dict):
                    raise InvalidArgument(f"the request body must be a JSON object ({route.body})")
                document = {route.body: document}
            json_to_message(document, request)
        for name, value in params.items():
            setattr(request, name, value)
        response = await route.handler(request, None)
        if route.status_only:
            return (200 if getattr(response, route.response_body) else 400), b"", []
        if route.response_body:
            field = response.DESCRIPTOR.fields_by_name[route.response_body]
            document = field_to_json(response, field)
        else:
            document = message_to_json(response)
        return 200, orjson.dumps(document), [(b"content-type", _JSON)]


def _infer_headers(
    payload: bytes, json_length: int | None, headers: RequestHeaders
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """An inference response's body (compressed if the client asked) and its own headers."""
    if json_length is None:
        extra = [(b"content-type", _JSON)]
    else:
        extra = [
            (b"content-type", _BINARY),
            (b"inference-header-content-length", str(json_length).encode()),
        ]
    if headers.accept_encoding and len(payload) >= _COMPRESS_MIN_BYTES:
        payload = _compress(payload, headers.accept_encoding, extra)
    return payload, extra


def _error_headers(exc: TensorgateError) -> list[tuple[bytes, bytes]]:
    """The headers an error's HTTP answer carries besides its body."""
    if exc.kind.http_status in _RETRY_AFTER:
        return [(b"retry-after", b"1")]
    if isinstance(exc, NoRoute) and exc.allowed:
        return [(b"allow", ", ".join(exc.allowed).encode())]
    if isinstance(exc, PayloadTooLarge):
        return [(b"connection", b"close")]
    if exc.kind is ErrorKind.UNAUTHENTICATED:
        return [(b"www-authenticate", WWW_AUTHENTICATE.encode())]
    return []


def _compress(payload: bytes, accepted: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    if b"gzip" in accepted:
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        headers.append((b"content-encoding", b"gzip"))
    elif b"deflate" in accepted:
        compressor = zlib.compressobj(6, zlib.DEFLATED, 15)
        headers.append((b"content-encoding", b"deflate"))
    else:
        return payload
    return compressor.compress(payload) + compressor.flush()


async def _received_body(receive: Receive, limit: int) -> bytes:
    """The body through ASGI `receive()`, refused as soon as it passes `limit` bytes."""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise Disconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    chunks, size = [body], len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _connection(scope: Scope) -> HttpProtocol | None:
    """The request's connection when tensorgate's own HTTP server runs the app."""
    extensions = scope.get("extensions")
    return extensions.get(CONNECTION_EXTENSION) if extensions else None


async def _unless_disconnected(work: Awaitable[T], scope: Scope, receive: Receive) -> T:
    """Await `work`, cancelling it if the client disconnects first.

    The client's disconnect is the HTTP counterpart of a cancelled gRPC call: a request still
    queued leaves the queue and never runs. tensorgate's own server says so through a scope
    extension; under any other ASGI server a task waits in `receive()` for the disconnect.
    """
    task = asyncio.current_task()
    assert task is not None
    connection: HttpProtocol | _ReceivedDisconnect | None = _connection(scope)
    if connection is None:
        connection = _ReceivedDisconnect(receive)
    connection.cancel_on_disconnect(task)
    try:
        return await work
    except asyncio.CancelledError:
        if connection.client_gone:
            task.uncancel()
            raise Disconnected from None
        raise
    finally:
        connection.cancel_on_disconnect(None)


class _ReceivedDisconnect:
    """The disconnect extension's interface over ASGI `receive()`, for other servers."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.client_gone = False
        self._watcher: asyncio.Future[Message] | None = None
        self._task: asyncio.Task[Any] | None = None

    def cancel_on_disconnect(self, task: asyncio.Task[Any] | None) -> None:
        if task is None:
            if self._watcher is not None:
                # A disconnect that arrived just now must not cancel the task after it is done.
                self._watcher.remove_done_callback(self._on_message)
                self._watcher.cancel()
            return
        self._task = task
        self._watcher = asyncio.ensure_future(self.receive())
        self._watcher.add_done_callback(self._on_message)

    def _on_message(self, watcher: asyncio.Future[Message]) -> None:
        if (
            not watcher.cancelled()
            and watcher.exception() is None
            and watcher.result()["type"] == "http.disconnect"
            and self._task is not None
        ):
            self.client_gone = True
            self._task.cancel()
