"""Worker processes side by side: unary add_sub at c=32 against tensorgate `--workers 1`,
`--workers 2` and Triton, in one run on one machine, in alternating rounds (the machine's
speed drifts between minutes; each round measures every server once).

Every row is measured with perf_analyzer (`../shared/peers/pa.sh`) and with the tritonclient
aio closed-loop generator (`loadgen.py`). Results: benchmarks/results/workers.json.

usage: python benchmarks/workers_bench.py [--rounds 2] [--seconds 6] [--workers 1,2]
Needs `bash ../shared/peers/setup.sh` once (peers' venvs, perf_analyzer, models).
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
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--no-triton", action="store_true")
    args = parser.parse_args()
    workdir = Path(os.environ.get("BENCH_WORKDIR", "/tmp/tensorgate-workers-bench"))
    workdir.mkdir(parents=True, exist_ok=True)
    base = SERVERS["tensorgate"]
    servers = [
        (f"tensorgate --workers {n}", replace(base, models=(MODEL,)), ("--workers", n))
        for n in args.workers.split(",")
    ]
    if not args.no_triton:
        servers.append(("triton", replace(SERVERS["triton"], models=(MODEL,)), ()))
    rows, summary = side_by_side(servers, MODEL, CONCURRENCY, args.rounds, args.seconds, workdir)
    one = [k for k in summary if "--workers 1 " in k]
    for key in list(summary):
        tool = key.rsplit(" ", 1)[1]
        base_key = next((k for k in one if k.endswith(tool)), None)
        if base_key:
            print(
                f"{key:32s} {summary[key]:9.1f} infer/s  {summary[key] / summary[base_key]:.2f}x"
                " of --workers 1"
            )
    write_results("workers", rows=rows, median_infer_per_s=summary)


if __name__ == "__main__":
    main()
