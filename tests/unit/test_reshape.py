"""Triton's reshape: which reshapes load, and how arrays move between the two shapes."""

from __future__ import annotations

import numpy as np
import pytest
from tensorgate.backends.base import ModelSignature, TensorSignature
from tensorgate.dataplane.reshape import check_reshape, reshaped
from tensorgate.dataplane.types import InferRequest
from tensorgate.dataplane.validation import reshape_inputs, validate_request
from tensorgate.errors import InvalidArgument, ModelLoadError
from tensorgate.repository.autocomplete import complete_config
from tensorgate.repository.config import ModelSpec, parse_config


@pytest.mark.parametrize(
    ("dims", "shape", "reason"),
    [
        ((4,), (3,), "the element counts differ"),
        ((-1, 4), (8,), "dims have a variable size, so the reshape needs one"),
        ((-1, 4), (-1, -1), "the reshape needs as many as dims"),
        ((4,), (0, 4), "sizes must be positive or -1"),
    ],
)
def test_a_reshape_that_cannot_hold_the_dims_fails_the_load(
    dims: tuple[int, ...], shape: tuple[int, ...], reason: str
) -> None:
    with pytest.raises(ModelLoadError, match=reason):
        check_reshape("input", "X", dims, shape)


@pytest.mark.parametrize(
    ("dims", "shape"),
    [((1,), ()), ((4,), (2, 2)), ((-1, 4), (-1,)), ((-1, 3, -1), (-1, -1, 3)), ((6,), (-1, 2))],
)
def test_reshapes_that_keep_the_elements_load(
    dims: tuple[int, ...], shape: tuple[int, ...]
) -> None:
    check_reshape("input", "X", dims, shape)


def test_a_batched_reshape_keeps_the_batch_and_is_a_view() -> None:
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    model = reshaped(rows, (4,), (2, 2), batched=True)
    assert model.shape == (3, 2, 2)
    assert np.shares_memory(model, rows)
    assert reshaped(np.ones((5, 1)), (1,), (), batched=True).shape == (5,)
    assert reshaped(np.ones((5,)), (), (1,), batched=True).shape == (5, 1)


def test_variable_sizes_are_inferred_or_taken_in_order() -> None:
    assert reshaped(np.ones((2, 3, 4)), (-1, 4), (-1,), batched=True).shape == (2, 12)
    # Several variable sizes: the target's take the source's, in order.
    array = np.ones((1, 5, 3, 7))
    assert reshaped(array, (-1, 3, -1), (-1, -1, 3), batched=True).shape == (1, 5, 7, 3)
    assert reshaped(np.ones((0, 4)), (-1, 4), (-1,), batched=False).shape == (0,)
    with pytest.raises(ValueError):
        reshaped(np.ones((2, 5)), (5,), (2, 2), batched=True)


CONFIG = """
max_batch_size: 8
input [{ name: "X", data_type: TYPE_FP32, dims: [ 4 ], reshape { shape: [ 2, 2 ] } },
       { name: "Z", data_type: TYPE_FP32, dims: [ 2 ], reshape { shape: [ 2 ] } }]
output [{ name: "Y", data_type: TYPE_FP32, dims: [ 1 ], reshape { shape: [ ] } }]
"""


def test_the_data_plane_gives_the_model_the_reshaped_inputs() -> None:
    spec = ModelSpec.from_config(parse_config(CONFIG))
    # A reshape equal to dims changes nothing, so it is not kept.
    assert [t.name for t in spec.reshaped_inputs] == ["X"]
    x = np.zeros((3, 4), dtype=np.float32)
    request = InferRequest(
        "m",
        inputs={"X": x, "Z": np.zeros((3, 2), dtype=np.float32)},
        datatypes={"X": "FP32", "Z": "FP32"},
    )
    assert validate_request(request, spec) == 3
    reshape_inputs(request, spec)
    assert request.inputs["X"].shape == (3, 2, 2)
    assert request.inputs["Z"].shape == (3, 2)


def test_the_model_files_shape_is_checked_against_the_reshape() -> None:
    signature = ModelSignature(
        (TensorSignature("X", "TYPE_FP32", (-1, 2, 2)), TensorSignature("Z", "TYPE_FP32", (-1, 2))),
        (TensorSignature("Y", "TYPE_FP32", (-1,)),),
    )
    complete_config(parse_config(CONFIG), signature, 4)
    wrong = ModelSignature(
        (TensorSignature("X", "TYPE_FP32", (-1, 4)), TensorSignature("Z", "TYPE_FP32", (-1, 2))),
        signature.outputs,
    )
    with pytest.raises(ModelLoadError, match=r"input 'X' has reshape \[2, 2\] but the model"):
        complete_config(parse_config(CONFIG), wrong, 4)


def test_an_input_whose_sizes_cannot_be_reshaped_is_invalid() -> None:
    config = CONFIG.replace(
        "dims: [ 4 ], reshape { shape: [ 2, 2 ] }", "dims: [ -1 ], reshape { shape: [ -1, 2 ] }"
    )
    spec = ModelSpec.from_config(parse_config(config))
    request = InferRequest(
        "m",
        inputs={"X": np.zeros((1, 3), dtype=np.float32), "Z": np.zeros((1, 2), np.float32)},
        datatypes={"X": "FP32", "Z": "FP32"},
    )
    validate_request(request, spec)
    with pytest.raises(InvalidArgument, match=r"cannot be reshaped to the model's \[-1, 2\]"):
        reshape_inputs(request, spec)
