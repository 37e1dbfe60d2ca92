"""ModelInfer responses with large outputs, serialized by hand.

protobuf's own path copies an output three times on its way to the wire (the array's
bytes, those bytes into the message, the message into its serialized string), and with
fresh memory for each copy a 16 MB output took 13-47 ms to encode and serialize on this
project's two-core machine. Written by hand, the message's other fields are serialized by
protobuf and each raw output follows as one more `raw_output_contents` field, joined from a
view of the array's memory: one copy, about 1 ms. The wire format allows a repeated field's
entries after the message's other fields, and clients read them in order.

Small responses keep protobuf's path, which costs less below a few tens of kilobytes.
"""

from __future__ import annotations

import numpy as np
from tensorgate_protos import grpc_service_pb2 as pb

from tensorgate.dataplane.shared_memory import Placement, SharedMemoryRegistry
from tensorgate.dataplane.types import InferResponse
from tensorgate.protocol import datatypes
from tensorgate.protocol.grpc_codec import encode_infer_response, encode_response_header
from tensorgate.protocol.tensors import serialize_bytes

# Outputs of this many bytes in all, or more, are serialized by hand.
WIRE_MIN_BYTES = 64 * 1024
_LENGTH_DELIMITED = 2


def _tag(message: type, field: str) -> bytes:
    number = message.DESCRIPTOR.fields_by_name[field].number  # type: ignore[attr-defined]
    return _varint(number << 3 | _LENGTH_DELIMITED)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_RAW_OUTPUT_TAG = _tag(pb.ModelInferResponse, "raw_output_contents")
_INFER_RESPONSE_TAG = _tag(pb.ModelStreamInferResponse, "infer_response")


def _raw_view(array: np.ndarray, datatype: datatypes.DataType) -> bytes | memoryview:
    """The array's memory as it goes on the wire, copied only when not C-contiguous in the
    wire's datatype already."""
    if not datatype.itemsize:  # BYTES: length-prefixed elements
        return serialize_bytes(array)
    contiguous = np.ascontiguousarray(array, dtype=datatype.numpy)
    # As bytes: a bfloat16 array has no buffer format of its own to cast from.
    return contiguous.reshape(-1).view(np.uint8).data


class WireResponse:
    """A ModelInferResponse to serialize by hand: `header` holds every field but the raw
    outputs, which follow it in `raw`. grpc calls `SerializeToString` as it would on the
    message."""

    __slots__ = ("header", "raw")

    def __init__(self, header: pb.ModelInferResponse, raw: list[bytes | memoryview]) -> None:
        self.header = header
        self.raw = raw

    def parts(self) -> list[bytes | memoryview]:
        parts: list[bytes | memoryview] = [self.header.SerializeToString()]
        for raw in self.raw:
            parts += (_RAW_OUTPUT_TAG, _varint(len(raw)), raw)
        return parts

    def SerializeToString(self) -> bytes:
        return b"".join(self.parts())


class WireStreamResponse:
    """A ModelStreamInferResponse whose `infer_response` is a WireResponse."""

    __slots__ = ("response",)

    def __init__(self, response: WireResponse) -> None:
        self.response = response

    def SerializeToString(self) -> bytes:
        inner = self.response.parts()
        size = sum(len(part) for part in inner)
        return b"".join([_INFER_RESPONSE_TAG, _varint(size), *inner])


def is_large(response: InferResponse) -> bool:
    """Whether the response's outputs are worth serializing by hand."""
    size = 0
    for array in response.outputs.values():  # a loop: no generator on every response
        size += array.nbytes
    return size >= WIRE_MIN_BYTES


def encode_wire(
    response: InferResponse,
    regions: dict[str, Placement] | None = None,
    shm: SharedMemoryRegistry | None = None,
) -> WireResponse:
    """The response as a WireResponse: outputs in shared memory written there, as
    `encode_infer_response` does."""
    header = pb.ModelInferResponse()
    return WireResponse(header, encode_response_header(header, response, regions, shm, _raw_view))


def encode_for_wire(
    response: InferResponse,
    regions: dict[str, Placement] | None = None,
    shm: SharedMemoryRegistry | None = None,
) -> pb.ModelInferResponse | WireResponse:
    """`encode_infer_response`, serialized by hand when the outputs are large."""
    if is_large(response):
        return encode_wire(response, regions, shm)
    return encode_infer_response(response, regions, shm)
