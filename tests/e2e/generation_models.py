"""Generation models for the tests: the examples' tiny Llama, a tiny GPT-2 made with
transformers on the same tokenizer, and variants with a tiny KV cache or no prefix cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tensorgate.examples.tiny_lm import GENERATION_CONFIG, build_tiny_llama

SMALL_CACHE = """\
backend: "generation"
max_batch_size: 0
parameters { key: "kv_cache_bytes" value { string_value: "32768" } }
parameters { key: "block_size" value { string_value: "4" } }
"""
NO_PREFIX_CACHE = GENERATION_CONFIG + (
    'parameters { key: "prefix_caching" value { string_value: "false" } }\n'
)


def _gpt2(out: Path, tokenizer_dir: Path) -> None:
    import torch
    import transformers

    vocab = json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"]
    eos = json.loads((tokenizer_dir / "config.json").read_text())["eos_token_id"]
    torch.manual_seed(1)
    config = transformers.GPT2Config(
        vocab_size=vocab,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=512,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, out / name)


def build_generation_repository(root: Path) -> dict[str, Path]:
    """Model name -> its version directory (Hugging Face files)."""
    llama = root / "tiny_llama" / "1"
    build_tiny_llama(llama)
    (root / "tiny_llama" / "config.pbtxt").write_text(GENERATION_CONFIG)
    _gpt2(root / "tiny_gpt2" / "1", llama)
    (root / "tiny_gpt2" / "config.pbtxt").write_text(GENERATION_CONFIG)
    for name, config in (("small_cache", SMALL_CACHE), ("no_prefix_cache", NO_PREFIX_CACHE)):
        shutil.copytree(llama, root / name / "1")
        (root / name / "config.pbtxt").write_text(config)
    return {
        "tiny_llama": llama,
        "tiny_gpt2": root / "tiny_gpt2" / "1",
        "small_cache": llama,
        "no_prefix_cache": llama,
    }
