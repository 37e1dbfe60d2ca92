"""Join requests into one batch along the batch dimension, and split the outputs back.

Runs where the batch runs: on its instance's thread, or on the event loop for `inline`. A
batch of one request passes its arrays through untouched; otherwise inputs are concatenated
(the one copy batching needs), large ones into buffers the instance reuses from batch to
batch, and each request gets row-slice views of the outputs, never copies.
"""

from __future__ import annotations

import math

import numpy as np

from tensorgate.dataplane.types import Array
from tensorgate.errors import ModelExecutionError

# Smaller inputs are concatenated into a new array: for them a reused buffer saves no page
# faults, and costs more than it saves (the buffer's bookkeeping, and checking the outputs
# against it: 8 and 3 µs against 5 µs for four requests of add_sub's two 64-byte inputs).
STAGED_MIN_BYTES = 64 * 1024


class Staging:
    """One instance's reusable input buffers; touched only from that instance's thread.

    A fresh multi-megabyte array per batch costs page faults on every batch (a mobilenet
    batch of 4 spent ~2.5 ms in `compute_input`); reusing the buffer leaves only the copy.
    The model sees the batch only while it executes: an output that aliases a buffer (a
    model returning its input) is copied out before the buffer can be reused.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}
        self._staged = False  # whether the last merge used a buffer

    def merge(self, requests: list[dict[str, Array]]) -> dict[str, Array]:
        """One input dict whose arrays stack the requests' arrays on dimension 0."""
        self._staged = False
        if len(requests) == 1:
            return requests[0]
        merged: dict[str, Array] = {}
        for name in requests[0]:
            parts = [r[name] for r in requests]
            first = parts[0]
            if first.dtype.hasobject:  # BYTES: arrays of references, nothing to stage
                merged[name] = np.concatenate(parts)
                continue
            shape = (sum(p.shape[0] for p in parts), *first.shape[1:])
            size = math.prod(shape)
            if size * first.itemsize < STAGED_MIN_BYTES:
                merged[name] = np.concatenate(parts)
                continue
            self._staged = True
            buffer = self._buffers.get(name)
            if buffer is None or buffer.dtype != first.dtype or buffer.size < size:
                buffer = self._buffers[name] = np.empty(size, dtype=first.dtype)
            merged[name] = np.concatenate(parts, out=buffer[:size].reshape(shape))
        return merged

    def detach(self, outputs: dict[str, Array]) -> dict[str, Array]:
        """Outputs that do not share memory with the staging buffers.

        `may_share_memory` compares address ranges only; an output it cannot clear is
        copied, which is never wrong. `shares_memory`'s exact answer cost more per batch than
        the rare needless copy.
        """
        if not self._staged:
            return outputs
        buffers = self._buffers.values()
        return {
            name: array.copy()
            if isinstance(array, np.ndarray) and any(np.may_share_memory(array, b) for b in buffers)
            else array
            for name, array in outputs.items()
        }


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
