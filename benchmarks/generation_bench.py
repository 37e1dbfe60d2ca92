"""Continuous batching against static batching, and prefix caching on and off, in one run.

One server serves the same small Llama (random weights, tensorgate.examples.tiny_lm: 4
layers, 256 wide) four times: continuous and static scheduling, prefix caching on and off.
Every figure comes from clients on loopback reading /generate_stream (server-sent events):

1. Throughput: C concurrent clients (8, 32, 64) send 2·C requests whose prompt and output
   lengths are drawn from a seeded distribution (prompt 16-128 tokens, output 16-128
   tokens, `ignore_eos`); generated tokens per second of wall time, time to first token and
   the time between tokens (p50 / p99), continuous ÷ static.
2. Prefix caching: 16 requests sharing a 512-token system prompt, 4 at a time; median time
   to first token with the prefix cache and without.

Results go to benchmarks/results/generation.json.
usage: python benchmarks/generation_bench.py [--concurrency C ...]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests
from bench_results import machine, serve_command
from run_peer_bench import ROOT, _wait_ready

GRPC_PORT, HTTP_PORT = 18921, 18922
BASE = """backend: "generation"
max_batch_size: 0
parameters {{ key: "kv_cache_bytes" value {{ string_value: "268435456" }} }}
parameters {{ key: "max_num_seqs" value {{ string_value: "64" }} }}
parameters {{ key: "max_tokens_per_step" value {{ string_value: "{budget}" }} }}
parameters {{ key: "scheduling" value {{ string_value: "{scheduling}" }} }}
parameters {{ key: "prefix_caching" value {{ string_value: "{prefix}" }} }}
"""
MODELS = {
    "continuous": {"scheduling": "continuous", "prefix": "true", "budget": 512},
    "static": {"scheduling": "static", "prefix": "true", "budget": 16384},
    "prefix_on": {"scheduling": "continuous", "prefix": "true", "budget": 512},
    "prefix_off": {"scheduling": "continuous", "prefix": "false", "budget": 512},
}
WORDS = [
    *("the", "key", "value", "cache", "block", "sequence"),
    *("token", "model", "step", "batch", "prompt", "server"),
]


def _repository(root: Path) -> None:
    sys.path.insert(0, str(ROOT / "server"))
    from tensorgate.examples.tiny_lm import build_tiny_llama

    weights = root / ".weights"  # hidden: the repository skips it as a model
    build_tiny_llama(weights, hidden=256, layers=4, heads=8, max_positions=2048)
    for name, settings in MODELS.items():
        (root / name).mkdir(parents=True)
        (root / name / "1").symlink_to(weights, target_is_directory=True)
        (root / name / "config.pbtxt").write_text(BASE.format(**settings))


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _one(model: str, prompt: str, max_tokens: int) -> tuple[float, float, int, float]:
    """(time to first token, mean gap between tokens, tokens, total) of one streamed request."""
    body = {
        "text_input": prompt,
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    started = time.perf_counter()
    first = last = 0.0
    tokens = 0
    with requests.post(
        f"http://127.0.0.1:{HTTP_PORT}/v2/models/{model}/generate_stream",
        json=body,
        stream=True,
        timeout=600,
    ) as reply:
        for line in reply.iter_lines():
            if not line.startswith(b"data: "):
                continue
            now = time.perf_counter() - started
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"])
            first = first or now
            last = now
            tokens = event["num_output_tokens"]
    gap = (last - first) / (tokens - 1) if tokens > 1 else 0.0
    return first, gap, tokens, last


def _load(model: str, concurrency: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    work = [
        (_text(rng, rng.randint(12, 100)), rng.randint(16, 128)) for _ in range(2 * concurrency)
    ]
    results: list[tuple[float, float, int, float]] = []
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if not work:
                    return
                prompt, max_tokens = work.pop()
            outcome = _one(model, prompt, max_tokens)
            with lock:
                results.append(outcome)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ttft = sorted(r[0] for r in results)
    gaps = sorted(r[1] for r in results if r[1] > 0)

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    return {
        "tokens_per_s": round(sum(r[2] for r in results) / wall, 1),
        "ttft_p50_ms": round(pct(ttft, 0.5), 1),
        "ttft_p99_ms": round(pct(ttft, 0.99), 1),
        "itl_p50_ms": round(pct(gaps, 0.5), 2),
        "itl_p99_ms": round(pct(gaps, 0.99), 2),
    }


def _prefix(model: str) -> float:
    rng = random.Random(7)
    system = _text(rng, 480)  # about 512 tokens with this tokenizer
    times: list[float] = []
    lock = threading.Lock()
    questions = [_text(rng, 8) for _ in range(16)]
    _one(model, system + " warm", 4)  # the first request fills the cache

    def client(items: list[str]) -> None:
        for question in items:
            ttft = _one(model, f"{system} {question}", 8)[0]
            with lock:
                times.append(ttft)

    threads = [threading.Thread(target=client, args=(questions[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 64])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tensorgate-generation-")) / "repo"
    _repository(root)
    log = (root.parent / "server.log").open("wb")
    server = subprocess.Popen(
        serve_command(root, GRPC_PORT, HTTP_PORT, -1), stdout=log, stderr=subprocess.STDOUT
    )
    rows: list[dict[str, Any]] = []
    try:
        _wait_ready(f"127.0.0.1:{GRPC_PORT}")
        for concurrency in args.concurrency:
            row: dict[str, Any] = {"case": "continuous vs static", "concurrency": concurrency}
            for model in ("continuous", "static"):
                row[model] = _load(model, concurrency, seed=concurrency)
            row["ratio_tokens_per_s"] = round(
                row["continuous"]["tokens_per_s"] / row["static"]["tokens_per_s"], 2
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
        on, off = _prefix("prefix_on"), _prefix("prefix_off")
        row = {
            "case": "prefix caching, 512-token shared prompt",
            "ttft_on_ms": round(on, 1),
            "ttft_off_ms": round(off, 1),
            "ratio_off_over_on": round(off / on, 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    finally:
        server.terminate()
        server.wait(30)
    out = ROOT / "benchmarks" / "results" / "generation.json"
    out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "command": "make bench-generation",
                "machine": machine(),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
