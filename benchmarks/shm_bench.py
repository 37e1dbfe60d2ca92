"""System shared memory against raw contents, side by side: a 16 MB FP32 identity model
(ONNX) at c=4 under perf_analyzer, inputs and outputs through shared memory or in the gRPC
messages, with the server's CPU time per request from /proc. Alternating rounds, one run.

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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_results import start_server, write_results

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


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(port: int, pid: int, shm: bool) -> dict[str, float]:
    args = [
        str(PERF_ANALYZER),
        "-m",
        "identity",
        "-u",
        f"127.0.0.1:{port}",
        "-i",
        "grpc",
        "--concurrency-range",
        "4",
        "--measurement-interval",
        "3000",
        "--max-trials",
        "5",
        "--stability-percentage",
        "50",
    ]
    if shm:
        args += ["--shared-memory", "system", "--output-shared-memory-size", str(ELEMENTS * 4)]
    cpu_before = _cpu_s(pid)
    out = subprocess.run(args, capture_output=True, text=True, timeout=300).stdout
    cpu = _cpu_s(pid) - cpu_before
    rate = float(re.search(r"Throughput: ([\d.]+) infer/sec", out).group(1))  # type: ignore[union-attr]
    count = int(re.search(r"Inference count: (\d+)", out).group(1))  # type: ignore[union-attr]
    return {"infer_per_s": rate, "server_cpu_ms_per_request": cpu * 1e3 / max(count, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    repo = _repository()
    port = 18960
    server = start_server(repo, port)
    rows = []
    try:
        time.sleep(5)
        for round_index in range(args.rounds):
            for shm in (False, True):
                row = {
                    "round": round_index + 1,
                    "shared_memory": shm,
                    **_measure(port, server.pid, shm),
                }
                rows.append(row)
                print(
                    f"{'shared memory' if shm else 'raw contents':14s} "
                    f"{row['infer_per_s']:7.1f} infer/s  server CPU "
                    f"{row['server_cpu_ms_per_request']:.2f} ms/request",
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(repo, ignore_errors=True)
    ratio = statistics.median(r["infer_per_s"] for r in rows if r["shared_memory"]) / (
        statistics.median(r["infer_per_s"] for r in rows if not r["shared_memory"])
    )
    print(f"shared memory / raw contents: {ratio:.2f}x")
    write_results("shared_memory", rows=rows, throughput_ratio=ratio)


if __name__ == "__main__":
    main()
