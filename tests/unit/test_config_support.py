"""Config fields: what is not implemented is refused by name, and the docs table lists all."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorgate.errors import ModelLoadError
from tensorgate.examples.build import ADD_SUB_CONFIG, CNN_CONFIG, TEMPLATES
from tensorgate.repository.config import parse_config
from tensorgate.repository.support import check_supported
from tensorgate_protos import model_config_pb2 as mc

ROOT = Path(__file__).resolve().parents[2]


def test_every_config_field_has_a_row_in_the_support_table() -> None:
    table = (ROOT / "docs" / "pages" / "config-support.md").read_text()
    missing = [f.name for f in mc.ModelConfig.DESCRIPTOR.fields if f"`{f.name}`" not in table]
    assert missing == []


def test_the_bundled_examples_use_only_supported_fields() -> None:
    texts = [ADD_SUB_CONFIG, CNN_CONFIG]
    texts += [p.read_text() for p in TEMPLATES.glob("*/config.pbtxt")]
    for text in texts:
        check_supported(parse_config(text))


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("optimization { cuda { graphs: true } }", "optimization.cuda"),
        ("instance_group [{ count: 1, host_policy: 'numa0' }]", "instance_group.host_policy"),
        ("input [{ name: 'x', is_shape_tensor: true }]", "input.is_shape_tensor"),
        (
            "sequence_batching { state [{ input_name: 'a', use_growable_memory: true }] }",
            "sequence_batching.state.use_growable_memory",
        ),
        (
            "ensemble_scheduling { step [{ model_name: 'm', model_namespace: 'n' }] }",
            "ensemble_scheduling.step.model_namespace",
        ),
    ],
)
def test_an_unimplemented_field_fails_the_load_naming_it(text: str, field: str) -> None:
    with pytest.raises(ModelLoadError, match=f"config field '{field}' is not supported"):
        check_supported(parse_config(text))


def test_a_disabled_response_cache_is_the_default_and_passes() -> None:
    check_supported(parse_config("response_cache { enable: false }"))


def test_the_examples_folder_configs_parse_and_use_only_supported_fields() -> None:
    for path in (ROOT / "examples").rglob("config.pbtxt"):
        check_supported(parse_config(path.read_text(), str(path)))
