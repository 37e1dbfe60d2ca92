"""Raw tensor bytes to numpy arrays and back: the zero-copy core shared by every wire format.

Fixed-size datatypes are little-endian, row-major buffers viewed with `numpy.frombuffer`
(no copy). BYTES tensors are a sequence of elements, each a 4-byte little-endian length
followed by that many bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tensorgate.errors import InvalidArgument
from tensorgate.protocol.datatypes import DataType

_LENGTH = np.dtype("<u4")


def element_count(shape: Sequence[int]) -> int:
    """Number of elements in a tensor of this shape."""
    return math.prod(shape)


def check_shape(name: str, shape: Sequence[int]) -> None:
    """Reject negative dimensions before they reach a size computation."""
    if any(dim < 0 for dim in shape):
        raise InvalidArgument(f"input '{name}' has a negative dimension in shape {list(shape)}")


def array_from_raw(
    name: str, raw: bytes | memoryview, datatype: DataType, shape: Sequence[int]
) -> np.ndarray:
    """View `raw` as an array of `shape`; the result shares memory with `raw` (read-only)."""
    shape = tuple(shape)
    if shape and min(shape) < 0:
        check_shape(name, shape)
    count = math.prod(shape)
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


def deserialize_bytes(name: str, raw: bytes | memoryview, count: int) -> np.ndarray:
    """Split length-prefixed BYTES content into an object array of `count` bytes elements."""
    out = np.empty(count, dtype=np.object_)
    view = memoryview(raw)
    offset, size = 0, len(view)
    for index in range(count):
        if offset + 4 > size:
            raise InvalidArgument(
                f"input '{name}': BYTES content ends after {index} of {count} elements "
                f"(no length prefix at offset {offset})"
            )
        length = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4
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
