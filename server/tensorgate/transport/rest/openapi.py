"""The OpenAPI 3 document, generated from the same route table and message descriptors.

Every message a route reads or writes becomes a schema under components, in the JSON mapping of
messages.py. Inference is the one route whose body is not its message's JSON mapping: its
schemas are the KServe v2 REST ones, written out in INFER_SCHEMAS below.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from tensorgate import __version__
from tensorgate.transport.rest.messages import is_parameter_message
from tensorgate.transport.rest.routes import Route, Router

_F = FieldDescriptor
# Descriptors as Any: their stubs type every link (message_type, enum_type) as optional.
Descriptor = Any
Field = Any
_INTEGER = {
    _F.TYPE_INT32: ("int32", None),
    _F.TYPE_SINT32: ("int32", None),
    _F.TYPE_SFIXED32: ("int32", None),
    _F.TYPE_UINT32: ("int32", 0),
    _F.TYPE_FIXED32: ("int32", 0),
    _F.TYPE_INT64: ("int64", None),
    _F.TYPE_SINT64: ("int64", None),
    _F.TYPE_SFIXED64: ("int64", None),
    _F.TYPE_UINT64: ("int64", 0),
    _F.TYPE_FIXED64: ("int64", 0),
}
_ERROR_CODES = {
    "400": "Invalid request: wrong shape, datatype, size, name or malformed body",
    "401": "Access control: missing or invalid credentials (see WWW-Authenticate)",
    "403": "Access control: the token does not grant this endpoint's group, or the server "
    "does not allow this change",
    "404": "Unknown model, version or route",
    "405": "The route exists for another method",
    "413": "The body exceeds --http-max-body-bytes",
    "429": "The model's queue is full; retry later",
    "500": "The model failed while executing",
    "501": "Not supported by tensorgate",
    "503": "The model is unavailable, or its queue timeout expired",
    "504": "The request's deadline passed",
}

_PARAMETERS = {
    "type": "object",
    "additionalProperties": {"type": ["boolean", "number", "string"]},
}
_DATA = {
    "description": "Row-major tensor elements, flat or nested; strings for BYTES",
    "type": "array",
    "items": {},
}
# An input in a request and an output in a response have the same form.
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string"},
        "parameters": {"$ref": "#/components/schemas/Parameters"},
        "data": _DATA,
    },
}
INFER_SCHEMAS: dict[str, Any] = {
    "InferenceRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"$ref": "#/components/schemas/Parameters"},
            "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/RequestInput"}},
            "outputs": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/RequestOutput"},
            },
        },
    },
    "RequestInput": _TENSOR,
    "RequestOutput": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "parameters": {"$ref": "#/components/schemas/Parameters"},
        },
    },
    "InferenceResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"$ref": "#/components/schemas/Parameters"},
            "outputs": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/ResponseOutput"},
            },
        },
    },
    "ResponseOutput": _TENSOR,
    "Parameters": _PARAMETERS,
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
}


class SchemaBuilder:
    """JSON schemas of messages, each once under components/schemas."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = dict(INFER_SCHEMAS)

    def ref(self, descriptor: Descriptor) -> dict[str, Any]:
        name = descriptor.full_name
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: recursive messages refer back to it
            self.schemas[name] = self.message(descriptor)
        return {"$ref": f"#/components/schemas/{name}"}

    def message(self, descriptor: Descriptor, skip: frozenset[str] = frozenset()) -> Any:
        properties = {f.name: self.field(f) for f in descriptor.fields if f.name not in skip}
        return {"type": "object", "properties": properties, "additionalProperties": False}

    def request_body(self, descriptor: Descriptor, skip: frozenset[str]) -> Any:
        """A request message's schema: protobuf's JSON mapping reads null as the default."""
        schema = self.message(descriptor, skip)
        for prop in schema["properties"].values():
            if isinstance(prop.get("type"), str):
                prop["type"] = [prop["type"], "null"]
        return schema

    def field(self, field: Field) -> Any:
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            return {
                "type": "object",
                "additionalProperties": self.single(message.fields_by_name["value"]),
            }
        if field.is_repeated:
            return {"type": "array", "items": self.single(field)}
        return self.single(field)

    def single(self, field: Field) -> Any:
        if field.type == _F.TYPE_MESSAGE:
            if is_parameter_message(field.message_type):
                return {"type": ["boolean", "number", "string"]}
            return self.ref(field.message_type)
        if field.type == _F.TYPE_ENUM:
            return {"type": "string", "enum": [v.name for v in field.enum_type.values]}
        if field.type in _INTEGER:
            fmt, minimum = _INTEGER[field.type]
            schema: dict[str, Any] = {"type": "integer", "format": fmt}
            if minimum is not None:
                schema["minimum"] = minimum
            return schema
        if field.type in (_F.TYPE_DOUBLE, _F.TYPE_FLOAT):
            return {"type": "number"}
        if field.type == _F.TYPE_BOOL:
            return {"type": "boolean"}
        if field.type == _F.TYPE_BYTES:
            return {"type": "string", "format": "byte"}
        return {"type": "string"}


def _errors() -> dict[str, Any]:
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {code: {"description": text, "content": error} for code, text in _ERROR_CODES.items()}


def _infer_operation(route: Route) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "description": "JSON InferenceRequest of Inference-Header-Content-Length "
                    "bytes, then each binary input's bytes in input order",
                },
            },
        },
        "parameters": [
            {
                "name": "Inference-Header-Content-Length",
                "in": "header",
                "required": False,
                "schema": {"type": "integer", "minimum": 0},
            }
        ],
        "responses": {
            "200": {
                "description": "Outputs; with binary outputs the JSON part is followed by their "
                "bytes and its length is in Inference-Header-Content-Length",
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/InferenceResponse"}
                    },
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            **_errors(),
        },
    }


def _operation(route: Route, schemas: SchemaBuilder) -> dict[str, Any]:
    method = route.method
    if method.name == "ModelInfer":
        operation = _infer_operation(route)
    else:
        operation = {"responses": _errors()}
        if route.body:
            skip = frozenset(route.variables)
            if route.body == "*":
                body = schemas.request_body(method.input_type, skip)
            else:  # one field of the request is the whole body
                body = schemas.field(method.input_type.fields_by_name[route.body])
            operation["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": body}},
            }
        output = method.output_type
        if route.status_only:
            operation["responses"]["200"] = {"description": f"{route.response_body}: true"}
            operation["responses"]["400"] = {"description": f"{route.response_body}: false"}
        else:
            if route.response_body:
                schema = schemas.field(output.fields_by_name[route.response_body])
            else:
                schema = schemas.ref(output)
            operation["responses"]["200"] = {
                "description": output.name,
                "content": {"application/json": {"schema": schema}},
            }
    operation["operationId"] = route.operation_id
    operation["summary"] = f"{method.containing_service.name}.{method.name}"
    operation["tags"] = [method.containing_service.name]
    path_params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in route.variables
    ]
    operation["parameters"] = path_params + operation.get("parameters", [])
    return operation


def build_openapi(router: Router) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route."""
    schemas = SchemaBuilder()
    paths: dict[str, dict[str, Any]] = {}
    for route in router.routes:
        paths.setdefault(route.template, {})[route.verb.lower()] = _operation(route, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tensorgate",
            "version": __version__,
            "description": "KServe v2 REST inference protocol with Triton's extensions. "
            "Routes are generated from the google.api.http options in protos/.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": schemas.schemas},
    }
