"""A tiny language model made here, with random weights, and a tokenizer trained on local text.

Nothing is downloaded: the tokenizer is a byte-level BPE trained with the `tokenizers` library
on CORPUS below, and the model is a two-layer Llama (or GPT-2) whose weights are drawn from
a seeded normal distribution, written in Hugging Face format (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json) so that tensorgate and
`transformers` load the same files. Its text is gibberish; what it is for is exercising the
serving path.
"""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = """\
tensorgate serves models over gRPC and HTTP. A client sends a request, the server decodes
it, the data plane validates it, a runner schedules it, and an instance runs the model.
Language models answer one token at a time: the scheduler runs every sequence one step
together, admits new prompts as memory allows, and streams each token as it is made.
The key and value cache is split into blocks; a prompt that starts like an earlier one
reuses its blocks. When memory runs out, the newest sequence waits and is computed again.
Hello, how are you? I am fine, thank you. What is the weather like today? It is sunny.
The quick brown fox jumps over the lazy dog. One, two, three, four, five, six, seven.
"""

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL = ["<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]


def train_tokenizer(out: Path, vocab_size: int = 320) -> int:
    """A byte-level BPE tokenizer trained on CORPUS; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<s>",
                "eos_token": "</s>",
                "chat_template": CHAT_TEMPLATE,
                "tokenizer_class": "PreTrainedTokenizerFast",
            },
            indent=2,
        )
    )
    return int(tokenizer.get_vocab_size())


def _llama_weights(config: dict[str, int], seed: int) -> dict[str, object]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    head_dim = hidden // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.05

    weights: dict[str, object] = {
        "model.embed_tokens.weight": normal(config["vocab_size"], hidden),
        "model.norm.weight": torch.ones(hidden),
        "lm_head.weight": normal(config["vocab_size"], hidden),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        weights |= {
            p + "input_layernorm.weight": torch.ones(hidden),
            p + "post_attention_layernorm.weight": torch.ones(hidden),
            p + "self_attn.q_proj.weight": normal(hidden, hidden),
            p + "self_attn.k_proj.weight": normal(kv, hidden),
            p + "self_attn.v_proj.weight": normal(kv, hidden),
            p + "self_attn.o_proj.weight": normal(hidden, hidden),
            p + "mlp.gate_proj.weight": normal(inner, hidden),
            p + "mlp.up_proj.weight": normal(inner, hidden),
            p + "mlp.down_proj.weight": normal(hidden, inner),
        }
    return weights


def build_tiny_llama(
    out: Path,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 512,
) -> None:
    """A small Llama with grouped-query attention (two layers, 64 wide unless asked
    otherwise) and its tokenizer, under `out`."""
    from safetensors.torch import save_file

    vocab = train_tokenizer(out)
    from tokenizers import Tokenizer

    eos = Tokenizer.from_file(str(out / "tokenizer.json")).token_to_id("</s>")
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads // 2,
        "max_position_embeddings": max_positions,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": Tokenizer.from_file(str(out / "tokenizer.json")).token_to_id("<s>"),
        "eos_token_id": eos,
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_file(_llama_weights(config, seed), str(out / "model.safetensors"))  # type: ignore[arg-type]


GENERATION_CONFIG = """\
# A language model served by tensorgate's generation engine: continuous batching over a paged
# KV cache, streamed token by token (ModelStreamInfer, /generate_stream, /v1/completions).
backend: "generation"
max_batch_size: 0
parameters { key: "kv_cache_bytes" value { string_value: "8388608" } }
parameters { key: "block_size" value { string_value: "16" } }
"""
