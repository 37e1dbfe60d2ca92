"""onnxruntime settings from config.pbtxt, read as Triton's onnxruntime backend reads them.

- `optimization { graph { level } }`: -1 basic, 1 extended, 2 none; unset or 0: all.
- parameters `intra_op_thread_count`, `inter_op_thread_count`, `execution_mode` (0
  sequential, 1 parallel), `enable_mem_arena`, `enable_mem_pattern`,
  `session.use_device_allocator_for_initializers`, and the run option
  `memory.enable_memory_arena_shrinkage`.
- The CUDA execution provider's `cudnn_conv_algo_search` (0 exhaustive, 1 heuristic, 2
  default), `gpu_mem_limit`, `arena_extend_strategy` (0 next power of two, 1 as requested)
  and `do_copy_in_default_stream`, for GPU instances.

Keys of Triton's onnxruntime backend that are not implemented here fail the load by name.
"""

from __future__ import annotations

from typing import Any

from tensorgate_protos import model_config_pb2 as mc

from tensorgate.errors import ModelLoadError
from tensorgate.repository.config import parameter_flag, parameter_int

# Triton's numbering, which is not onnxruntime's: 2 turns every optimization off.
_GRAPH_LEVELS = {
    -1: "ORT_ENABLE_BASIC",
    0: "ORT_ENABLE_ALL",
    1: "ORT_ENABLE_EXTENDED",
    2: "ORT_DISABLE_ALL",
}

_REFUSED = {
    "share_session_between_instances": "each instance has its own onnxruntime session",
}

_CONV_SEARCH = {"0": "EXHAUSTIVE", "1": "HEURISTIC", "2": "DEFAULT"}
_ARENA_STRATEGY = {"0": "kNextPowerOfTwo", "1": "kSameAsRequested"}


def session_options(ort: Any, config: mc.ModelConfig, default_threads: int) -> Any:
    """The SessionOptions the config asks for."""
    for key, reason in _REFUSED.items():
        if key in config.parameters:
            raise ModelLoadError(f"parameter {key} is not implemented: {reason}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = parameter_int(config, "intra_op_thread_count", default_threads)
    options.inter_op_num_threads = parameter_int(config, "inter_op_thread_count", 1)
    level = config.optimization.graph.level
    if level not in _GRAPH_LEVELS:
        raise ModelLoadError(
            f"optimization.graph.level must be -1 (basic), 1 (extended) or 2 (none), got {level}"
        )
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _GRAPH_LEVELS[level])
    mode = parameter_int(config, "execution_mode", 0)
    if mode not in (0, 1):
        raise ModelLoadError(f"parameter execution_mode must be 0 or 1, got {mode}")
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if mode else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    for key, attribute in (
        ("enable_mem_arena", "enable_cpu_mem_arena"),
        ("enable_mem_pattern", "enable_mem_pattern"),
    ):
        value = parameter_flag(config, key)
        if value is not None:
            setattr(options, attribute, value)
    key = "session.use_device_allocator_for_initializers"
    if key in config.parameters:
        options.add_session_config_entry(key, config.parameters[key].string_value)
    return options


def run_options(ort: Any, config: mc.ModelConfig) -> Any:
    """The RunOptions for every `run`, or None when the config sets none."""
    key = "memory.enable_memory_arena_shrinkage"
    if key not in config.parameters:
        return None
    options = ort.RunOptions()
    options.add_run_config_entry(key, config.parameters[key].string_value)
    return options


def cuda_provider_options(config: mc.ModelConfig) -> dict[str, str]:
    """The CUDA execution provider's options the config's parameters set."""
    options: dict[str, str] = {}
    for key, names in (
        ("cudnn_conv_algo_search", _CONV_SEARCH),
        ("arena_extend_strategy", _ARENA_STRATEGY),
    ):
        param = config.parameters.get(key)
        if param is not None and param.string_value:
            if param.string_value not in names:
                raise ModelLoadError(
                    f"parameter {key} must be one of {', '.join(names)}, got {param.string_value!r}"
                )
            options[key] = names[param.string_value]
    limit = parameter_int(config, "gpu_mem_limit", 0)
    if limit:
        options["gpu_mem_limit"] = str(limit)
    copy = parameter_flag(config, "do_copy_in_default_stream")
    if copy is not None:
        options["do_copy_in_default_stream"] = "1" if copy else "0"
    return options
