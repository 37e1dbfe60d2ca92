"""`TritonPythonModel.auto_complete_config`: what a model may set in its config, and what
it may not contradict."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorgate.backends.python_model import auto_complete
from tensorgate.backends.triton_utils import ModelConfig
from tensorgate.errors import ModelLoadError
from tensorgate.repository.config import parse_config

FP32_4 = {"name": "X", "data_type": "TYPE_FP32", "dims": [4]}


def test_inputs_already_listed_must_agree_and_are_not_added_twice() -> None:
    config = ModelConfig({"input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [4]}]}, "m")
    config.add_input(FP32_4)
    assert config.as_dict()["input"] == [FP32_4]
    with pytest.raises(ValueError, match="the model expects dims \\[8\\]"):
        config.add_input({**FP32_4, "dims": [8]})


@pytest.mark.parametrize(
    ("tensor", "reason"),
    [
        ({"name": "X", "data_type": "TYPE_FP32"}, "is missing \\['dims'\\]"),
        ({**FP32_4, "format": "FORMAT_NHWC"}, "has properties \\['format'\\]"),
    ],
)
def test_an_incomplete_or_unknown_tensor_property_is_refused(
    tensor: dict[str, object], reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        ModelConfig({}, "m").add_input(tensor)


def test_the_scheduler_and_decoupled_policy_cannot_be_contradicted() -> None:
    with pytest.raises(ValueError, match="as 'sequence_batching'"):
        ModelConfig({"sequence_batching": {}}, "m").set_dynamic_batching()
    decoupled = ModelConfig({"model_transaction_policy": {"decoupled": True}}, "m")
    with pytest.raises(ValueError, match="trying to change decoupled property"):
        decoupled.set_model_transaction_policy({"decoupled": False})
    fresh = ModelConfig({}, "m")
    fresh.set_model_transaction_policy({"decoupled": True})
    fresh.set_max_batch_size(4)
    assert fresh.as_dict()["model_transaction_policy"] == {"decoupled": True}
    assert fresh.as_dict()["max_batch_size"] == 4


def test_a_model_that_returns_something_else_fails_the_load(tmp_path: Path) -> None:
    model = tmp_path / "model.py"
    model.write_text(
        "class TritonPythonModel:\n"
        "    @staticmethod\n"
        "    def auto_complete_config(config):\n"
        "        return None\n"
    )
    with pytest.raises(ModelLoadError, match=r"must return the pb_utils\.ModelConfig"):
        auto_complete(parse_config('backend: "python"'), "m", 1, model)


def test_a_model_without_the_method_is_not_imported(tmp_path: Path) -> None:
    model = tmp_path / "model.py"
    model.write_text("raise RuntimeError('imported')\n")
    config = parse_config('backend: "python"')
    auto_complete(config, "m", 1, model)
    assert not config.input
