"""The HTTP route table, read from the google.api.http options of the services in protos/.

Each binding of an annotated RPC (the rule and its additional_bindings) becomes one route: a
verb, a path template whose `{field}` segments fill fields of the request message, whether the
JSON body fills the rest (`body: "*"`), and which response field is the HTTP body
(`response_body`). Nothing here names an RPC: annotating a new one adds its route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from google.api import annotations_pb2, http_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor

from tensorgate.errors import ErrorKind, TensorgateError

Handler = Callable[[Any, Any], Awaitable[Any]]
_VERBS = ("get", "put", "post", "delete", "patch")


class NoRoute(TensorgateError):
    """No route has this path (404), or none with this method (405)."""

    def __init__(self, message: str, allowed: tuple[str, ...] = ()) -> None:
        super().__init__(message, ErrorKind.METHOD_NOT_ALLOWED if allowed else ErrorKind.NOT_FOUND)
        self.allowed = allowed


@dataclass(frozen=True, slots=True)
class Route:
    """One HTTP binding of one RPC."""

    verb: str  # upper case, e.g. "GET"
    template: str  # e.g. "/v2/models/{name}/ready"
    method: MethodDescriptor
    handler: Handler
    request_class: Any
    body: str  # "*": the JSON body fills the request message; a field name: fills that field
    response_body: str  # field of the response that is the HTTP body; "": the whole message
    segments: tuple[str, ...]  # literal segments, and "{field}" for variables
    operation_id: str
    # A bool response body is answered by status: 200 when true, 400 when false.
    status_only: bool

    @property
    def variables(self) -> list[str]:
        return [s[1:-1] for s in self.segments if s.startswith("{")]

    def literal_count(self) -> int:
        return sum(1 for s in self.segments if not s.startswith("{"))


def _rules(method: MethodDescriptor) -> list[http_pb2.HttpRule]:
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return []
    rule = options.Extensions[annotations_pb2.http]
    return [rule, *rule.additional_bindings]


def _route(
    method: MethodDescriptor, rule: http_pb2.HttpRule, handler: Handler, index: int
) -> Route:
    verb = rule.WhichOneof("pattern")
    if verb not in _VERBS:
        raise ValueError(f"{method.full_name}: unsupported HTTP pattern {verb!r}")
    template = getattr(rule, verb)
    segments = tuple(template.strip("/").split("/"))
    for segment in segments:
        if segment.startswith("{") and segment[1:-1] not in method.input_type.fields_by_name:
            raise ValueError(f"{method.full_name}: {template} binds unknown field {segment}")
    return Route(
        verb=verb.upper(),
        template=template,
        method=method,
        handler=handler,
        request_class=message_factory.GetMessageClass(method.input_type),
        body=rule.body,
        response_body=rule.response_body,
        segments=segments,
        operation_id=method.name if index == 0 else f"{method.name}_{index}",
        status_only=bool(rule.response_body)
        and method.output_type.fields_by_name[rule.response_body].type == FieldDescriptor.TYPE_BOOL,
    )


_MATCHES_KEPT = 256


class Router:
    """Finds the route for a request; a literal segment wins over a variable one."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = sorted(routes, key=lambda r: (len(r.segments), -r.literal_count()))
        self._by_length: dict[int, list[Route]] = {}
        for route in self.routes:
            self._by_length.setdefault(len(route.segments), []).append(route)
        # Clients repeat a few paths (one model's infer) endlessly: remember the answers.
        self._matched: dict[tuple[str, str], tuple[Route, dict[str, str]]] = {}

    def match(self, verb: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route and its bound path fields; the caller must not modify the fields."""
        hit = self._matched.get((verb, path))
        if hit is not None:
            return hit
        hit = self._match(verb, path)
        if len(self._matched) >= _MATCHES_KEPT:
            self._matched.clear()
        self._matched[verb, path] = hit
        return hit

    def _match(self, verb: str, path: str) -> tuple[Route, dict[str, str]]:
        parts = path.strip("/").split("/")
        allowed: list[str] = []
        for route in self._by_length.get(len(parts), ()):
            params = _bind(route.segments, parts)
            if params is None:
                continue
            if route.verb == verb:
                return route, params
            allowed.append(route.verb)
        if allowed:
            raise NoRoute(f"{verb} is not allowed on {path}", tuple(sorted(set(allowed))))
        raise NoRoute(f"no route for {path}")


def _bind(segments: tuple[str, ...], parts: list[str]) -> dict[str, str] | None:
    params: dict[str, str] = {}
    for segment, part in zip(segments, parts, strict=True):
        if segment.startswith("{"):
            if not part:
                return None
            params[segment[1:-1]] = unquote(part)
        elif segment != part:
            return None
    return params


def build_routes(services: Iterable[tuple[ServiceDescriptor, object]]) -> Router:
    """Routes for every annotated RPC of each (service, servicer) pair."""
    routes: list[Route] = []
    for service, servicer in services:
        for method in service.methods:
            if method.client_streaming or method.server_streaming:
                continue
            for index, rule in enumerate(_rules(method)):
                routes.append(_route(method, rule, getattr(servicer, method.name), index))
    return Router(routes)
