"""Decoder-only transformers over a paged KV cache, loaded from a Hugging Face directory.

Two families: Llama (RMSNorm, rotary position embeddings, grouped-query attention, SwiGLU)
and GPT-2 (learned positions, LayerNorm, GELU). Weights come from `config.json` and
`*.safetensors`; `transformers` is not needed to serve.

One forward pass computes a step: the new tokens of every scheduled sequence, packed into
one row each for the projections and MLPs, which run once for all of them. Attention is per
sequence: the step's keys and values are written into the cache at their slots, then each
sequence's queries attend to its whole context, gathered through its block table. Plain
torch, so it runs wherever torch does; on a GPU, `scaled_dot_product_attention` picks its
fused kernels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tensorgate.errors import ModelLoadError


@dataclass(frozen=True, slots=True)
class Shape:
    """What the KV cache must hold for a model."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int
    dtype: torch.dtype


@dataclass(slots=True)
class SequenceSlice:
    """One sequence's part of a step: its queries and its whole context in the cache."""

    query_start: int  # first row of the step's packed tokens
    query_len: int
    context_slots: torch.Tensor  # cache slots of tokens 0 .. end, in order


@dataclass(slots=True)
class DecodeGroup:
    """The step's one-token (decoding) sequences, attended together in one call per layer:
    their rows, and their contexts' slots padded to the longest, with a validity mask."""

    rows: torch.Tensor  # [B]
    slots: torch.Tensor  # [B, C]
    valid: torch.Tensor  # [B, C] bool


@dataclass(slots=True)
class StepBatch:
    """A step's packed tokens; `sample_rows` are the rows whose logits are wanted."""

    token_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    slots: torch.Tensor  # [T]: where each token's key and value go
    sequences: list[SequenceSlice]  # those not in `decode`: prompt chunks
    sample_rows: torch.Tensor  # [S]
    decode: DecodeGroup | None = None


class KVCache:
    """Keys and values of every layer, one row per slot (block id * block size + offset)."""

    def __init__(self, shape: Shape, num_blocks: int, block_size: int, device: str) -> None:
        slots = num_blocks * block_size
        size = (shape.num_layers, slots, shape.num_kv_heads, shape.head_dim)
        self.keys = torch.zeros(size, dtype=shape.dtype, device=device)
        self.values = torch.zeros(size, dtype=shape.dtype, device=device)

    @staticmethod
    def bytes_per_block(shape: Shape, block_size: int) -> int:
        element = torch.finfo(shape.dtype).bits // 8
        return 2 * shape.num_layers * block_size * shape.num_kv_heads * shape.head_dim * element


def _attend(
    q: torch.Tensor, layer: int, batch: StepBatch, cache: KVCache, groups: int
) -> torch.Tensor:
    """Each sequence's queries against its cached context, causally. q: [T, H, D]."""
    out = torch.empty_like(q)
    group = batch.decode
    if group is not None:
        # One query each: a padded batch, one attention call for all of them.
        keys = cache.keys[layer][group.slots]  # [B, C, KV, D]
        values = cache.values[layer][group.slots]
        attended = F.scaled_dot_product_attention(
            q[group.rows][:, :, None, :],  # [B, H, 1, D]
            keys.transpose(1, 2),  # [B, KV, C, D]: query heads share them (enable_gqa)
            values.transpose(1, 2),
            attn_mask=group.valid[:, None, None, :],
            enable_gqa=groups > 1,
        )
        out[group.rows] = attended[:, :, 0, :]
    for part in batch.sequences:
        rows = slice(part.query_start, part.query_start + part.query_len)
        keys = cache.keys[layer, part.context_slots]  # [C, KV, D]
        values = cache.values[layer, part.context_slots]
        context = part.context_slots.numel()
        # Query j sits at position context - query_len + j and sees keys up to it.
        first = context - part.query_len
        mask = torch.ones(part.query_len, context, dtype=torch.bool, device=q.device).tril(first)
        attended = F.scaled_dot_product_attention(
            q[rows].transpose(0, 1),
            keys.transpose(0, 1),
            values.transpose(0, 1),
            attn_mask=mask,
            enable_gqa=groups > 1,
        )
        out[rows] = attended.transpose(0, 1)
    return out


class Llama(torch.nn.Module):
    """Llama-architecture decoder (also Mistral-style configs without sliding windows)."""

    def __init__(self, config: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.hidden = config["hidden_size"]
        self.num_heads = config["num_attention_heads"]
        self.num_kv_heads = config.get("num_key_value_heads") or self.num_heads
        self.head_dim = config.get("head_dim") or self.hidden // self.num_heads
        self.eps = config.get("rms_norm_eps", 1e-6)
        self.layers = config["num_hidden_layers"]
        rope = config.get("rope_parameters") or {}
        scaling = config.get("rope_scaling") or {}
        rope_type = rope.get("rope_type") or scaling.get("rope_type") or "default"
        if rope_type != "default":
            raise ModelLoadError(f"rotary embedding type '{rope_type}' is not supported")
        theta = rope.get("rope_theta") or config.get("rope_theta") or 10000.0
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim
        self.inv_freq: torch.Tensor = 1.0 / (theta**exponents)
        self.w = weights
        if "lm_head.weight" not in weights:  # tied embeddings
            self.w["lm_head.weight"] = weights["model.embed_tokens.weight"]
        self.shape = Shape(
            self.layers,
            self.num_kv_heads,
            self.head_dim,
            config["vocab_size"],
            config.get("max_position_embeddings", 2048),
            weights["model.embed_tokens.weight"].dtype,
        )

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return weight * (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype)

    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq.to(positions.device)[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos()[:, None, :], angles.sin()[:, None, :]

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return (x.float() * cos + rotated.float() * sin).to(x.dtype)

    def forward(self, batch: StepBatch, cache: KVCache) -> torch.Tensor:
        """Logits of `batch.sample_rows`, after writing the step's keys and values."""
        w, count = self.w, batch.token_ids.numel()
        x = w["model.embed_tokens.weight"][batch.token_ids]
        cos, sin = self._rotary(batch.positions)
        groups = self.num_heads // self.num_kv_heads
        for i in range(self.layers):
            p = f"model.layers.{i}."
            h = self._norm(x, w[p + "input_layernorm.weight"])
            q = (h @ w[p + "self_attn.q_proj.weight"].T).view(count, self.num_heads, -1)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).view(count, self.num_kv_heads, -1)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).view(count, self.num_kv_heads, -1)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            cache.keys[i].index_copy_(0, batch.slots, k)
            cache.values[i].index_copy_(0, batch.slots, v)
            attended = _attend(q, i, batch, cache, groups).reshape(count, -1)
            x = x + attended @ w[p + "self_attn.o_proj.weight"].T
            h = self._norm(x, w[p + "post_attention_layernorm.weight"])
            gate = F.silu(h @ w[p + "mlp.gate_proj.weight"].T)
            x = x + (gate * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
        x = self._norm(x[batch.sample_rows], w["model.norm.weight"])
        return x @ w["lm_head.weight"].T


class GPT2(torch.nn.Module):
    """GPT-2 decoder: learned positions, pre-LayerNorm blocks, tied output embedding."""

    def __init__(self, config: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        if config.get("scale_attn_by_inverse_layer_idx") or config.get("reorder_and_upcast_attn"):
            raise ModelLoadError("GPT-2 attention variants are not supported")
        activation = config.get("activation_function", "gelu_new")
        self.act: Callable[[torch.Tensor], torch.Tensor] = {
            "gelu_new": lambda t: F.gelu(t, approximate="tanh"),
            "gelu": F.gelu,
            "relu": F.relu,
        }.get(activation) or _unsupported(activation)
        self.hidden = config["n_embd"]
        self.num_heads = config["n_head"]
        self.head_dim = self.hidden // self.num_heads
        self.eps = config.get("layer_norm_epsilon", 1e-5)
        self.layers = config["n_layer"]
        self.w = {k.removeprefix("transformer."): v for k, v in weights.items()}
        self.shape = Shape(
            self.layers,
            self.num_heads,
            self.head_dim,
            config["vocab_size"],
            config.get("n_positions", 1024),
            self.w["wte.weight"].dtype,
        )

    def _ln(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(
            x, (self.hidden,), self.w[name + ".weight"], self.w[name + ".bias"], self.eps
        )

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ self.w[name + ".weight"] + self.w[name + ".bias"]  # Conv1D: [in, out]

    def forward(self, batch: StepBatch, cache: KVCache) -> torch.Tensor:
        """Logits of `batch.sample_rows`, after writing the step's keys and values."""
        count = batch.token_ids.numel()
        x = self.w["wte.weight"][batch.token_ids] + self.w["wpe.weight"][batch.positions]
        for i in range(self.layers):
            p = f"h.{i}."
            qkv = self._linear(self._ln(x, p + "ln_1"), p + "attn.c_attn")
            q, k, v = (
                qkv[:, j * self.hidden : (j + 1) * self.hidden].reshape(count, self.num_heads, -1)
                for j in range(3)
            )
            cache.keys[i].index_copy_(0, batch.slots, k)
            cache.values[i].index_copy_(0, batch.slots, v)
            attended = _attend(q, i, batch, cache, 1).reshape(count, -1)
            x = x + self._linear(attended, p + "attn.c_proj")
            h = self.act(self._linear(self._ln(x, p + "ln_2"), p + "mlp.c_fc"))
            x = x + self._linear(h, p + "mlp.c_proj")
        x = self._ln(x[batch.sample_rows], "ln_f")
        return x @ self.w["wte.weight"].T


def _unsupported(activation: str) -> Callable[[torch.Tensor], torch.Tensor]:
    raise ModelLoadError(f"activation '{activation}' is not supported")


FAMILIES: dict[str, type[Llama] | type[GPT2]] = {"llama": Llama, "mistral": Llama, "gpt2": GPT2}


def load_model(directory: Path, device: str = "cpu") -> Llama | GPT2:
    """A model from a Hugging Face directory: config.json and its *.safetensors files."""
    from safetensors.torch import load_file

    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{directory.name}/ has no config.json")
    config = json.loads(config_path.read_text())
    family = FAMILIES.get(config.get("model_type", ""))
    if family is None:
        raise ModelLoadError(
            f"model_type '{config.get('model_type')}' is not supported; "
            f"supported: {', '.join(FAMILIES)}"
        )
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{directory.name}/ has no *.safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for path in files:
        weights.update(load_file(str(path), device=device))
    try:
        return family(config, weights)
    except KeyError as exc:
        raise ModelLoadError(f"the weights lack {exc.args[0]}") from None


def attention_scale(head_dim: int) -> float:
    """The softmax scale both families use (scaled_dot_product_attention's default)."""
    return 1.0 / math.sqrt(head_dim)
