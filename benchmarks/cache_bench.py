"""The response cache on the bundled CNN (TorchScript, 3x32x32 in, 10 out), in one run:
the same server with the cache on, answering hits (one image, over and over) and misses
(every image new), beside the server without a cache on the same new images. Closed loop,
one client at a time (latency) and 8 (throughput), over gRPC with tritonclient.

Goals: hits at least 10 times faster than misses; a 0 % hit rate costs at most 3 %
against no cache. Results: benchmarks/results/cache.json.

usage: python benchmarks/cache_bench.py [--seconds 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import tritonclient.grpc as grpcclient
from bench_results import start_server, write_results

ROOT = Path(__file__).resolve().parents[1]


def _repository(cached: bool) -> Path:
    root = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    shutil.copytree(ROOT / "model_repository" / "cnn", root / "cnn")
    if cached:
        config = root / "cnn" / "config.pbtxt"
        config.write_text(config.read_text() + "response_cache { enable: true }\n")
    return root


def _serve(repo: Path, port: int, cache: bool) -> subprocess.Popen[bytes]:
    process = start_server(repo, port, *(["--cache-size", str(256 * 2**20)] if cache else []))
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    for _ in range(600):
        try:
            if client.is_model_ready("cnn"):
                return process
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError("server not ready")


def _server_time(port: int) -> tuple[int, int]:
    """Requests answered and their total time inside the server (ModelStatistics)."""
    with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        success = client.get_inference_statistics("cnn").model_stats[0].inference_stats.success
    return success.count, success.ns


def _load(port: int, same: bool, clients: int, seconds: float) -> tuple[float, float]:
    """Requests per second, and median latency in ms."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        fixed = np.ones((1, 3, 32, 32), np.float32)
        with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as c:
            mine = []
            while time.monotonic() < stop:
                image = fixed if same else rng.random((1, 3, 32, 32), dtype=np.float32)
                tensor = grpcclient.InferInput("IMAGE", [1, 3, 32, 32], "FP32")
                tensor.set_data_from_numpy(image)
                started = time.perf_counter()
                c.infer("cnn", [tensor])
                mine.append(time.perf_counter() - started)
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies) / seconds, statistics.median(latencies) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for round_index in range(args.rounds):
        for label, cached, same in (
            ("hits", True, True),
            ("misses", True, False),
            ("no cache", False, False),
        ):
            repo = _repository(cached)
            server = _serve(repo, 18901, cached)
            try:
                _load(18901, same, 1, 1.0)  # warm up
                for clients in (1, 8):
                    before = _server_time(18901)
                    rate, p50 = _load(18901, same, clients, args.seconds)
                    after = _server_time(18901)
                    server_ms = (after[1] - before[1]) / max(1, after[0] - before[0]) / 1e6
                    rows.append(
                        {
                            "round": round_index + 1,
                            "case": label,
                            "clients": clients,
                            "infer_per_s": rate,
                            "p50_ms": p50,
                            "server_ms": server_ms,
                        }
                    )
                    print(
                        f"{label:9s} c={clients}: {rate:8.1f} infer/s  p50 {p50:6.2f} ms  "
                        f"in the server {server_ms:6.3f} ms",
                        flush=True,
                    )
            finally:
                server.terminate()
                server.wait(30)
                shutil.rmtree(repo, ignore_errors=True)

    def median(case: str, clients: int, key: str) -> float:
        return statistics.median(
            r[key] for r in rows if r["case"] == case and r["clients"] == clients
        )

    summary = {
        "hit_vs_miss_server_time_c1": median("misses", 1, "server_ms")
        / median("hits", 1, "server_ms"),
        "hit_vs_miss_latency_c1": median("misses", 1, "p50_ms") / median("hits", 1, "p50_ms"),
        "hit_vs_miss_throughput_c8": median("hits", 8, "infer_per_s")
        / median("misses", 8, "infer_per_s"),
        "miss_vs_no_cache_throughput_c8": median("misses", 8, "infer_per_s")
        / median("no cache", 8, "infer_per_s"),
    }
    for key, value in summary.items():
        print(f"{key}: {value:.2f}x")
    write_results("cache", rows=rows, summary=summary)


if __name__ == "__main__":
    main()
