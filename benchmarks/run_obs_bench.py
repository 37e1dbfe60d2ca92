"""The cost of observability: add_sub at c=32 (perf_analyzer, gRPC) with metrics and logging
on and off, in one run on the same machine, configurations interleaved round by round.

  off       --metrics-port -1 --access-log-rate 0   (request ids are still echoed)
  default   metrics on, access log sampled at 1 %, JSON logs at INFO
  all-logs  metrics on, every request access-logged
  traced    default + OpenTelemetry spans for every request, console exporter to the log file
  trace-file  default + every request in Triton's JSON trace file (--trace-file)

Target (issue 5): default costs at most 5 % of the off throughput.
Writes benchmarks/results/observability.json and the section of benchmarks/RESULTS.md.
usage: python benchmarks/run_obs_bench.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench_results import machine
from run_peer_bench import PEERS, PEERS_DIR, RESULTS, ROOT, ROW, SERVERS, Running, _run

CONFIGS: dict[str, tuple[str, ...]] = {
    "off": ("--metrics-port", "-1", "--access-log-rate", "0"),
    "default": (),
    "all-logs": ("--access-log-rate", "1"),
    "traced": ("--trace-exporter", "console"),
    "trace-file": ("--trace-file", "/tmp/tensorgate-obs-bench/trace.json"),
}
CONCURRENCY = 32
BEGIN, END = "<!-- observability:begin -->", "<!-- observability:end -->"


def _measure(url: str) -> tuple[float, float, float, str] | None:
    cmd = ["bash", str(PEERS / "pa.sh"), url, "add_sub", str(CONCURRENCY), "grpc"]
    out = _run(cmd)
    match = ROW.search(out)
    if match is None:
        print(f"  FAILED {out.strip()[-300:]}")
        return None
    shown = " ".join(cmd).replace(str(PEERS_DIR), "$PEERS_DIR").replace(str(ROOT.parent), "..")
    infer, p50, p99 = (float(g) for g in match.groups())
    return infer, p50, p99, shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tensorgate-obs-bench"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    server = SERVERS["tensorgate"]
    runs: dict[str, list[tuple[float, float, float, str]]] = {name: [] for name in CONFIGS}
    for round_no in range(args.rounds):
        order = list(CONFIGS) if round_no % 2 == 0 else list(reversed(CONFIGS))
        for name in order:
            running = Running(server, args.workdir, CONFIGS[name])
            try:
                result = _measure(server.grpc)
            finally:
                running.stop()
            if result:
                runs[name].append(result)
                print(f"  round {round_no + 1} {name:9s} {result[0]:9.1f} infer/s", flush=True)
    rows = []
    for name, results in runs.items():
        if not results:
            continue
        median = statistics.median_high(r[0] for r in results)
        chosen = next(r for r in results if r[0] == median)
        rows.append(
            {
                "config": name,
                "flags": " ".join(CONFIGS[name]) or "(defaults)",
                "infer_per_s": median,
                "p50_ms": chosen[1],
                "p99_ms": chosen[2],
                "all_runs": [r[0] for r in results],
                "command": chosen[3],
            }
        )
    result = {"machine": machine(), "rows": rows}
    (RESULTS / "observability.json").write_text(json.dumps(result, indent=2) + "\n")
    _write_markdown(result)


def _write_markdown(result: dict[str, object]) -> None:
    rows: list[dict[str, object]] = result["rows"]  # type: ignore[assignment]
    off = next((float(r["infer_per_s"]) for r in rows if r["config"] == "off"), 0.0)  # type: ignore[arg-type]
    lines = [
        BEGIN,
        f"Machine: {result['machine']}. Each figure is the median of the rounds (all runs shown).",
        "",
        "| configuration | flags | infer/s | p50 ms | p99 ms | vs off | runs |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ratio = float(r["infer_per_s"]) / off if off else 0.0  # type: ignore[arg-type]
        runs = ", ".join(f"{v:.0f}" for v in r["all_runs"])  # type: ignore[attr-defined]
        lines.append(
            f"| {r['config']} | `{r['flags']}` | {float(r['infer_per_s']):,.0f} | "  # type: ignore[arg-type]
            f"{r['p50_ms']} | {r['p99_ms']} | {ratio:.3f}× | {runs} |"
        )
    command = rows[0]["command"] if rows else ""
    lines += ["", f"Command per row: `{command}` against a server started with the flags.", END]
    path = ROOT / "benchmarks" / "RESULTS.md"
    text = path.read_text()
    block = "\n".join(lines)
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text += "\n## Observability cost (issue 5)\n\n`make bench-obs` = "
        text += "`python benchmarks/run_obs_bench.py`\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
