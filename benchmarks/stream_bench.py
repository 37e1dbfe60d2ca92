"""Streams and state, measured against what a client would do without them.

1. The pipeline ensemble (preprocess → add_sub → postprocess, server-side) against the same
   three models called one after another by the client: three round trips per answer.
   Closed loops of C client threads each, in turn, on one server; the ratio of requests per
   second and of mean latency.
2. A decoupled model's first response against its last: the `words` model streaming a
   32-word text (one response per word, about 1 ms apart) over ModelStreamInfer; median
   time to the first response and to the final flag.

Both run against the bundled example repository on loopback, client and server on the same
cores. Results go to benchmarks/results/streams.json.
usage: python benchmarks/stream_bench.py [--seconds S] [--concurrency C ...]
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from bench_results import machine, serve_command
from run_peer_bench import ROOT, _wait_ready

GRPC_PORT, HTTP_PORT = 18901, 18902
RAW = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)


def _tensor(name: str, array: np.ndarray) -> Any:
    tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def ensemble_once(client: grpcclient.InferenceServerClient) -> None:
    client.infer("pipeline", [_tensor("RAW", RAW)])


def three_trips_once(client: grpcclient.InferenceServerClient) -> None:
    pre = client.infer("preprocess", [_tensor("RAW", RAW)])
    mid = client.infer(
        "add_sub",
        [_tensor("INPUT0", pre.as_numpy("DOUBLED")), _tensor("INPUT1", pre.as_numpy("SHIFTED"))],
    )
    client.infer(
        "postprocess",
        [_tensor("SUM", mid.as_numpy("OUTPUT0")), _tensor("DIFF", mid.as_numpy("OUTPUT1"))],
    )


def closed_loop(call: Any, concurrency: int, seconds: float) -> tuple[float, float]:
    """(answers per second, mean latency in ms) of `concurrency` threads calling in a loop."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker() -> None:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{GRPC_PORT}")
        mine = []
        while time.monotonic() < deadline:
            started = time.perf_counter()
            call(client)
            mine.append(time.perf_counter() - started)
        client.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    return len(latencies) / elapsed, statistics.fmean(latencies) * 1000


def first_and_last(requests: int) -> tuple[float, float]:
    """Median ms to the first response and to the final flag of a 32-word stream."""
    text = np.array([" ".join(f"word{i}" for i in range(32)).encode()], dtype=np.object_)
    tensor = grpcclient.InferInput("text_input", [1], "BYTES")
    tensor.set_data_from_numpy(text)
    results: queue.Queue[Any] = queue.Queue()
    firsts, lasts = [], []
    with grpcclient.InferenceServerClient(f"127.0.0.1:{GRPC_PORT}") as client:
        client.start_stream(callback=lambda result, error: results.put(error or result))
        for _ in range(requests):
            started = time.perf_counter()
            client.async_stream_infer("words", [tensor], enable_empty_final_response=True)
            first = None
            while True:
                item = results.get(timeout=30)
                if isinstance(item, Exception):
                    raise item
                first = first or time.perf_counter() - started
                if item.get_response().parameters["triton_final_response"].bool_param:
                    break
            firsts.append(first)
            lasts.append(time.perf_counter() - started)
    return statistics.median(firsts) * 1000, statistics.median(lasts) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tensorgate-streams-"))
    repository = workdir / "repo"
    subprocess.run([sys.executable, "-m", "tensorgate.examples.build", str(repository)], check=True)
    log = (workdir / "server.log").open("wb")
    server = subprocess.Popen(
        serve_command(repository, GRPC_PORT, HTTP_PORT, -1), stdout=log, stderr=subprocess.STDOUT
    )
    rows: list[dict[str, Any]] = []
    try:
        _wait_ready(f"127.0.0.1:{GRPC_PORT}")
        for concurrency in args.concurrency:
            for round_ in range(args.rounds):
                ensemble = closed_loop(ensemble_once, concurrency, args.seconds)
                chain = closed_loop(three_trips_once, concurrency, args.seconds)
                row = {
                    "case": "ensemble vs three round trips",
                    "concurrency": concurrency,
                    "round": round_ + 1,
                    "ensemble_per_s": round(ensemble[0], 1),
                    "three_trips_per_s": round(chain[0], 1),
                    "ensemble_ms": round(ensemble[1], 3),
                    "three_trips_ms": round(chain[1], 3),
                    "throughput_ratio": round(ensemble[0] / chain[0], 2),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
        first, last = first_and_last(50)
        row = {
            "case": "decoupled first vs last response",
            "words": 32,
            "first_ms": round(first, 2),
            "last_ms": round(last, 2),
            "first_over_last": round(first / last, 3),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    finally:
        server.terminate()
        server.wait(30)
    out = ROOT / "benchmarks" / "results" / "streams.json"
    out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "command": "make bench-streams",
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
