"""A pure-Python model that computes for 20 ms per call, loaded by perf_analyzer at c=8, with
gRPC health checks beside it: their latency with the model's instance in a thread of the
server, in a process of its own, and in Triton (whose Python backend runs each instance in a
process), in one run (alternating rounds). Then the other end: a micro Python model (one
numpy addition on [1, 16]) at c=8 in the same three places, for the throughput and the
server's CPU per request (its process tree, from /proc) that the process costs when the
model's Python is short. Triton is the one ../shared/peers/setup.sh installs; without it,
tensorgate's rows only.

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
import textwrap
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
import triton_peer
from bench_results import start_server, write_results
from goals_bench import _tree_cpu
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
PERF_ANALYZER = Path(os.environ.get("PERF_ANALYZER", ROOT / ".tools" / "bin" / "perf_analyzer"))

# The models' `execute` bodies: tensorgate's Model class and Triton's TritonPythonModel
# (benchmarks/triton_peer.py) run the same lines.
SPIN = """\
import time
end = time.perf_counter() + 0.02
while time.perf_counter() < end:  # pure Python: holds the GIL throughout
    pass
return {"OUTPUT": inputs["INPUT"]}
"""
MICRO = """\
return {"OUTPUT": inputs["INPUT"] + 1}
"""
VARIANTS = ("thread", "process", "triton")


class _Served:
    """A server of one model for one measurement: tensorgate with the model's instance in a
    thread or a process, or Triton (its Python backend runs every instance in a process)."""

    def __init__(self, variant: str, name: str, body: str, port: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="process-bench-"))
        (self.root / name / "1").mkdir(parents=True)
        batching = "max_batch_size: 8\ndynamic_batching { }\n" if name == "micro" else ""
        config = (
            'backend: "python"\n'
            + (batching or "max_batch_size: 0\n")
            + 'input [{ name: "INPUT", data_type: TYPE_FP32, dims: [16] }]\n'
            'output [{ name: "OUTPUT", data_type: TYPE_FP32, dims: [16] }]\n'
        )
        self.address = f"127.0.0.1:{port}"
        self._triton: triton_peer.Triton | None = None
        self._server: subprocess.Popen[bytes] | None = None
        if variant == "triton":
            code = triton_peer.python_model(textwrap.indent(body, "    "))
        else:
            code = "class Model:\n    def execute(self, inputs):\n" + textwrap.indent(body, " " * 8)
            config += f'parameters {{ key: "execution" value {{ string_value: "{variant}" }} }}\n'
        (self.root / name / "1" / "model.py").write_text(code)
        (self.root / name / "config.pbtxt").write_text(config)
        if variant == "triton":
            self._triton = triton_peer.Triton(self.root, port, port + 1, port + 2)
            self.pid = self._triton.pid
        else:
            self._server = start_server(self.root, port)
            self.pid = self._server.pid
        _wait_serving(self.address, name)

    def served(self, model: str) -> int:
        """Requests the model has answered (ModelStatistics: both servers keep them)."""
        import tritonclient.grpc as grpcclient

        with grpcclient.InferenceServerClient(self.address) as client:
            stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        return int(stats.get("inference_count", 0))

    def stop(self) -> None:
        if self._triton is not None:
            self._triton.stop()
        if self._server is not None:
            self._server.terminate()
            self._server.wait(30)
        shutil.rmtree(self.root, ignore_errors=True)


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


def _micro(variant: str) -> dict[str, float]:
    """The micro model at c=8: throughput and server CPU per request (process tree)."""
    served = _Served(variant, "micro", MICRO, 18951)
    try:
        before, cpu = served.served("micro"), _tree_cpu(served.pid)
        output = subprocess.run(
            _perf_analyzer("micro", served.address, 3000, 5, 25),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        ).stdout
        cpu = _tree_cpu(served.pid) - cpu
        after = served.served("micro")
        found = re.search(r"Throughput: ([\d.]+) infer/sec", output)
    finally:
        served.stop()
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


def _one(variant: str, seconds: float) -> dict[str, float]:
    served = _Served(variant, "spin", SPIN, 18950)
    address = served.address
    try:
        idle_stop = threading.Event()
        timer = threading.Timer(2.0, idle_stop.set)
        timer.start()
        idle = _health_latencies(address, idle_stop)
        before, cpu = served.served("spin"), _tree_cpu(served.pid)
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
        cpu = _tree_cpu(served.pid) - cpu
        requests = served.served("spin") - before
        found = re.search(r"Throughput: ([\d.]+) infer/sec", output)
        throughput = float(found.group(1)) if found else float("nan")
    finally:
        served.stop()

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
        "server_cpu_us_per_request": cpu / max(requests, 1) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    variants = VARIANTS if triton_peer.available() else VARIANTS[:2]
    if len(variants) < len(VARIANTS):
        print("Triton is not installed (../shared/peers/setup.sh): tensorgate only", flush=True)
    rows = []
    for round_index in range(args.rounds):
        for execution in variants:
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
                f"{row['model_infer_per_s']:.1f} infer/s, server CPU "
                f"{row['server_cpu_us_per_request']:.0f} µs/request",
                flush=True,
            )
    micro = []
    for round_index in range(args.rounds):
        for execution in variants:
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
