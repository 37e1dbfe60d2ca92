"""ModelInfer messages with large tensors, read and written without protobuf's copies.

Responses: protobuf's own path copies an output three times on its way to the wire (the
array's bytes, those bytes into the message, the message into its serialized string), and
with fresh memory for each copy a 16 MB output took 13-47 ms to encode and serialize on
this project's two-core machine. Written by hand, the message's other fields are serialized
by protobuf and each raw output follows as one more `raw_output_contents` field, joined
from a view of the array's memory: one copy, about 1 ms. The wire format allows a repeated
field's entries after the message's other fields, and clients read them in order.

Requests: parsing copies each `raw_input_contents` entry into the message, and reading it
copies it again into a bytes object. A large request's top-level fields are scanned here
instead: the raw entries become views of the bytes grpc received, and protobuf parses the
rest.

Small messages keep protobuf's path, which costs less below a few tens of kilobytes.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError
from tensorgate_protos import grpc_service_pb2 as pb

from tensorgate.dataplane.shared_memory import Placement, SharedMemoryRegistry
from tensorgate.dataplane.types import InferResponse
from tensorgate.errors import InvalidArgument
from tensorgate.protocol.grpc_codec import (
    LargeInferRequest,
    encode_infer_response,
    encode_response_header,
)
from tensorgate.protocol.tensors import VIEW_MIN_BYTES, array_view

# Messages of this many bytes, or outputs of this many in all, are handled here.
WIRE_MIN_BYTES = VIEW_MIN_BYTES
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
_RAW_INPUT_FIELD = pb.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number
_INFER_RESPONSE_TAG = _tag(pb.ModelStreamInferResponse, "infer_response")


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


def encode_wire(
    response: InferResponse,
    regions: dict[str, Placement] | None = None,
    shm: SharedMemoryRegistry | None = None,
) -> WireResponse:
    """The response as a WireResponse: outputs in shared memory written there, as
    `encode_infer_response` does."""
    header = pb.ModelInferResponse()
    return WireResponse(header, encode_response_header(header, response, regions, shm, array_view))


def encode_for_wire(
    response: InferResponse,
    regions: dict[str, Placement] | None = None,
    shm: SharedMemoryRegistry | None = None,
    into: pb.ModelInferResponse | None = None,
) -> pb.ModelInferResponse | WireResponse:
    """`encode_infer_response` (into `into` where given), or a WireResponse, leaving `into`
    empty, when the outputs are large."""
    size = 0
    for array in response.outputs.values():  # a loop: no generator on every response
        size += array.nbytes
    if size >= WIRE_MIN_BYTES:
        return encode_wire(response, regions, shm)
    return encode_infer_response(response, regions, shm, into)


def parse_infer_request(data: bytes) -> pb.ModelInferRequest | LargeInferRequest:
    """A ModelInferRequest from the wire; a large one's raw inputs as views of `data`."""
    try:
        if len(data) < WIRE_MIN_BYTES:
            return _from_string(data)
        return _scan(data)
    except DecodeError as exc:
        raise InvalidArgument(f"malformed ModelInferRequest message: {exc}") from None


_from_string = pb.ModelInferRequest.FromString


def _scan(data: bytes) -> LargeInferRequest:
    """The top-level fields of a serialized ModelInferRequest: raw inputs apart, as views,
    the rest parsed by protobuf."""
    view = memoryview(data)
    kept: list[memoryview] = []  # the spans of every other field, in order
    raw: list[memoryview] = []
    position, size, run = 0, len(data), 0
    while position < size:
        start = position
        key, position = _read_varint(data, position)
        wire_type = key & 7
        if wire_type == _LENGTH_DELIMITED:
            length, position = _read_varint(data, position)
            if position + length > size:
                raise DecodeError(f"the field at byte {start} runs past the message's end")
            if key >> 3 == _RAW_INPUT_FIELD:
                if run < start:
                    kept.append(view[run:start])
                raw.append(view[position : position + length])
                position += length
                run = position
                continue
            position += length
        elif wire_type == 0:
            _, position = _read_varint(data, position)
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
        else:
            raise DecodeError(f"wire type {wire_type} at byte {start}")
    if position > size:
        raise DecodeError("truncated message")
    if run < size:
        kept.append(view[run:size])
    return LargeInferRequest(_from_string(b"".join(kept)), raw)


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if position >= len(data) or shift > 63:
            raise DecodeError(f"a truncated or overlong varint at byte {position}")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
