"""Protobuf messages to and from the JSON that KServe v2 REST and Triton's HTTP API use.

It is protobuf's JSON mapping with four differences that Triton's clients rely on: field names
stay as in the .proto (`max_batch_size`), 64-bit integers are JSON numbers rather than strings
(perf_analyzer reads `dims` and `max_batch_size` as numbers), a parameter message, one
oneof of scalars such as InferParameter, is written as its bare value (`{"priority": 1}`), and
in a map a list message, one repeated string (the trace settings' SettingValue), is written as
its one string, or as an array where it holds several or its key is in LIST_KEYS
(`{"trace_rate": "1", "trace_level": ["TIMESTAMPS"]}`); JSON null clears it (no values).
Fields without presence are always written, with their defaults, as Triton does.
"""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from tensorgate.errors import InvalidArgument

_F = FieldDescriptor
# Descriptors as Any: their stubs type every link (message_type, enum_type) as optional.
Descriptor = Any
Field = Any


def is_parameter_message(descriptor: Descriptor) -> bool:
    """A message that is nothing but one oneof of scalar fields (InferParameter and kin)."""
    return (
        len(descriptor.oneofs) == 1
        and len(descriptor.fields) == len(descriptor.oneofs[0].fields)
        and all(f.type != _F.TYPE_MESSAGE for f in descriptor.fields)
    )


# Map keys whose list message Triton always writes as an array, even with one value.
LIST_KEYS = frozenset({"trace_level"})


def is_list_message(descriptor: Descriptor) -> bool:
    """A message that is nothing but one repeated string (TraceSetting's SettingValue)."""
    fields = descriptor.fields
    return len(fields) == 1 and fields[0].is_repeated and fields[0].type == _F.TYPE_STRING


def _is_map(field: Field) -> bool:
    message = field.message_type
    return message is not None and message.GetOptions().map_entry


def _scalar(field: Field, value: Any) -> Any:
    if field.type == _F.TYPE_ENUM:
        number = field.enum_type.values_by_number.get(value)
        return number.name if number is not None else value
    if field.type == _F.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    return value


def _value(field: Field, value: Any) -> Any:
    if field.type != _F.TYPE_MESSAGE:
        return _scalar(field, value)
    if is_parameter_message(field.message_type):
        choice = value.WhichOneof(field.message_type.oneofs[0].name)
        return (
            None
            if choice is None
            else _scalar(value.DESCRIPTOR.fields_by_name[choice], getattr(value, choice))
        )
    return message_to_json(value)


def field_to_json(message: Message, field: Field) -> Any:
    """One field of `message` as JSON (maps as objects, repeated fields as arrays)."""
    value = getattr(message, field.name)
    if _is_map(field):
        value_field = field.message_type.fields_by_name["value"]
        value_type = value_field.message_type
        if value_type is not None and is_list_message(value_type):
            name = value_type.fields[0].name
            return {str(k): _list_value(str(k), getattr(v, name)) for k, v in value.items()}
        return {str(k): _value(value_field, v) for k, v in value.items()}
    if field.is_repeated:
        return [_value(field, v) for v in value]
    return _value(field, value)


def _list_value(key: str, values: Any) -> str | list[str]:
    return values[0] if len(values) == 1 and key not in LIST_KEYS else list(values)


def _list_to_proto(descriptor: Descriptor, value: Any, where: str) -> dict[str, Any]:
    """A bare string, array of strings or null as the list message."""
    if value is None:
        values = []
    elif isinstance(value, str):
        values = [value]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        values = value
    else:
        raise InvalidArgument(f"{where} must be a string, an array of strings or null")
    return {descriptor.fields[0].name: values}


def message_to_json(message: Message) -> dict[str, Any]:
    """The message as a JSON-ready dict (see the module docstring for the mapping)."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        if field.has_presence and not message.HasField(field.name):
            continue
        out[field.name] = field_to_json(message, field)
    return out


def _parameter_to_proto(descriptor: Descriptor, value: Any, where: str) -> dict[str, Any]:
    """A bare JSON value as the parameter message's matching oneof member."""
    wanted: tuple[int, ...]
    if isinstance(value, bool):
        wanted = (_F.CPPTYPE_BOOL,)
    elif isinstance(value, int):
        wanted = (_F.CPPTYPE_INT64, _F.CPPTYPE_UINT64, _F.CPPTYPE_UINT32, _F.CPPTYPE_INT32)
        if value < 0:
            wanted = (_F.CPPTYPE_INT64, _F.CPPTYPE_INT32)
    elif isinstance(value, float):
        wanted = (_F.CPPTYPE_DOUBLE, _F.CPPTYPE_FLOAT)
    elif isinstance(value, str):
        wanted = (_F.CPPTYPE_STRING,)
    else:
        raise InvalidArgument(f"{where} must be a boolean, number or string")
    for cpp_type in wanted:
        for field in descriptor.fields:
            if field.cpp_type == cpp_type:
                return {field.name: value}
    raise InvalidArgument(f"{where}: a {type(value).__name__} is not accepted here")


def _to_proto_json(descriptor: Descriptor, doc: Any, where: str) -> Any:
    """Rewrite bare parameter values into protobuf's JSON form, recursively."""
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{where} must be a JSON object")
    out = dict(doc)
    for key, value in doc.items():
        field = descriptor.fields_by_name.get(key)
        if field is not None and field.type == _F.TYPE_BYTES and isinstance(value, dict):
            # Triton's HTTP API wraps base64 bytes as {"b64": "..."} (CUDA IPC handles).
            if set(value) != {"b64"} or not isinstance(value["b64"], str):
                raise InvalidArgument(f'{where}.{key} must be base64 text or {{"b64": text}}')
            out[key] = value["b64"]
            continue
        if field is None or field.type != _F.TYPE_MESSAGE:
            continue
        inner = field.message_type
        if _is_map(field):
            value_type = inner.fields_by_name["value"].message_type
            if value_type is not None and isinstance(value, dict):
                convert = (
                    _parameter_to_proto
                    if is_parameter_message(value_type)
                    else _list_to_proto
                    if is_list_message(value_type)
                    else _to_proto_json
                )
                out[key] = {
                    k: convert(value_type, v, f"{where}.{key}.{k}") for k, v in value.items()
                }
        elif field.is_repeated and isinstance(value, list):
            out[key] = [
                _to_proto_json(inner, v, f"{where}.{key}[{i}]") for i, v in enumerate(value)
            ]
        elif value is not None:
            out[key] = _to_proto_json(inner, value, f"{where}.{key}")
    return out


def json_to_message(doc: Any, message: Message) -> None:
    """Fill `message` from a JSON document; unknown fields and wrong types are INVALID_ARGUMENT."""
    descriptor = message.DESCRIPTOR
    try:
        json_format.ParseDict(_to_proto_json(descriptor, doc, "the request body"), message)
    except json_format.ParseError as exc:
        raise InvalidArgument(f"invalid {descriptor.name}: {exc}") from None
