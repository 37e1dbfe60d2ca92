"""Language models served end to end: greedy text equal to transformers' generate(), the
openai client, tritonclient's stream, server-sent events, cancellation, bad input."""

from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import sseclient
import tritonclient.grpc as grpcclient

from tests.e2e.conftest import Server, doc_block, serving
from tests.e2e.generation_models import build_generation_repository

pytestmark = pytest.mark.slow
transformers = pytest.importorskip("transformers")
openai = pytest.importorskip("openai")

PROMPTS = [
    "Hello, how are you?",
    "Hello, how are you? I am fine",  # shares its start with the first
    "The quick brown fox",
    "tensorgate serves models over gRPC and HTTP. A client sends a request",
    "One",
    "What is the weather like today? It is sunny. The key and value cache",
]
NEW_TOKENS = 10


@pytest.fixture(scope="module")
def generation(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Server, dict[str, Path]]]:
    root = tmp_path_factory.mktemp("generation_repo")
    dirs = build_generation_repository(root)
    with serving(root, tmp_path_factory) as server:
        yield server, dirs


def reference(model_dir: Path) -> list[str]:
    """Greedy continuations from transformers, decoded with the model's own tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    texts = []
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt).ids
        import torch

        tensor = torch.tensor([ids])
        out = model.generate(
            tensor,
            attention_mask=torch.ones_like(tensor),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=0,
        )
        texts.append(tokenizer.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True))
    return texts


def generate(server: Server, model: str, prompt: str, **params: Any) -> dict[str, Any]:
    body = {"text_input": prompt, "exclude_input_in_output": True, **params}
    reply = requests.post(
        f"http://{server.http_url}/v2/models/{model}/generate", json=body, timeout=60
    )
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def metric(server: Server, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}{{{wanted}}} in /metrics")


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_gpt2", "small_cache", "no_prefix_cache"])
def test_concurrent_greedy_text_equals_transformers_generate(
    generation: tuple[Server, dict[str, Path]], model: str
) -> None:
    server, dirs = generation
    params = {"max_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True}
    expected = reference(dirs[model])
    # The tiny cache forces preemption only when the requests overlap enough; on a busy
    # machine they may not in one round, so the rounds repeat (bounded) until one did.
    for _ in range(5 if model == "small_cache" else 1):
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            answers = list(pool.map(lambda p: generate(server, model, p, **params), PROMPTS))
        assert [a["text_output"] for a in answers] == expected
        assert all(a["finish_reason"] == "length" for a in answers)
        assert all(a["num_output_tokens"] == NEW_TOKENS for a in answers)
        if metric(server, "tensorgate_generation_preemptions_total", model=model) > 0:
            break
    if model == "small_cache":
        assert metric(server, "tensorgate_generation_preemptions_total", model=model) > 0
    if model == "tiny_llama":  # a prompt seen before reuses its cached blocks, same text
        assert generate(server, model, PROMPTS[1], **params) == answers[1]
        hit = metric(
            server, "tensorgate_generation_prefix_cache_tokens_total", model=model, outcome="hit"
        )
        assert hit > 0


def test_the_openai_client_completes_and_chats_streamed_and_not(
    generation: tuple[Server, dict[str, Path]],
) -> None:
    server, _ = generation
    client = openai.OpenAI(base_url=f"http://{server.http_url}/v1", api_key="unused")
    assert "tiny_llama" in [m.id for m in client.models.list().data]
    kwargs: dict[str, Any] = {"model": "tiny_llama", "max_tokens": 8, "temperature": 0}
    whole = client.completions.create(prompt="Hello, how", **kwargs)
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(prompt="Hello, how", stream=True, **kwargs)
    )
    assert whole.choices[0].text == streamed
    assert whole.usage is not None and whole.usage.completion_tokens <= 8
    messages = [{"role": "user", "content": "What is the weather like?"}]
    chat = client.chat.completions.create(messages=messages, **kwargs)
    chunks = list(
        client.chat.completions.create(
            messages=messages, stream=True, stream_options={"include_usage": True}, **kwargs
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chat.choices[0].message.content == text
    assert chat.choices[0].message.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == chat.usage.total_tokens
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="tiny_llama", prompt="x", max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.chat.completions.create(messages=messages, response_format={"type": "xml"}, **kwargs)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")


def test_n_choices_come_back_indexed_with_the_prompt_counted_once(
    generation: tuple[Server, dict[str, Path]],
) -> None:
    server, _ = generation
    client = openai.OpenAI(base_url=f"http://{server.http_url}/v1", api_key="unused")
    kwargs: dict[str, Any] = {
        "model": "tiny_llama",
        "prompt": "Hello, how",
        "max_tokens": 8,
        "extra_body": {"ignore_eos": True},
    }
    whole = client.completions.create(n=3, seed=7, temperature=1.0, **kwargs)
    assert [c.index for c in whole.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" for c in whole.choices)
    assert whole.usage is not None and whole.usage.completion_tokens == 3 * 8
    single = client.completions.create(**kwargs)
    assert single.usage is not None and whole.usage.prompt_tokens == single.usage.prompt_tokens
    # Choice i samples with seed + i: the same request gives the same choices again.
    again = client.completions.create(n=3, seed=7, temperature=1.0, **kwargs)
    assert [c.text for c in again.choices] == [c.text for c in whole.choices]
    assert len({c.text for c in whole.choices}) > 1
    messages = [{"role": "user", "content": "What is the weather like?"}]
    chunks = list(
        client.chat.completions.create(
            model="tiny_llama",
            messages=messages,
            n=2,
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = {0: "", 1: ""}
    finished = set()
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1}
    assert texts[0] == texts[1]  # greedy: both choices are the same text
    assert chunks[-1].usage is not None and not chunks[-1].choices
    with pytest.raises(openai.BadRequestError, match="'n' must be"):
        client.completions.create(model="tiny_llama", prompt="x", n=0)


def test_a_deadline_ends_generation_early_with_finish_reason_deadline(
    generation: tuple[Server, dict[str, Path]],
) -> None:
    server, _ = generation
    # As many tokens as the context holds, and deadlines of 0.2 s: even at a token per
    # 0.3 ms (a step's own overhead on a fast CPU) the context would take longer.
    long = {"max_tokens": 500, "temperature": 0, "ignore_eos": True}
    # Triton's timeout parameter (microseconds) over the generate extension.
    answer = generate(server, "tiny_llama", "Hello", timeout=200_000, **long)
    assert answer["finish_reason"] == "deadline"
    assert 0 <= answer["num_output_tokens"] < 500
    # A timeout shorter than a step ends the request before its first token.
    assert generate(server, "tiny_llama", "Hello", timeout=1, **long)["num_output_tokens"] == 0
    # The OpenAI API takes seconds.
    client = openai.OpenAI(base_url=f"http://{server.http_url}/v1", api_key="unused")
    completion = client.completions.create(
        model="tiny_llama",
        prompt="Hello",
        max_tokens=500,
        temperature=0,
        extra_body={"ignore_eos": True, "timeout": 0.2},
    )
    assert completion.choices[0].finish_reason == "deadline"
    # The gRPC stream's own deadline: the last response comes before it, saying why.
    results: queue.Queue[Any] = queue.Queue()
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"Hello"], dtype=np.object_))
    params = grpcclient.InferInput("sampling_parameters", [1], "BYTES")
    params.set_data_from_numpy(np.array([json.dumps(long).encode()], dtype=np.object_))
    with grpcclient.InferenceServerClient(server.url) as client:
        client.start_stream(
            callback=lambda result, error: results.put(error or result), stream_timeout=0.2
        )
        client.async_stream_infer("tiny_llama", [text, params])
        item = results.get(timeout=60)
        client.stop_stream()
    assert not isinstance(item, Exception), item
    assert item.as_numpy("finish_reason")[0] == b"deadline"
    assert int(item.as_numpy("num_output_tokens")[0]) < 500
    assert metric(server, "tensorgate_generation_kv_blocks", model="tiny_llama", state="used") == 0


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "size": {"enum": ["small", "large"]},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "size", "ok"],
    "additionalProperties": False,
}


def test_json_schema_output_always_parses_and_validates(
    generation: tuple[Server, dict[str, Path]],
) -> None:
    import jsonschema

    server, _ = generation
    client = openai.OpenAI(base_url=f"http://{server.http_url}/v1", api_key="unused")
    response_format = {"type": "json_schema", "json_schema": {"name": "item", "schema": SCHEMA}}

    def one(seed: int) -> str:
        answer = client.chat.completions.create(
            model="tiny_llama",
            messages=[{"role": "user", "content": "Describe an item as JSON."}],
            response_format=response_format,  # type: ignore[arg-type]
            temperature=1.0,
            max_tokens=150,
            seed=seed,
        )
        assert answer.choices[0].finish_reason == "stop"
        return str(answer.choices[0].message.content)

    with ThreadPoolExecutor(16) as pool:
        texts = list(pool.map(one, range(100)))
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)
    assert len(set(texts)) > 1  # sampled, not one fixed answer


def test_a_regex_constrains_generate_and_a_bad_schema_is_refused(
    generation: tuple[Server, dict[str, Path]],
) -> None:
    server, _ = generation
    answer = generate(
        server,
        "tiny_llama",
        "Pick a code:",
        guided_regex="[A-Z]{3}-[0-9]{2}",
        max_tokens=40,
        temperature=1.0,
        seed=3,
    )
    assert re.fullmatch("[A-Z]{3}-[0-9]{2}", answer["text_output"]), answer
    reply = requests.post(
        f"http://{server.http_url}/v2/models/tiny_llama/generate",
        json={"text_input": "x", "guided_json": "{not json"},
        timeout=30,
    )
    assert reply.status_code == 400 and "guided_json" in reply.json()["error"]


def test_the_openai_client_gets_log_probabilities(
    generation: tuple[Server, dict[str, Path]],
) -> None:
    server, _ = generation
    client = openai.OpenAI(base_url=f"http://{server.http_url}/v1", api_key="unused")
    completion = client.completions.create(
        model="tiny_llama", prompt="Hello", max_tokens=5, temperature=0, logprobs=2
    )
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and len(logprobs.tokens or []) == 5
    assert all(lp <= 0 for lp in logprobs.token_logprobs or [])
    # Greedy: each chosen token is the most likely one, so no alternative beats it. (Two
    # tokens that decode to the same text share one key of OpenAI's dict.)
    for chosen, top in zip(logprobs.token_logprobs or [], logprobs.top_logprobs or [], strict=True):
        assert 1 <= len(top) <= 2 and max(top.values()) <= chosen + 1e-5
    chunks = list(
        client.chat.completions.create(
            model="tiny_llama",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            temperature=0,
            logprobs=True,
            top_logprobs=1,
            stream=True,
        )
    )
    content = [
        item
        for chunk in chunks
        if chunk.choices and chunk.choices[0].logprobs is not None
        for item in chunk.choices[0].logprobs.content or []
    ]
    assert len(content) == 4 and all(len(item.top_logprobs) == 1 for item in content)


def test_tritonclient_streams_tokens_as_they_come(
    generation: tuple[Server, dict[str, Path]],
) -> None:
    server, _ = generation
    results: queue.Queue[Any] = queue.Queue()
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"The quick brown fox"], dtype=np.object_))
    stream = grpcclient.InferInput("stream", [1], "BOOL")
    stream.set_data_from_numpy(np.array([True]))
    params = grpcclient.InferInput("sampling_parameters", [1], "BYTES")
    params.set_data_from_numpy(
        np.array(
            [json.dumps({"max_tokens": 12, "temperature": 0, "ignore_eos": True}).encode()],
            dtype=np.object_,
        )
    )
    with grpcclient.InferenceServerClient(server.url) as client:
        client.start_stream(callback=lambda result, error: results.put(error or result))
        client.async_stream_infer("tiny_llama", [text, stream, params])
        received = []
        while True:
            item = results.get(timeout=60)
            assert not isinstance(item, Exception), item
            received.append(item)
            if item.get_response().parameters["triton_final_response"].bool_param:
                break
    assert len(received) >= 2
    last = received[-1]
    assert last.as_numpy("finish_reason")[0] == b"length"
    assert int(last.as_numpy("num_output_tokens")[0]) == 12


def test_generate_stream_events_and_cancellation_frees_blocks(
    generation: tuple[Server, dict[str, Path]],
) -> None:
    server, _ = generation
    url = f"http://{server.http_url}/v2/models/tiny_llama/generate_stream"
    body = {
        "text_input": "Hello",
        "stream": True,
        "max_tokens": 6,
        "temperature": 0,
        "ignore_eos": True,
    }
    reply = requests.post(url, json=body, stream=True, timeout=60)
    events = [json.loads(e.data) for e in sseclient.SSEClient(reply).events()]
    assert events and events[-1]["finish_reason"] == "length"
    # A long generation, left after its first event: it stops early and its blocks come
    # back. A random model's text may be held back to the end (unfinished characters), so
    # the prompts are tried in turn until one streams before it ends.
    body.update(max_tokens=480)
    generated = "tensorgate_generation_tokens_total"
    for prompt in ("One, two, three", "Hello", "The quick", "It is sunny", "seven", "fox"):
        before = metric(server, generated, model="tiny_llama", kind="generated")
        reply = requests.post(url, json={**body, "text_input": prompt}, stream=True, timeout=60)
        first = json.loads(next(sseclient.SSEClient(reply).events()).data)
        reply.close()
        if not first["finish_reason"]:
            break
    else:
        pytest.fail("no prompt streamed before its end")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if metric(server, "tensorgate_generation_kv_blocks", model="tiny_llama", state="used") == 0:
            break
        time.sleep(0.1)
    assert metric(server, "tensorgate_generation_kv_blocks", model="tiny_llama", state="used") == 0
    assert metric(server, generated, model="tiny_llama", kind="generated") - before < 480


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"text_input": "x", "max_tokens": 0}, "max_tokens must be at least 1"),
        ({"text_input": "x", "bogus_knob": 1}, "unknown sampling parameters"),
        ({"text_input": "word " * 600, "max_tokens": 4}, "exceeds the context"),
        ({"text_input": "x", "temperature": -1}, "temperature"),
        ({"text_input": "x", "timeout": -5}, "timeout must be a number of microseconds"),
    ],
)
def test_bad_generation_requests_are_400_with_the_reason(
    generation: tuple[Server, dict[str, Path]], body: dict[str, Any], reason: str
) -> None:
    server, _ = generation
    reply = requests.post(
        f"http://{server.http_url}/v2/models/tiny_llama/generate", json=body, timeout=60
    )
    assert reply.status_code == 400
    assert re.search(reason, reply.json()["error"])


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (Debian package curl)")
def test_the_language_models_page_examples_run_and_answer(
    generation: tuple[Server, dict[str, Path]],
) -> None:
    server, _ = generation
    script = doc_block("docs/pages/generation.md", "generation-examples")
    commands = ["curl " + c.strip() for c in re.split(r"^curl ", script, flags=re.M) if c.strip()]
    outputs = []
    for command in commands:
        result = subprocess.run(
            ["bash", "-c", command.replace("localhost:8000", server.http_url)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, (command, result.stderr)
        outputs.append(result.stdout.strip())
    assert json.loads(outputs[0])["finish_reason"] in ("length", "stop")
    assert outputs[1].startswith("data: ")
    assert json.loads(outputs[2])["data"][0]["object"] == "model"
    assert json.loads(outputs[3])["object"] == "text_completion"
    assert outputs[4].rstrip().endswith("data: [DONE]")
