"""onnxruntime settings from config.pbtxt, read as Triton's onnxruntime backend reads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tensorgate.backends.base import InstanceContext
from tensorgate.backends.onnx_backend import OnnxInstance
from tensorgate.backends.onnx_options import cuda_provider_options, session_options
from tensorgate.errors import ModelLoadError
from tensorgate.examples.build import build_add_sub
from tensorgate.repository.config import parse_config


def _params(**values: str) -> str:
    return "".join(
        f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in values.items()
    )


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
        ("optimization { graph { level: -1 } }", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        ("optimization { graph { level: 1 } }", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
        ("optimization { graph { level: 2 } }", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
    ],
)
def test_the_graph_level_follows_tritons_numbering(level: str, expected: object) -> None:
    assert session_options(ort, parse_config(level), 1).graph_optimization_level == expected


def test_session_parameters_reach_the_session(tmp_path: Path) -> None:
    text = "optimization { graph { level: 2 } }\n" + _params(
        execution_mode="1",
        enable_mem_arena="0",
        enable_mem_pattern="false",
        intra_op_thread_count="2",
        inter_op_thread_count="3",
    )
    path = tmp_path / "1" / "model.onnx"
    build_add_sub(path)
    context = InstanceContext("m", 1, tmp_path, path, parse_config(text), "cpu", 1)
    instance = OnnxInstance(context)
    used = instance._session.get_session_options()
    assert used.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert used.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert not used.enable_cpu_mem_arena and not used.enable_mem_pattern
    assert (used.intra_op_num_threads, used.inter_op_num_threads) == (2, 3)
    ones = np.ones((1, 16), dtype=np.float32)
    assert instance.execute({"INPUT0": ones, "INPUT1": ones})["OUTPUT0"].tolist() == [[2.0] * 16]
    instance.close()


def test_the_arena_shrinkage_run_option_is_used_on_every_run(tmp_path: Path) -> None:
    text = _params(**{"memory.enable_memory_arena_shrinkage": "cpu:0"})
    path = tmp_path / "1" / "model.onnx"
    build_add_sub(path)
    instance = OnnxInstance(InstanceContext("m", 1, tmp_path, path, parse_config(text), "cpu", 1))
    assert instance._run_options is not None
    ones = np.ones((2, 16), dtype=np.float32)
    assert (
        instance.execute({"INPUT0": ones, "INPUT1": ones})["OUTPUT1"].tolist() == [[0.0] * 16] * 2
    )
    instance.close()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("optimization { graph { level: 3 } }", "must be -1 (basic), 1 (extended) or 2 (none)"),
        (_params(execution_mode="2"), "execution_mode must be 0 or 1"),
        (_params(enable_mem_arena="maybe"), "enable_mem_arena must be true or false"),
        (_params(share_session_between_instances="1"), "share_session_between_instances is not"),
    ],
)
def test_a_setting_that_cannot_work_fails_the_load_naming_it(text: str, reason: str) -> None:
    with pytest.raises(ModelLoadError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        session_options(ort, parse_config(text), 1)


def test_cuda_provider_parameters_map_to_onnxruntimes_names() -> None:
    text = _params(
        cudnn_conv_algo_search="1",
        arena_extend_strategy="1",
        gpu_mem_limit="1073741824",
        do_copy_in_default_stream="0",
    )
    assert cuda_provider_options(parse_config(text)) == {
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kSameAsRequested",
        "gpu_mem_limit": "1073741824",
        "do_copy_in_default_stream": "0",
    }
    with pytest.raises(ModelLoadError, match="cudnn_conv_algo_search must be one of 0, 1, 2"):
        cuda_provider_options(parse_config(_params(cudnn_conv_algo_search="fast")))
