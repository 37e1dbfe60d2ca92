"""Triton's `reshape`: a tensor's shape as clients see it (`dims`) against the shape the
model file takes or gives (`reshape { shape }`), both without the batch dimension.

An input arrives in `dims` and reaches the model in the reshape; an output leaves the model
in the reshape and reaches the client in `dims`. The elements and their order stay as they
are: a reshape is a numpy view, never a copy. A variable dimension (-1) is found from the
element count when the target has one; with several, the target's take the source's
variable sizes in order.
"""

from __future__ import annotations

import math

from tensorgate.dataplane.types import Array
from tensorgate.errors import ModelLoadError


def check_reshape(kind: str, name: str, dims: tuple[int, ...], shape: tuple[int, ...]) -> None:
    """Refuse, at load, a reshape that cannot hold what `dims` allows."""
    where = f"{kind} '{name}': reshape {list(shape)} of dims {list(dims)}"
    if any(d < -1 or d == 0 for d in shape):
        raise ModelLoadError(f"{where}: sizes must be positive or -1")
    dims_variable, shape_variable = dims.count(-1), shape.count(-1)
    if dims_variable and not shape_variable:
        raise ModelLoadError(f"{where}: dims have a variable size, so the reshape needs one")
    if shape_variable > 1 and shape_variable != dims_variable:
        raise ModelLoadError(
            f"{where}: with more than one variable size, the reshape needs as many as dims"
        )
    if not dims_variable and not shape_variable and math.prod(dims) != math.prod(shape):
        raise ModelLoadError(f"{where}: the element counts differ")


def reshaped(
    array: Array, source: tuple[int, ...], target: tuple[int, ...], batched: bool
) -> Array:
    """`array`, whose shape is `source` (after the batch dimension when `batched`), as
    `target`. Raises ValueError when the sizes cannot match."""
    shape = array.shape[1:] if batched else array.shape
    if target.count(-1) > 1:
        sizes = iter(n for d, n in zip(source, shape, strict=True) if d == -1)
        target = tuple(next(sizes) if d == -1 else d for d in target)
    lead = (array.shape[0],) if batched else ()
    if -1 in target and not array.size:  # numpy cannot infer a size from zero elements
        target = tuple(0 if d == -1 else d for d in target)
    return array.reshape(lead + target)
