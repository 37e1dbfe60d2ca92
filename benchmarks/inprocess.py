"""What the in-process benchmarks (http_inprocess.py, grpc_inprocess.py) share: the CPU clocks
around a measured run, the JSON line each variant's process prints, the repository, where
add_sub's batches run, and the rounds that run each variant in a fresh process."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPOSITORY = Path("/tmp/tensorgate-peer-bench/tensorgate")

Clocks = tuple[float, float, float]  # wall, this thread's CPU, the process's CPU


def add_execution_option(parser: argparse.ArgumentParser) -> None:
    """`--execution`: where tensorgate runs add_sub's batches."""
    parser.add_argument(
        "--execution",
        default="thread",
        choices=("thread", "inline", "auto", "process"),
        help="where tensorgate runs add_sub's batches (default: thread, the server's default)",
    )


def clocks() -> Clocks:
    return time.perf_counter(), time.thread_time(), time.process_time()


def report(since: Clocks, requests: int, **extra: Any) -> NoReturn:
    """Print the per-request figures since `since` as one JSON line and end the process
    (its instance threads and loaded model need no orderly shutdown)."""
    wall, loop_cpu, cpu = since
    result = {
        "loop_us": (time.thread_time() - loop_cpu) / requests * 1e6,
        "process_us": (time.process_time() - cpu) / requests * 1e6,
        "wall_us": (time.perf_counter() - wall) / requests * 1e6,
        **extra,
    }
    print(json.dumps(result), flush=True)
    os._exit(0)


def ensure_repository(repository: Path) -> None:
    """The peers' benchmark models as a tensorgate repository, built if missing."""
    if (repository / "add_sub").is_dir():
        return
    from run_peer_bench import PEERS_DIR

    script = ROOT / "benchmarks" / "peer_repository.py"
    subprocess.run(
        [sys.executable, str(script), str(PEERS_DIR / "models"), str(repository)], check=True
    )


def run_rounds(
    script: str, variants: tuple[str, ...], rounds: int, arguments: list[str]
) -> dict[str, list[dict[str, float]]]:
    """Each variant in turn, `rounds` times, each run `script --variant V *arguments` in a
    process of its own; what each printed."""
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for _ in range(rounds):
        for variant in variants:
            command = [sys.executable, script, "--variant", variant, *arguments]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            line = [x for x in out.splitlines() if x.startswith("{")][-1]
            results[variant].append(json.loads(line))
    return results


def medians(runs: list[dict[str, float]]) -> tuple[float, float, float]:
    """Median loop CPU, process CPU and wall time per request over the rounds."""
    return tuple(  # type: ignore[return-value]
        statistics.median(r[key] for r in runs) for key in ("loop_us", "process_us", "wall_us")
    )
