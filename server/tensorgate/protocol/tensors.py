"""Raw tensor bytes to numpy arrays and back: the zero-copy core shared by every wire format.

Fixed-size datatypes are little-endian, row-major buffers viewed with `numpy.frombuffer`
(no copy). BYTES tensors are a sequence of elements, each a 4-byte little-endian length
followed by that many bytes.

Every decoder checks a tensor's size against `LIMITS` before it allocates anything for it:
elements per tensor (`--max-tensor-elements`) and bytes per BYTES element
(`--max-bytes-element`). A shape whose product is huge is an INVALID_ARGUMENT, never a
MemoryError.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tensorgate.errors import InvalidArgument
from tensorgate.protocol.datatypes import DataType

_LENGTH = np.dtype("<u4")


@dataclass(slots=True)
class TensorLimits:
    """What one request's tensor may hold; the server sets them from its settings at start."""

    max_elements: int = 2**31 - 1
    max_bytes_element: int = 128 * 2**20


LIMITS = TensorLimits()


def element_count(shape: Sequence[int]) -> int:
    """Number of elements in a tensor of this shape."""
    return math.prod(shape)


def check_shape(name: str, shape: Sequence[int]) -> int:
    """Reject negative dimensions and oversized tensors before anything is allocated;
    returns the element count."""
    if any(dim < 0 for dim in shape):
        raise InvalidArgument(f"input '{name}' has a negative dimension in shape {list(shape)}")
    return _counted(name, shape)


def _counted(name: str, shape: Sequence[int]) -> int:
    count = math.prod(shape)  # Python integers: a huge product does not wrap around
    # One huge dimension beside a zero is no elements, yet numpy refuses the shape.
    if count > LIMITS.max_elements or (shape and max(shape) > LIMITS.max_elements):
        raise InvalidArgument(
            f"input '{name}' has shape {list(shape)}: {count} elements, or a dimension, over "
            f"the limit of {LIMITS.max_elements} (--max-tensor-elements)"
        )
    return count


def check_bytes_element(name: str, index: int, length: int) -> None:
    """Reject a BYTES element over --max-bytes-element."""
    if length > LIMITS.max_bytes_element:
        raise InvalidArgument(
            f"input '{name}': BYTES element {index} has {length} bytes, over the limit of "
            f"{LIMITS.max_bytes_element} (--max-bytes-element)"
        )


def array_from_raw(
    name: str, raw: bytes | memoryview, datatype: DataType, shape: Sequence[int]
) -> np.ndarray:
    """View `raw` as an array of `shape`; the result shares memory with `raw` (read-only)."""
    shape = tuple(shape)
    if shape and min(shape) < 0:
        check_shape(name, shape)
    count = _counted(name, shape)
    itemsize = datatype.itemsize
    if not itemsize:  # BYTES
        return deserialize_bytes(name, raw, count).reshape(shape)
    expected = count * itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"input '{name}' has {len(raw)} bytes of raw content, but shape {list(shape)} "
            f"of {datatype.name} needs {expected}"
        )
    return np.frombuffer(raw, dtype=datatype.numpy).reshape(shape)


def array_to_raw(array: np.ndarray, datatype: DataType) -> bytes:
    """Serialize an array for the wire: one copy for fixed-size types."""
    if datatype.name == "BYTES":
        return serialize_bytes(array)
    if array.dtype != datatype.numpy:
        array = array.astype(datatype.numpy)
    return array.tobytes()  # C order, the default


# From this many bytes on, a view of an array and one copy into the message cost less than
# the array's bytes copied out first (protocol/grpc_wire.py, the REST binary outputs).
VIEW_MIN_BYTES = 64 * 1024


def array_view(array: np.ndarray, datatype: DataType) -> bytes | memoryview:
    """An array's wire bytes as a view of its memory, copied only when it is not C-contiguous
    in the wire's datatype already (BYTES tensors are serialized)."""
    if not datatype.itemsize:
        return serialize_bytes(array)
    contiguous = np.ascontiguousarray(array, dtype=datatype.numpy)
    # As bytes: a bfloat16 array has no buffer format of its own to cast from.
    return contiguous.reshape(-1).view(np.uint8).data


def deserialize_bytes(name: str, raw: bytes | memoryview, count: int) -> np.ndarray:
    """Split length-prefixed BYTES content into an object array of `count` bytes elements."""
    view = memoryview(raw)
    offset, size = 0, len(view)
    if count * 4 > size:  # every element has its length prefix: refuse before allocating
        raise InvalidArgument(
            f"input '{name}': {size} bytes of BYTES content cannot hold {count} elements "
            "(each needs a 4-byte length)"
        )
    out = np.empty(count, dtype=np.object_)
    for index in range(count):
        if offset + 4 > size:
            raise InvalidArgument(
                f"input '{name}': BYTES content ends after {index} of {count} elements "
                f"(no length prefix at offset {offset})"
            )
        length = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4
        if length > LIMITS.max_bytes_element:
            check_bytes_element(name, index, length)
        if offset + length > size:
            raise InvalidArgument(
                f"input '{name}': BYTES element {index} declares {length} bytes "
                f"but only {size - offset} remain"
            )
        out[index] = bytes(view[offset : offset + length])
        offset += length
    if offset != size:
        raise InvalidArgument(
            f"input '{name}': {size - offset} bytes left over after {count} BYTES elements"
        )
    return out


def to_bytes_element(value: object) -> bytes:
    """One BYTES element from what models return: bytes, str or a numpy scalar."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.bytes_):
        return bytes(value)
    return str(value).encode("utf-8")


def serialize_bytes(array: np.ndarray) -> bytes:
    """Length-prefix every element of a bytes/str/object array, in row-major order."""
    parts: list[bytes] = []
    for value in array.reshape(-1):
        data = to_bytes_element(value)
        parts.append(len(data).to_bytes(4, "little"))
        parts.append(data)
    return b"".join(parts)
