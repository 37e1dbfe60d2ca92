"""Where batches run, side by side: unary add_sub at c=32 against tensorgate with
`--execution thread`, `inline` and `auto`, and the bare grpc.aio handler (the ceiling of a
Python gRPC server), in alternating rounds of one run. perf_analyzer and the tritonclient
aio generator measure each.

Goal: add_sub unary c=32 at 0.85x the bare handler or more. Results:
benchmarks/results/execution.json.

usage: python benchmarks/execution_bench.py [--rounds 2] [--seconds 6]
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_results import write_results
from run_peer_bench import SERVERS, side_by_side

MODEL, CONCURRENCY = "add_sub", 32


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    workdir = Path(os.environ.get("BENCH_WORKDIR", "/tmp/tensorgate-execution-bench"))
    workdir.mkdir(parents=True, exist_ok=True)
    base = replace(SERVERS["tensorgate"], models=(MODEL,))
    servers = [
        (f"tensorgate --execution {e}", base, ("--execution", e))
        for e in ("thread", "inline", "auto")
    ]
    servers.append(("bare grpc.aio", SERVERS["bare-grpc"], ()))
    rows, summary = side_by_side(servers, MODEL, CONCURRENCY, args.rounds, args.seconds, workdir)
    for key, value in summary.items():
        tool = key.rsplit(" ", 1)[1]
        bare = summary.get(f"bare grpc.aio {tool}")
        ratio = f"  {value / bare:.2f}x bare" if bare else ""
        print(f"{key:36s} {value:9.1f} infer/s{ratio}")
    write_results("execution", rows=rows, median_infer_per_s=summary)


if __name__ == "__main__":
    main()
