"""Join requests into one batch along the batch dimension, and split the outputs back.

Runs on the instance's thread, not the event loop. A batch of one request passes its arrays
through untouched; otherwise inputs are concatenated (the one copy batching needs) and each
request gets row-slice views of the outputs, never copies.
"""

from __future__ import annotations

import numpy as np

from tensorgate.dataplane.types import Array
from tensorgate.errors import ModelExecutionError


def merge_inputs(requests: list[dict[str, Array]]) -> dict[str, Array]:
    """One input dict whose arrays stack the requests' arrays on dimension 0."""
    if len(requests) == 1:
        return requests[0]
    return {name: np.concatenate([r[name] for r in requests]) for name in requests[0]}


def split_outputs(outputs: dict[str, Array], rows: list[int]) -> list[dict[str, Array]]:
    """Per request, views of the rows it contributed to the batch."""
    if len(rows) == 1:
        return [outputs]
    total = sum(rows)
    parts: list[dict[str, Array]] = [{} for _ in rows]
    for name, array in outputs.items():
        array = np.asarray(array)
        if array.ndim == 0 or array.shape[0] != total:
            raise ModelExecutionError(
                f"output '{name}' has shape {list(array.shape)} for a batch of {total} rows; "
                "a batching model must return one row per input row"
            )
        start = 0
        for part, count in zip(parts, rows, strict=True):
            part[name] = array[start : start + count]
            start += count
    return parts
