"""How a generation model version is put together: `backend: "generation"` in config.pbtxt,
and the version directory in Hugging Face format (config.json, *.safetensors,
tokenizer.json, tokenizer_config.json).

The config's inputs and outputs are Triton's vLLM backend's, filled in when the config
leaves them out: `text_input`, and optional `stream`, `sampling_parameters` (JSON) and
`exclude_input_in_output`; `text_output`, plus `finish_reason`, `num_input_tokens`,
`num_output_tokens` and `logprobs`. The model is always decoupled. Engine settings are
config parameters: `kv_cache_bytes`, `block_size` (16), `max_num_seqs` (64),
`max_tokens_per_step` (512), `prefix_caching` (true) and `scheduling` (continuous; static
admits a new batch only when none is running, for comparison).
"""

from __future__ import annotations

from pathlib import Path

from tensorgate_protos import model_config_pb2 as mc

from tensorgate.errors import ModelLoadError
from tensorgate.generation.constraints import GrammarCompiler
from tensorgate.generation.engine import Engine
from tensorgate.generation.models import KVCache, load_model
from tensorgate.generation.runner import GenerationRunner
from tensorgate.generation.tokenizer import Tokenizer
from tensorgate.repository.config import parameter_int

CPU_KV_CACHE_BYTES = 256 * 2**20
INPUTS = (
    ("text_input", mc.TYPE_STRING, False),
    ("stream", mc.TYPE_BOOL, True),
    ("sampling_parameters", mc.TYPE_STRING, True),
    ("exclude_input_in_output", mc.TYPE_BOOL, True),
)
OUTPUTS = (
    ("text_output", mc.TYPE_STRING, [-1]),
    ("finish_reason", mc.TYPE_STRING, [1]),
    ("num_input_tokens", mc.TYPE_UINT32, [1]),
    ("num_output_tokens", mc.TYPE_UINT32, [1]),
    # With the return_logprobs parameter: a JSON list, one entry per token since the last
    # response ({"token", "logprob", "top": [[token, logprob], ...]}); else "[]".
    ("logprobs", mc.TYPE_STRING, [1]),
)


def complete_generation_config(config: mc.ModelConfig) -> None:
    """Fill the standard inputs and outputs; refuse what a generation model cannot be."""
    if config.max_batch_size:
        raise ModelLoadError(
            "a generation model batches its sequences itself: set max_batch_size: 0"
        )
    if config.WhichOneof("scheduling_choice") is not None:
        raise ModelLoadError(
            "a generation model schedules its sequences itself: remove "
            f"{config.WhichOneof('scheduling_choice')}"
        )
    if not config.input:
        for name, dtype, optional in INPUTS:
            config.input.add(name=name, data_type=dtype, dims=[1], optional=optional)
    if not config.output:
        for name, dtype, dims in OUTPUTS:
            config.output.add(name=name, data_type=dtype, dims=dims)
    config.model_transaction_policy.decoupled = True


def _device(config: mc.ModelConfig) -> str:
    groups = list(config.instance_group)
    if len(groups) > 1 or (groups and groups[0].count > 1):
        raise ModelLoadError("a generation model runs as one instance: one engine per version")
    if groups and groups[0].kind == mc.ModelInstanceGroup.KIND_GPU:
        return f"cuda:{groups[0].gpus[0] if groups[0].gpus else 0}"
    return "cpu"


def _kv_cache_bytes(config: mc.ModelConfig, server_default: int, device: str) -> int:
    configured = parameter_int(config, "kv_cache_bytes", server_default)
    if configured:
        return configured
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free // 2)
    return CPU_KV_CACHE_BYTES


def _scheduling(config: mc.ModelConfig) -> str:
    param = config.parameters.get("scheduling")
    value = param.string_value if param is not None else "continuous"
    if value not in ("continuous", "static"):
        raise ModelLoadError(f"parameter scheduling must be continuous or static, got {value!r}")
    return value


def build_generation(
    name: str, version_dir: Path, config: mc.ModelConfig, server_kv_cache_bytes: int
) -> GenerationRunner:
    """Blocking: load the weights and tokenizer, size the KV cache, start the engine."""
    complete_generation_config(config)
    device = _device(config)
    if device.startswith("cuda"):
        from tensorgate.executors.cuda import cuda_available

        if not cuda_available():
            raise ModelLoadError(f"instance_group asks for {device} but torch sees no CUDA device")
    model = load_model(version_dir, device)
    tokenizer = Tokenizer(version_dir)
    block_size = parameter_int(config, "block_size", 16)
    budget = _kv_cache_bytes(config, server_kv_cache_bytes, device)
    num_blocks = budget // KVCache.bytes_per_block(model.shape, block_size)
    if num_blocks < 1:
        raise ModelLoadError(f"kv_cache_bytes {budget} holds no block of {block_size} tokens")
    prefix = config.parameters.get("prefix_caching")
    engine = Engine(
        model,
        num_blocks=num_blocks,
        block_size=block_size,
        prefix_caching=prefix is None or prefix.string_value.lower() != "false",
        max_num_seqs=parameter_int(config, "max_num_seqs", 64),
        max_tokens_per_step=parameter_int(config, "max_tokens_per_step", 512),
        device=device,
        static=_scheduling(config) == "static",
        grammars=GrammarCompiler(tokenizer.json_text, tokenizer.vocab_size, tokenizer.eos_token_id),
    )
    return GenerationRunner(name, engine, tokenizer)
