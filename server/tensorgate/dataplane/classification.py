"""Triton's classification extension: an output asked for with `classification: N` comes back
as its top N classes instead of its values.

Each row of the output (each batch entry of a batching model, else the whole tensor) becomes
N BYTES elements "<value>:<index>[:<label>]", highest value first, where the label is line
<index> of the output's `label_filename` (a file in the model directory). Values are written
as Triton writes them: integers plainly, floats with six decimals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tensorgate_protos import model_config_pb2 as mc

from tensorgate.dataplane.types import Array, InferRequest
from tensorgate.errors import InvalidArgument, ModelLoadError

Labels = dict[str, tuple[str, ...]]  # an output's class labels, line by line, by output name

# The kinds of values that rank: integers and floats of 32 and 64 bits, as Triton's.
_RANKED = {"u", "i", "f"}


def read_labels(config: mc.ModelConfig, model_dir: Path) -> Labels:
    """Each output's labels, from its `label_filename`; a file that cannot be read fails
    the load naming it."""
    labels: Labels = {}
    for output in config.output:
        if not output.label_filename:
            continue
        path = model_dir / output.label_filename
        if path.resolve().parent != model_dir.resolve():
            raise ModelLoadError(
                f"output '{output.name}': label_filename must name a file in the model "
                f"directory, got {output.label_filename!r}"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelLoadError(
                f"output '{output.name}': cannot read label_filename {output.label_filename}: "
                f"{getattr(exc, 'strerror', None) or exc}"
            ) from None
        labels[output.name] = tuple(text.splitlines())
    return labels


def classify(request: InferRequest, output: str, count: object) -> None:
    """Record a requested output's `classification` parameter: a class count of 1 or more
    (0 asks for the output's values, as without the parameter)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise InvalidArgument(
            f"output '{output}': the classification parameter must be a whole number of "
            f"classes, got {count!r}"
        )
    if count and request.output_regions and output in request.output_regions:
        raise InvalidArgument(
            f"output '{output}': classification results cannot be written to shared memory"
        )
    if count:
        request.classifications = request.classifications or {}
        request.classifications[output] = count


def top_classes(
    name: str, array: Array, count: int, batched: bool, labels: tuple[str, ...] | None
) -> Array:
    """The output's top `count` classes per row, as a BYTES array [rows, N] (batched) or
    [N]; N is `count` or the row's element count when smaller."""
    if array.dtype.kind not in _RANKED or (array.dtype.itemsize < 4 and array.dtype.kind == "f"):
        raise InvalidArgument(
            f"output '{name}' is {array.dtype}: classification ranks integer and 32- or "
            "64-bit float outputs only"
        )
    rows = array.reshape(array.shape[0] if batched else 1, -1)
    kept = min(count, rows.shape[1])
    # A stable sort of the negated values: ties keep the lower index first.
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :kept]
    floats = array.dtype.kind == "f"
    result = np.empty((rows.shape[0], kept), dtype=np.object_)
    for r, indices in enumerate(order):
        for k, index in enumerate(indices.tolist()):
            value = rows[r, index]
            text = f"{value:f}:{index}" if floats else f"{int(value)}:{index}"
            if labels is not None and index < len(labels):
                text += f":{labels[index]}"
            result[r, k] = text.encode()
    return result if batched else result[0]
