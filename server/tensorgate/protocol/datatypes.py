"""The datatype table: KServe v2 names, numpy dtypes, model-config enums and typed-contents fields.

Every conversion between representations goes through this table so the mapping lives in
one place. BF16 uses `ml_dtypes.bfloat16`, since numpy has no native bfloat16.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

from tensorgate.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class DataType:
    """One row of the table."""

    name: str  # KServe v2 datatype, e.g. "FP32"
    numpy: np.dtype
    config_name: str  # model config enum name, e.g. "TYPE_FP32"
    contents_field: str | None  # InferTensorContents field; None when only raw bytes work

    # Bytes per element; 0 for BYTES, whose elements are length-prefixed.
    itemsize: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "itemsize", 0 if self.name == "BYTES" else self.numpy.itemsize)


def _row(name: str, dtype: object, config: str, field: str | None) -> DataType:
    return DataType(name, np.dtype(dtype), config, field)  # type: ignore[call-overload]


_ROWS = (
    _row("BOOL", np.bool_, "TYPE_BOOL", "bool_contents"),
    _row("UINT8", np.uint8, "TYPE_UINT8", "uint_contents"),
    _row("UINT16", np.uint16, "TYPE_UINT16", "uint_contents"),
    _row("UINT32", np.uint32, "TYPE_UINT32", "uint_contents"),
    _row("UINT64", np.uint64, "TYPE_UINT64", "uint64_contents"),
    _row("INT8", np.int8, "TYPE_INT8", "int_contents"),
    _row("INT16", np.int16, "TYPE_INT16", "int_contents"),
    _row("INT32", np.int32, "TYPE_INT32", "int_contents"),
    _row("INT64", np.int64, "TYPE_INT64", "int64_contents"),
    _row("FP16", np.float16, "TYPE_FP16", None),
    _row("FP32", np.float32, "TYPE_FP32", "fp32_contents"),
    _row("FP64", np.float64, "TYPE_FP64", "fp64_contents"),
    _row("BF16", ml_dtypes.bfloat16, "TYPE_BF16", None),
    _row("BYTES", np.object_, "TYPE_STRING", "bytes_contents"),
)

BY_NAME: dict[str, DataType] = {row.name: row for row in _ROWS}
BY_CONFIG_NAME: dict[str, DataType] = {row.config_name: row for row in _ROWS}
_BY_NUMPY: dict[np.dtype, DataType] = {row.numpy: row for row in _ROWS}


def from_name(name: str) -> DataType:
    """Look up a v2 datatype name, rejecting unknown names with the list of valid ones."""
    row = BY_NAME.get(name)
    if row is None:
        raise InvalidArgument(f"unknown datatype '{name}'; expected one of {', '.join(BY_NAME)}")
    return row


def from_config_name(config_name: str) -> DataType:
    """Look up a model-config enum name such as TYPE_FP32."""
    row = BY_CONFIG_NAME.get(config_name)
    if row is None:
        raise InvalidArgument(f"unsupported model config data_type '{config_name}'")
    return row


def from_numpy(dtype: np.dtype) -> DataType:
    """Datatype of a numpy array; strings and bytes of any width map to BYTES."""
    if dtype.kind in ("S", "U", "O"):
        return BY_NAME["BYTES"]
    row = _BY_NUMPY.get(dtype)
    if row is None:
        raise InvalidArgument(f"numpy dtype {dtype} has no KServe v2 datatype")
    return row
