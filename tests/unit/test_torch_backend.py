"""The pytorch backend matches tensors to forward's arguments as Triton's pytorch backend
does, and reads that backend's parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tensorgate.backends.base import InstanceContext
from tensorgate.backends.torch_backend import TorchInstance
from tensorgate.errors import ModelLoadError
from tensorgate.repository.config import parse_config

torch = pytest.importorskip("torch")


class Difference(torch.nn.Module):  # type: ignore[misc]
    def forward(self, minuend: Any, subtrahend: Any) -> tuple[Any, Any]:
        return minuend - subtrahend, minuend + subtrahend


def _tensors(names: list[str]) -> str:
    return ", ".join(f'{{ name: "{n}", data_type: TYPE_FP32, dims: [2] }}' for n in names)


def _instance(tmp_path: Path, inputs: list[str], outputs: list[str], extra: str = "") -> Any:
    path = tmp_path / "1" / "model.pt"
    path.parent.mkdir(exist_ok=True)
    example = (torch.ones(1, 2), torch.ones(1, 2))
    torch.jit.save(torch.jit.trace(Difference(), example), str(path))
    config = parse_config(
        f"max_batch_size: 4\ninput [{_tensors(inputs)}]\noutput [{_tensors(outputs)}]\n{extra}"
    )
    return TorchInstance(InstanceContext("m", 1, tmp_path, path, config, "cpu", 1))


def _run(instance: Any, **arrays: float) -> dict[str, list[list[float]]]:
    feed = {k: np.full((1, 2), v, dtype=np.float32) for k, v in arrays.items()}
    return {k: v.tolist() for k, v in instance.execute(feed).items()}


def test_inputs_named_after_forwards_arguments_go_to_those_arguments(tmp_path: Path) -> None:
    # Listed in the other order: the names decide.
    instance = _instance(tmp_path, ["subtrahend", "minuend"], ["OUT__0", "OUT__1"])
    assert _run(instance, minuend=5, subtrahend=2) == {
        "OUT__0": [[3.0, 3.0]],
        "OUT__1": [[7.0, 7.0]],
    }


def test_index_suffixes_decide_positions_of_inputs_and_outputs(tmp_path: Path) -> None:
    instance = _instance(tmp_path, ["INPUT__1", "INPUT__0"], ["SUM__1", "DIFF__0"])
    assert _run(instance, INPUT__0=5, INPUT__1=2) == {
        "DIFF__0": [[3.0, 3.0]],
        "SUM__1": [[7.0, 7.0]],
    }


def test_other_names_follow_the_configs_order(tmp_path: Path) -> None:
    instance = _instance(tmp_path, ["A", "B"], ["D", "S"])
    assert _run(instance, A=5, B=2) == {"D": [[3.0, 3.0]], "S": [[7.0, 7.0]]}


def test_tritons_pytorch_parameters_are_read(tmp_path: Path) -> None:
    params = "".join(
        f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n'
        for k, v in (("INFERENCE_MODE", "false"), ("DISABLE_OPTIMIZED_EXECUTION", "true"))
    )
    instance = _instance(tmp_path, ["A", "B"], ["D", "S"], params)
    assert (instance._inference_mode, instance._optimized) == (False, False)
    assert _run(instance, A=1, B=1) == {"D": [[0.0, 0.0]], "S": [[2.0, 2.0]]}
    refused = 'parameters { key: "ENABLE_WEIGHT_SHARING" value { string_value: "true" } }'
    with pytest.raises(ModelLoadError, match="parameter ENABLE_WEIGHT_SHARING of the pytorch"):
        _instance(tmp_path, ["A", "B"], ["D", "S"], refused)
    wrong = 'parameters { key: "INFERENCE_MODE" value { string_value: "sometimes" } }'
    with pytest.raises(ModelLoadError, match="INFERENCE_MODE must be true or false"):
        _instance(tmp_path, ["A", "B"], ["D", "S"], wrong)
