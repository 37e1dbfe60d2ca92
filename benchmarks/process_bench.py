"""A pure-Python model that computes for 20 ms per call, loaded by perf_analyzer at c=8, with
gRPC health checks beside it: their latency with the model's instance in a thread of the
server and in a process of its own, in one run (alternating rounds). Then the other end: a
micro Python model (one numpy addition on [1, 16]) at c=8, thread against process, for the
throughput and the server's CPU per request (its process tree, from /proc) that the process
costs when the model's Python is short.

Goal: health-check p99 beside it at most 5 ms. Results: benchmarks/results/process.json.

usage: python benchmarks/process_bench.py [--rounds 2] [--seconds 8]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
from bench_results import start_server, write_results
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
PERF_ANALYZER = Path(os.environ.get("PERF_ANALYZER", ROOT / ".tools" / "bin" / "perf_analyzer"))

SPIN = """
import time

class Model:
    def execute(self, inputs):
        end = time.perf_counter() + 0.02
        while time.perf_counter() < end:  # pure Python: holds the GIL throughout
            pass
        return {"OUTPUT": inputs["INPUT"]}
"""


MICRO = """
class Model:
    def execute(self, inputs):
        return {"OUTPUT": inputs["INPUT"] + 1}
"""


def _repository(execution: str, name: str = "spin", code: str = SPIN) -> Path:
    root = Path(tempfile.mkdtemp(prefix="process-bench-"))
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / "model.py").write_text(code)
    batching = "max_batch_size: 8\ndynamic_batching { }\n" if name == "micro" else ""
    (root / name / "config.pbtxt").write_text(
        'backend: "python"\n'
        + (batching or "max_batch_size: 0\n")
        + 'input [{ name: "INPUT", data_type: TYPE_FP32, dims: [16] }]\n'
        'output [{ name: "OUTPUT", data_type: TYPE_FP32, dims: [16] }]\n'
        f'parameters {{ key: "execution" value {{ string_value: "{execution}" }} }}\n'
    )
    return root


def _perf_analyzer(
    model: str, address: str, interval_ms: int, trials: int, stability: int
) -> list[str]:
    """perf_analyzer at c=8 over gRPC."""
    return [
        str(PERF_ANALYZER),
        *("-m", model, "-u", address, "-i", "grpc", "--concurrency-range", "8"),
        *("--measurement-interval", str(interval_ms), "--max-trials", str(trials)),
        *("--stability-percentage", str(stability)),
    ]


def _wait_serving(address: str, model: str) -> None:
    """Until the model's gRPC health service says SERVING (at most a minute)."""
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=model), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)


def _micro(execution: str) -> dict[str, float]:
    """The micro model at c=8: throughput and server CPU per request (process tree)."""
    import tritonclient.grpc as grpcclient
    from goals_bench import _tree_cpu

    repo = _repository(execution, "micro", MICRO)
    port = 18951
    server = start_server(repo, port)
    address = f"127.0.0.1:{port}"
    try:
        client = grpcclient.InferenceServerClient(address)
        _wait_serving(address, "micro")
        before = int(
            client.get_inference_statistics("micro", as_json=True)["model_stats"][0].get(
                "inference_count", 0
            )
        )
        cpu = _tree_cpu(server.pid)
        output = subprocess.run(
            _perf_analyzer("micro", address, 3000, 5, 25),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        ).stdout
        cpu = _tree_cpu(server.pid) - cpu
        after = int(
            client.get_inference_statistics("micro", as_json=True)["model_stats"][0].get(
                "inference_count", 0
            )
        )
        found = re.search(r"Throughput: ([\d.]+) infer/sec", output)
        client.close()
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(repo, ignore_errors=True)
    return {
        "infer_per_s": float(found.group(1)) if found else float("nan"),
        "server_cpu_us_per_request": cpu / max(after - before, 1) * 1e6,
    }


def _health_latencies(address: str, stop: threading.Event) -> list[float]:
    found: list[float] = []
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            started = time.perf_counter()
            stub.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=10)
            found.append((time.perf_counter() - started) * 1e3)
            time.sleep(0.01)
    return found


def _one(execution: str, seconds: float) -> dict[str, float]:
    repo = _repository(execution)
    port = 18950
    server = start_server(repo, port)
    address = f"127.0.0.1:{port}"
    try:
        _wait_serving(address, "spin")
        idle_stop = threading.Event()
        timer = threading.Timer(2.0, idle_stop.set)
        timer.start()
        idle = _health_latencies(address, idle_stop)
        load = subprocess.Popen(
            _perf_analyzer("spin", address, int(seconds * 1000 / 3), 3, 100),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(1.0)
        stop = threading.Event()
        timer = threading.Timer(seconds - 1.5, stop.set)
        timer.start()
        loaded = _health_latencies(address, stop)
        output = load.communicate(timeout=120)[0]
        found = re.search(r"Throughput: ([\d.]+) infer/sec", output)
        throughput = float(found.group(1)) if found else float("nan")
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(repo, ignore_errors=True)

    def pct(values: list[float], share: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    return {
        "idle_p50_ms": statistics.median(idle),
        "idle_p99_ms": pct(idle, 0.99),
        "loaded_p50_ms": statistics.median(loaded),
        "loaded_p99_ms": pct(loaded, 0.99),
        "loaded_max_ms": max(loaded),
        "model_infer_per_s": throughput,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    rows = []
    for round_index in range(args.rounds):
        for execution in ("thread", "process"):
            row = {
                "round": round_index + 1,
                "execution": execution,
                **_one(execution, args.seconds),
            }
            rows.append(row)
            print(
                f"{execution:8s} health p50 {row['loaded_p50_ms']:6.2f} ms  p99 "
                f"{row['loaded_p99_ms']:6.2f} ms  max {row['loaded_max_ms']:6.2f} ms "
                f"(idle p99 {row['idle_p99_ms']:.2f} ms); model "
                f"{row['model_infer_per_s']:.1f} infer/s",
                flush=True,
            )
    micro = []
    for round_index in range(args.rounds):
        for execution in ("thread", "process"):
            row = {"round": round_index + 1, "execution": execution, **_micro(execution)}
            micro.append(row)
            print(
                f"micro {execution:8s} {row['infer_per_s']:8.1f} infer/s  server CPU "
                f"{row['server_cpu_us_per_request']:.0f} µs/request",
                flush=True,
            )
    write_results("process", rows=rows, micro=micro)


if __name__ == "__main__":
    main()
