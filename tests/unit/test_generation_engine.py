"""The generation engine against transformers' own generate(), token for token.

Tiny random Llama and GPT-2 models are made here with transformers and saved in Hugging
Face format; the engine loads them without transformers. With temperature 0 the tokens it
generates for several prompts at once, through the paged KV cache, must equal generate()'s
for each prompt alone: with and without prefix caching, and with preemption forced by a
cache too small for every sequence at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tensorgate.generation.engine import Engine  # noqa: E402
from tensorgate.generation.models import load_model  # noqa: E402
from tensorgate.generation.sampling_params import SamplingParams  # noqa: E402
from tensorgate.generation.scheduler import Sequence  # noqa: E402

VOCAB = 97
PROMPTS = [
    [5, 17, 3, 44, 9, 12, 8, 1, 30, 2, 7],
    [5, 17, 3, 44, 9, 12, 8, 1, 61, 62],  # shares two 4-token blocks with the first
    [90],
    [11, 22, 33, 44, 55, 66, 77, 88, 10, 20, 30, 40, 50, 60, 70, 80, 90, 15, 25],
]
NEW_TOKENS = 12


def _llama(path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    transformers.LlamaForCausalLM(config).eval().save_pretrained(path)


def _gpt2(path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=256,
        bos_token_id=None,
        eos_token_id=None,
    )
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(path)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp(request.param)
    (_llama if request.param == "llama" else _gpt2)(path)
    return path


def _reference(model_dir: Path) -> list[list[int]]:
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    outputs = []
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        generated = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=0,
        )
        outputs.append(generated[0, len(prompt) :].tolist())
    return outputs


def _sequences() -> list[Sequence]:
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)
    return [Sequence(f"s{i}", list(p), params) for i, p in enumerate(PROMPTS)]


@pytest.mark.parametrize(
    ("blocks", "prefix_caching", "step_tokens"),
    [(64, True, 512), (64, False, 512), (9, True, 512), (64, True, 6)],
    ids=["prefix-cache", "no-prefix-cache", "preempting", "chunked-prefill"],
)
def test_greedy_tokens_equal_transformers_generate(
    model_dir: Path, blocks: int, prefix_caching: bool, step_tokens: int
) -> None:
    engine = Engine(
        load_model(model_dir),
        num_blocks=blocks,
        block_size=4,
        prefix_caching=prefix_caching,
        max_tokens_per_step=step_tokens,
    )
    # The prompts go in two waves, so the second finds the first's blocks cached.
    first, rest = _sequences()[:1], _sequences()[1:]
    engine.add(first[0])
    engine.step()
    produced = engine.generate(rest)
    while engine.has_work:
        engine.step()
    assert [first[0].output, *produced] == _reference(model_dir)
    if blocks < 16:
        assert engine.scheduler.preemptions > 0
    if prefix_caching and blocks >= 16:
        assert engine.kv.stats.hit > 0
    assert engine.kv.usage == 0.0  # every block released


def test_a_seeded_request_samples_the_same_tokens_twice(model_dir: Path) -> None:
    engine = Engine(load_model(model_dir), num_blocks=64, block_size=4)
    params = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, top_k=20, seed=7)
    runs = [engine.generate([Sequence(f"r{i}", PROMPTS[0], params)])[0] for i in range(2)]
    assert runs[0] == runs[1]
