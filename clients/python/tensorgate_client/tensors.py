"""numpy arrays to and from the protocol's raw tensor bytes, by v2 datatype."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

# v2 datatype -> numpy dtype (little-endian, as the protocol's raw contents are).
_NUMPY: dict[str, Any] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_BY_KIND = {(d.kind, d.itemsize): name for name, d in _NUMPY.items()}


def _bf16() -> Any:
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - depends on the extra
        raise TypeError(
            "BF16 tensors need ml_dtypes: pip install 'tensorgate-client[bf16]'"
        ) from None
    return np.dtype(ml_dtypes.bfloat16)


def datatype_of(array: np.ndarray) -> str:
    """The v2 datatype for a numpy array; object and bytes/str arrays are BYTES."""
    dtype = array.dtype
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    if dtype.name == "bfloat16":
        return "BF16"
    name = _BY_KIND.get((dtype.kind, dtype.itemsize))
    if name is None:
        raise TypeError(f"no v2 datatype for numpy dtype {dtype}")
    return name


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    """Raw contents: little-endian row-major, BYTES as 4-byte length + bytes per element."""
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            data = item.encode() if isinstance(item, str) else bytes(item)
            parts.append(struct.pack("<I", len(data)))
            parts.append(data)
        return b"".join(parts)
    dtype = _bf16() if datatype == "BF16" else _NUMPY[datatype]
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def from_raw(raw: bytes | memoryview, datatype: str, shape: list[int]) -> np.ndarray:
    """An array over the raw contents (read-only, no copy) for fixed-size datatypes."""
    if datatype == "BYTES":
        items: list[bytes] = []
        view, offset = memoryview(raw), 0
        while offset < len(view):
            (length,) = struct.unpack_from("<I", view, offset)
            offset += 4
            items.append(bytes(view[offset : offset + length]))
            offset += length
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out.reshape(shape)
    dtype = _bf16() if datatype == "BF16" else _NUMPY.get(datatype)
    if dtype is None:
        raise TypeError(f"unknown datatype {datatype}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)
