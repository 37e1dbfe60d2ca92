"""System shared memory against raw contents, side by side: a 16 MB FP32 identity model
(ONNX) at c=4 under perf_analyzer, inputs and outputs through shared memory or in the gRPC
messages, with the server's CPU time per request from /proc (its process tree, over the
requests its statistics counted). Beside it, where ../shared/peers installed it, Triton
serving the same identity as a Python-backend model, measured the same way. Alternating
rounds, one run.

Goal: at least 3 times the throughput of raw contents. Results:
benchmarks/results/shared_memory.json.

usage: python benchmarks/shm_bench.py [--rounds 2]
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
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import triton_peer
from bench_results import start_server, write_results
from goals_bench import _tree_cpu

ROOT = Path(__file__).resolve().parents[1]
PERF_ANALYZER = Path(os.environ.get("PERF_ANALYZER", ROOT / ".tools" / "bin" / "perf_analyzer"))
ELEMENTS = 4 * 2**20  # 16 MB of FP32


def _repository() -> Path:
    import onnx
    from onnx import TensorProto, helper

    root = Path(tempfile.mkdtemp(prefix="shm-bench-"))
    (root / "identity" / "1").mkdir(parents=True)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT"], ["OUTPUT"])],
        "identity",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, [ELEMENTS])],
        [helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, [ELEMENTS])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(root / "identity" / "1" / "model.onnx"))
    (root / "identity" / "config.pbtxt").write_text("max_batch_size: 0\n")
    return root


def _triton_repository() -> Path:
    """The same identity for Triton, as a Python-backend model (its build here has no
    onnxruntime backend; the peers serve their ONNX files the same way)."""
    root = Path(tempfile.mkdtemp(prefix="shm-bench-triton-"))
    (root / "identity" / "1").mkdir(parents=True)
    (root / "identity" / "1" / "model.py").write_text(
        triton_peer.python_model('    return {"OUTPUT": inputs["INPUT"]}')
    )
    (root / "identity" / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 0\n'
        f'input [{{ name: "INPUT", data_type: TYPE_FP32, dims: [{ELEMENTS}] }}]\n'
        f'output [{{ name: "OUTPUT", data_type: TYPE_FP32, dims: [{ELEMENTS}] }}]\n'
    )
    return root


def _served(port: int) -> int:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        stats = client.get_inference_statistics("identity", as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0))


def _measure(port: int, pid: int, shm: bool) -> dict[str, float]:
    args = [
        str(PERF_ANALYZER),
        *("-m", "identity", "-u", f"127.0.0.1:{port}", "-i", "grpc"),
        *("--concurrency-range", "4", "--measurement-interval", "3000"),
        *("--max-trials", "5", "--stability-percentage", "50"),
    ]
    if shm:
        args += ["--shared-memory", "system", "--output-shared-memory-size", str(ELEMENTS * 4)]
    # CPU over every request of the run, warm-up and unsettled windows included.
    served, cpu_before = _served(port), _tree_cpu(pid)
    out = subprocess.run(args, capture_output=True, text=True, timeout=300).stdout
    cpu = _tree_cpu(pid) - cpu_before
    count = _served(port) - served
    rate = float(re.search(r"Throughput: ([\d.]+) infer/sec", out).group(1))  # type: ignore[union-attr]
    return {"infer_per_s": rate, "server_cpu_ms_per_request": cpu * 1e3 / max(count, 1)}


class _Servers:
    """tensorgate serving the ONNX identity and, where installed, Triton the Python one."""

    def __init__(self) -> None:
        self.repositories = [_repository()]
        self.ports = {"tensorgate": 18960}
        self._server = start_server(self.repositories[0], 18960)
        self.pids = {"tensorgate": self._server.pid}
        self._triton: triton_peer.Triton | None = None
        if triton_peer.available():
            self.repositories.append(_triton_repository())
            self._triton = triton_peer.Triton(self.repositories[1], 18970, 18971, 18972)
            self.ports["triton"], self.pids["triton"] = 18970, self._triton.pid
        else:
            print("Triton is not installed (../shared/peers/setup.sh): tensorgate only")

    def stop(self) -> None:
        self._server.terminate()
        self._server.wait(30)
        if self._triton is not None:
            self._triton.stop()
        for repository in self.repositories:
            shutil.rmtree(repository, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    servers = _Servers()
    rows: list[dict[str, Any]] = []
    try:
        time.sleep(5)
        for round_index in range(args.rounds):
            for name, port in servers.ports.items():
                for shm in (False, True):
                    row = {
                        "round": round_index + 1,
                        "server": name,
                        "shared_memory": shm,
                        **_measure(port, servers.pids[name], shm),
                    }
                    rows.append(row)
                    print(
                        f"{name:10s} {'shared memory' if shm else 'raw contents':14s} "
                        f"{row['infer_per_s']:7.1f} infer/s  server CPU "
                        f"{row['server_cpu_ms_per_request']:.2f} ms/request",
                        flush=True,
                    )
    finally:
        servers.stop()
    ratios = {}
    for name in servers.ports:
        ratios[name] = statistics.median(
            r["infer_per_s"] for r in rows if r["server"] == name and r["shared_memory"]
        ) / statistics.median(
            r["infer_per_s"] for r in rows if r["server"] == name and not r["shared_memory"]
        )
        print(f"{name}: shared memory / raw contents {ratios[name]:.2f}x")
    write_results(
        "shared_memory",
        rows=rows,
        throughput_ratio=ratios["tensorgate"],
        triton_throughput_ratio=ratios.get("triton"),
    )


if __name__ == "__main__":
    main()
