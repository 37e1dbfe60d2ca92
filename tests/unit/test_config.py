"""Model config parsing, auto-completion from model files, version policies."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorgate.backends.base import ModelSignature, TensorSignature
from tensorgate.errors import ModelLoadError
from tensorgate.repository.autocomplete import complete_config
from tensorgate.repository.config import ModelSpec, parse_config
from tensorgate.repository.versions import available_versions, select_versions
from tensorgate_protos import model_config_pb2 as mc

ADD_SUB = ModelSignature(
    inputs=(
        TensorSignature("A", "TYPE_FP32", (-1, 16)),
        TensorSignature("B", "TYPE_FP32", (-1, 16)),
    ),
    outputs=(TensorSignature("C", "TYPE_FP32", (-1, 16)),),
)


def test_config_parse_error_names_the_line() -> None:
    with pytest.raises(ModelLoadError, match=r"does not parse: 2:"):
        parse_config('name: "m"\nmax_batch_size: "eight"\n')


def test_full_triton_config_parses() -> None:
    config = parse_config(
        """
        name: "m" backend: "onnxruntime" max_batch_size: 8
        version_policy { latest { num_versions: 2 } }
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 3, -1 ] optional: true } ]
        output [ { name: "Y" data_type: TYPE_STRING dims: [ 1 ] } ]
        dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100
          priority_levels: 2 default_priority_level: 1
          default_queue_policy { timeout_action: DELAY max_queue_size: 10 } }
        instance_group [ { kind: KIND_CPU count: 2 } ]
        parameters { key: "intra_op_thread_count" value { string_value: "1" } }
        """
    )
    spec = ModelSpec.from_config(config)
    assert spec.max_batch_size == 8
    assert spec.inputs["X"].dims == (3, -1) and spec.inputs["X"].optional
    assert spec.outputs["Y"].datatype.name == "BYTES"
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]


def test_missing_inputs_and_outputs_are_completed_and_batching_detected() -> None:
    config = mc.ModelConfig(name="m", backend="onnxruntime")
    complete_config(config, ADD_SUB, default_max_batch_size=4)
    assert config.max_batch_size == 4
    assert config.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in config.input] == [("A", [16]), ("B", [16])]
    assert mc.DataType.Name(config.output[0].data_type) == "TYPE_FP32"


def test_model_with_fixed_first_dimension_is_completed_without_batching() -> None:
    fixed = ModelSignature(
        (TensorSignature("A", "TYPE_INT64", (2, 3)),), (TensorSignature("C", "TYPE_INT64", (2, 3)),)
    )
    config = mc.ModelConfig(name="m")
    complete_config(config, fixed, default_max_batch_size=4)
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [2, 3]


def test_declared_batching_on_a_fixed_first_dimension_fails_to_load() -> None:
    fixed = ModelSignature((TensorSignature("A", "TYPE_FP32", (2, 3)),), ())
    config = parse_config('max_batch_size: 4 input [{name: "A" data_type: TYPE_FP32 dims: [3]}]')
    with pytest.raises(ModelLoadError, match="fixed first dimension"):
        complete_config(config, fixed, 4)


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        (
            '{name: "A" data_type: TYPE_FP16 dims: [16]}, '
            '{name: "B" data_type: TYPE_FP32 dims: [16]}',
            "'A' is TYPE_FP16 but the model file has TYPE_FP32",
        ),
        (
            '{name: "A" data_type: TYPE_FP32 dims: [8]}, '
            '{name: "B" data_type: TYPE_FP32 dims: [16]}',
            r"dims \[8\] but the model file has \[16\]",
        ),
        ('{name: "Z" data_type: TYPE_FP32 dims: [16]}', "'Z' is not in the model file"),
        ('{name: "A" data_type: TYPE_FP32 dims: [16]}', r"lacks model inputs \['B'\]"),
    ],
)
def test_config_that_disagrees_with_the_model_file_fails_to_load(inputs: str, match: str) -> None:
    config = parse_config(f"max_batch_size: 8 input [{inputs}]")
    with pytest.raises(ModelLoadError, match=match):
        complete_config(config, ADD_SUB, 4)


def test_backend_without_a_signature_requires_declared_tensors() -> None:
    with pytest.raises(ModelLoadError, match="must list input and output"):
        complete_config(mc.ModelConfig(backend="pytorch"), None, 4)


def test_duplicate_tensor_names_fail_to_load() -> None:
    config = parse_config(
        'input [{name: "A" data_type: TYPE_FP32 dims: [1]},'
        '{name: "A" data_type: TYPE_FP32 dims: [1]}]'
    )
    with pytest.raises(ModelLoadError, match="same input name"):
        ModelSpec.from_config(config)


def test_version_directories_are_numeric_and_sorted(tmp_path: Path) -> None:
    for name in ("3", "1", "10", "01", "latest", "\u00b2", "\u0663"):
        (tmp_path / name).mkdir()
    (tmp_path / "2").write_text("not a directory")
    assert available_versions(tmp_path) == [1, 3, 10]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("", [10]),
        ("latest { num_versions: 2 }", [3, 10]),
        ("all { }", [1, 3, 10]),
        ("specific { versions: [ 3, 1 ] }", [1, 3]),
    ],
)
def test_version_policy_selects_versions(policy: str, expected: list[int]) -> None:
    config = parse_config(f"version_policy {{ {policy} }}" if policy else "")
    assert select_versions([1, 3, 10], config.version_policy) == expected


def test_specific_version_policy_naming_a_missing_version_fails() -> None:
    config = parse_config("version_policy { specific { versions: [ 7 ] } }")
    with pytest.raises(ModelLoadError, match=r"\[7\]"):
        select_versions([1], config.version_policy)
