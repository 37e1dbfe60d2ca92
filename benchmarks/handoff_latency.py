"""How long a batch waits between the event loop and its instance thread, under load.

Runs tensorgate on the peers' add_sub under perf_analyzer (-i http, or --protocol grpc) at
each concurrency and times, per batch, inside the server:

- start: from an instance being handed a job until its thread begins it, apart for jobs the
  loop gave a sleeping (idle) instance and batches an instance pulled itself as it finished
  the previous one;
- run: the batch on the thread (merge, the model, split), wall time;
- report: from the thread finishing until the loop delivers the results.

The timing wraps the scheduler's and the pool's functions from outside (this script imports
the server with the wrappers installed); the server's code is unchanged. --switch-interval
also runs the server with sys.setswitchinterval(S), to show whether CPython's GIL switch
interval governs the wait.
usage: python benchmarks/handoff_latency.py [--protocol http|grpc] [--concurrency 8 32]
       [--switch-interval S ...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_results import serve_command
from run_peer_bench import PEERS_DIR, _wait_ready, ensure_repository

PORTS = (18731, 18732, 18733)  # gRPC, HTTP, metrics


def _instrument(out: Path) -> None:
    """In the server process: time every instance job; SIGUSR1 resets, SIGUSR2 dumps."""
    from tensorgate.batching import scheduler
    from tensorgate.executors import instance_pool

    lock = threading.Lock()
    stats: dict[str, list[int]] = {}

    def note(name: str, ns: int) -> None:
        with lock:
            stats.setdefault(name, []).append(ns)

    def timed(kind: str, handed_ns: int, work: Any, done: Any) -> tuple[Any, Any]:
        ended = [0]

        def timed_work(backend: Any) -> Any:
            note(f"start ({kind})", time.perf_counter_ns() - handed_ns)
            try:
                return work(backend)
            finally:
                ended[0] = time.perf_counter_ns()

        def timed_done(result: Any) -> None:
            note("report", time.perf_counter_ns() - ended[0])
            done(result)

        return timed_work, timed_done

    run = instance_pool.InstancePool.run  # the loop wakes an idle instance

    def timed_run(self: Any, work: Any, done: Any) -> None:
        run(self, *timed("woken", time.perf_counter_ns(), work, done))

    pull = scheduler.Scheduler._pull  # an instance takes its next batch as it finishes one

    def timed_pull(self: Any) -> Any:
        job = pull(self)
        return None if job is None else timed("pulled", time.perf_counter_ns(), *job)

    run_batch = scheduler._run_batch

    def timed_run_batch(staging: Any, inputs: list[Any], rows: list[int], backend: Any) -> Any:
        began = time.perf_counter_ns()
        try:
            return run_batch(staging, inputs, rows, backend)
        finally:
            note("run", time.perf_counter_ns() - began)
            note("rows", sum(rows))

    instance_pool.InstancePool.run = timed_run  # type: ignore[method-assign]
    scheduler.Scheduler._pull = timed_pull  # type: ignore[method-assign]
    scheduler._run_batch = timed_run_batch

    def reset(*_: object) -> None:
        with lock:
            stats.clear()

    def dump(*_: object) -> None:
        with lock:
            out.write_text(json.dumps(stats))

    signal.signal(signal.SIGUSR1, reset)
    signal.signal(signal.SIGUSR2, dump)


def _serve(argv: list[str]) -> None:
    interval = float(os.environ.get("HANDOFF_SWITCH_INTERVAL", "0"))
    if interval:
        sys.setswitchinterval(interval)
    _instrument(Path(os.environ["HANDOFF_OUT"]))
    from tensorgate.cli import main

    sys.exit(main(argv))


def _summary(stats: dict[str, list[int]], seconds: float) -> dict[str, Any]:
    def mean_us(values: list[int]) -> float:
        return sum(values) / len(values) / 1e3 if values else float("nan")

    def pct_us(values: list[int], q: float) -> float:
        ordered = sorted(values)
        return ordered[int(q * (len(ordered) - 1))] / 1e3 if ordered else float("nan")

    woken = stats.get("start (woken)", [])
    rows = stats.get("rows", [])
    return {
        "infer_per_s": sum(rows) / seconds,
        "batches": len(rows),
        "avg_batch": sum(rows) / max(len(rows), 1),
        "woken_share": len(woken) / max(len(rows), 1),
        "start_woken_us": mean_us(woken),
        "start_woken_p50_us": pct_us(woken, 0.5),
        "start_woken_p90_us": pct_us(woken, 0.9),
        "start_pulled_us": mean_us(stats.get("start (pulled)", [])),
        "run_us": mean_us(stats.get("run", [])),
        "report_us": mean_us(stats.get("report", [])),
    }


def _measure(
    repository: Path, protocol: str, concurrency: int, interval: float, seconds: float
) -> dict[str, Any]:
    grpc_port, http_port, metrics_port = PORTS
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stats.json"
        env = dict(os.environ, HANDOFF_OUT=str(out), HANDOFF_SWITCH_INTERVAL=str(interval))
        args = serve_command(repository, grpc_port, http_port, metrics_port)[3:]
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_ready(f"127.0.0.1:{grpc_port}")
            load = subprocess.Popen(
                [
                    str(PEERS_DIR / "bin" / "perf_analyzer"),
                    *("-m", "add_sub", "-i", protocol),
                    *("-u", f"127.0.0.1:{http_port if protocol == 'http' else grpc_port}"),
                    *("--concurrency-range", str(concurrency)),
                    *("--measurement-interval", str(int(seconds * 1000) + 3000)),
                    *("--max-trials", "1", "--stability-percentage", "999"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(2)  # past perf_analyzer's warm-up
            server.send_signal(signal.SIGUSR1)
            time.sleep(seconds)
            server.send_signal(signal.SIGUSR2)
            _wait(lambda: out.exists(), 10)
            stats = json.loads(out.read_text())
            load.terminate()
            load.wait(30)
        finally:
            server.terminate()
            server.wait(30)
    return {"concurrency": concurrency, "switch_interval_s": interval, **_summary(stats, seconds)}


def _wait(ready: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {seconds} s")
        time.sleep(0.1)


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        _serve(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--switch-interval", type=float, nargs="*", default=[])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tensorgate-peer-bench"))
    args = parser.parse_args()
    repository = args.workdir / "tensorgate"
    ensure_repository(repository)
    print(
        "| c | switch interval | infer/s | avg batch | woken | start, woken µs "
        "(p50 / p90) | start, pulled µs | run µs | report µs |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for concurrency in args.concurrency:
        for interval in [0.0, *args.switch_interval]:
            r = _measure(repository, args.protocol, concurrency, interval, args.seconds)
            shown = f"{interval * 1e6:.0f} µs" if interval else "default (5 ms)"
            print(
                f"| {concurrency} | {shown} | {r['infer_per_s']:.0f} | {r['avg_batch']:.2f} "
                f"| {r['woken_share']:.0%} | {r['start_woken_us']:.0f} "
                f"({r['start_woken_p50_us']:.0f} / {r['start_woken_p90_us']:.0f}) "
                f"| {r['start_pulled_us']:.0f} | {r['run_us']:.0f} | {r['report_us']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
