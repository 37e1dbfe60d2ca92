"""Fuzzing the parsers that read what clients send: the gRPC request decoder, the REST JSON
and binary-tensor parser, and the config.pbtxt reader.

The property everywhere: whatever the bytes, the parser either succeeds with arrays that
match their declared shapes, or raises a TensorgateError (which the transports answer with
a precise status). Anything else would reach a client as INTERNAL.
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st
from tensorgate.dataplane.validation import validate_request
from tensorgate.errors import ModelLoadError, TensorgateError
from tensorgate.protocol import grpc_codec, rest_codec
from tensorgate.protocol.datatypes import BY_NAME
from tensorgate.repository.config import ModelSpec, parse_config
from tensorgate.repository.support import check_supported
from tensorgate_protos import grpc_service_pb2 as pb

DATATYPES = [*BY_NAME, "FLOAT32", "", "BYTES\x00"]
SHAPES = st.lists(
    st.one_of(st.integers(-2, 6), st.sampled_from([2**31, 2**40, 2**63 - 1])), max_size=4
)
SPEC = ModelSpec.from_config(
    parse_config(
        'name: "m" max_batch_size: 8 '
        'input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }, '
        '{ name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] }] '
        'output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }]'
    )
)


def _consistent(request: Any) -> None:
    for name, array in request.inputs.items():
        assert isinstance(array, np.ndarray), name
    with contextlib.suppress(TensorgateError):
        validate_request(request, SPEC)


@st.composite
def infer_requests(draw: st.DrawFn) -> bytes:
    message = pb.ModelInferRequest(model_name=draw(st.text(max_size=8)))
    raw = draw(st.booleans())
    for index in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(["INPUT0", "TEXT", "X", f"I{index}"]))
        datatype = draw(st.sampled_from(DATATYPES))
        tensor = message.inputs.add(name=name, datatype=datatype, shape=draw(SHAPES))
        if raw:
            message.raw_input_contents.append(draw(st.binary(max_size=64)))
        elif draw(st.booleans()):
            field = draw(
                st.sampled_from(
                    ["fp32_contents", "int_contents", "bytes_contents", "bool_contents"]
                )
            )
            values = {
                "fp32_contents": st.lists(st.floats(width=32), max_size=8),
                "int_contents": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8),
                "bytes_contents": st.lists(st.binary(max_size=8), max_size=8),
                "bool_contents": st.lists(st.booleans(), max_size=8),
            }[field]
            getattr(tensor.contents, field).extend(draw(values))
    if draw(st.booleans()):
        message.parameters["priority"].int64_param = draw(st.integers(-5, 5))
    for name in draw(st.lists(st.sampled_from(["OUTPUT0", "nope"]), max_size=2)):
        message.outputs.add(name=name)
    encoded = message.SerializeToString()
    if draw(st.booleans()):  # mutate the wire bytes too
        cut = draw(st.integers(0, len(encoded)))
        encoded = encoded[:cut] + draw(st.binary(max_size=8))
    return encoded


def _zero_beside_a_huge_dimension() -> bytes:
    """Found by fuzzing: no elements, yet numpy cannot make the shape (was a ValueError)."""
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="INPUT0", datatype="FP32", shape=[0, 2**63 - 1])
    return message.SerializeToString()


@given(infer_requests())
@example(b"\x0a\xff\xff\xff\xff\x0f")
@example(_zero_beside_a_huge_dimension())
def test_grpc_requests_decode_or_fail_with_a_precise_error(wire: bytes) -> None:
    try:
        message = pb.ModelInferRequest.FromString(wire)
    except Exception:  # the handler answers this INVALID_ARGUMENT (transport/grpc/handlers)
        return
    try:
        request = grpc_codec.decode_infer_request(message)
    except TensorgateError:
        return
    _consistent(request)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def rest_bodies(draw: st.DrawFn) -> tuple[bytes, int | None]:
    inputs = []
    binary = b""
    for _ in range(draw(st.integers(0, 3))):
        tensor: dict[str, Any] = {
            "name": draw(st.sampled_from(["INPUT0", "TEXT", "X"])),
            "datatype": draw(st.sampled_from(DATATYPES)),
            "shape": draw(st.one_of(SHAPES, JSON_VALUES)),
        }
        if draw(st.booleans()):
            chunk = draw(st.binary(max_size=48))
            size = draw(st.one_of(st.just(len(chunk)), st.integers(-4, 80), JSON_VALUES))
            tensor["parameters"] = {"binary_data_size": size}
            binary += chunk
        else:
            tensor["data"] = draw(JSON_VALUES)
        inputs.append(tensor)
    document: Any = {"inputs": inputs}
    if draw(st.booleans()):
        document["outputs"] = draw(JSON_VALUES)
    if draw(st.booleans()):
        document["parameters"] = draw(JSON_VALUES)
    if draw(st.integers(0, 9)) == 0:
        document = draw(JSON_VALUES)
    header = json.dumps(document).encode()
    body = header + binary
    if draw(st.booleans()):  # truncated or padded
        cut = draw(st.integers(0, len(body)))
        body = body[:cut] + draw(st.binary(max_size=6))
    length = draw(st.one_of(st.none(), st.just(len(header)), st.integers(-3, len(body) + 3)))
    return body, length


@given(rest_bodies())
@example(  # found by fuzzing: the binary fast path made numpy refuse the shape (ValueError)
    (
        b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [0, 9223372036854775807], '
        b'"parameters": {"binary_data_size": 0}}]}',
        None,
    )
)
@example(
    (
        b'{"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1073741824], '
        b'"parameters": {"binary_data_size": 5}}]}\x01\x00\x00\x00a',
        104,
    )
)
def test_rest_bodies_decode_or_fail_with_a_precise_error(case: tuple[bytes, int | None]) -> None:
    body, header_length = case
    try:
        decoded = rest_codec.decode_infer_request(body, header_length, "m", "")
    except TensorgateError:
        return
    _consistent(decoded.request)
    for array in decoded.request.inputs.values():
        assert array.size == math.prod(array.shape)


PBTXT_PIECES = st.sampled_from(
    [
        'name: "m"',
        "max_batch_size: 4",
        "max_batch_size: -1",
        'backend: "onnxruntime"',
        'platform: "ensemble"',
        "input [",
        "output [",
        "]",
        "{",
        "}",
        ",",
        'name: "INPUT0"',
        "data_type: TYPE_FP32",
        "data_type: TYPE_STRING",
        "dims: [ 4 ]",
        "dims: [ -1, 2 ]",
        "dims: [ -5 ]",
        "dynamic_batching { }",
        "dynamic_batching { max_queue_delay_microseconds: 100 }",
        "sequence_batching { }",
        "instance_group [ { count: 2 kind: KIND_CPU } ]",
        'parameters { key: "model_timeout" value { string_value: "x" } }',
        "model_transaction_policy { decoupled: true }",
        "optional: true",
        "reshape { shape: [ 1 ] }",
        "ensemble_scheduling { step [ ] }",
        "response_cache { enable: true }",
        "\x00",
        '"',
    ]
)


@given(st.lists(PBTXT_PIECES, max_size=20).map(" ".join) | st.text(max_size=80))
def test_config_text_parses_or_fails_the_load_with_a_reason(text: str) -> None:
    try:
        config = parse_config(text)
        check_supported(config)
        ModelSpec.from_config(config)
    except ModelLoadError:
        return
