"""HTTP side by side: tensorgate's REST shim, a bare ASGI handler (its ceiling), the same
handler with its numpy work in a thread (the ceiling with model code off the event loop),
tensorgate's shim with a free data plane (benchmarks/shim_hop.py: the ceiling of this shim) and
Triton's HTTP frontend, with perf_analyzer -i http (binary tensors) on add_sub at c=8 and c=32.

All five servers run at once on the same machine, idle but one: each round measures them in
turn. Each row is `pa.sh` from ../shared/peers, the median of the rounds.
Writes benchmarks/results/http.json and the HTTP section of benchmarks/RESULTS.md.
usage: python benchmarks/run_http_bench.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench_results import machine
from run_peer_bench import PEERS, PEERS_DIR, RESULTS, ROOT, ROW, SERVERS, Running, _run

HTTP = {
    "tensorgate": "127.0.0.1:18711",  # --http-port is the gRPC port + 10 in Running
    "bare-asgi": "127.0.0.1:18705",
    "bare-asgi-hop": "127.0.0.1:18706",
    "shim-hop": "127.0.0.1:18707",
    "triton": "127.0.0.1:28000",
}
CONCURRENCY = (8, 32)
BEGIN, END = "<!-- http:begin -->", "<!-- http:end -->"


class ScriptServer:
    """bare_asgi.py, or shim_hop.py on the repository tensorgate's own run built."""

    def __init__(self, workdir: Path, name: str) -> None:
        import subprocess

        port = HTTP[name].rsplit(":", 1)[1]
        log = (workdir / f"{name}.log").open("wb")
        if name == "shim-hop":
            script = ["shim_hop.py", port, str(workdir / "tensorgate"), "--thread-hop"]
        else:
            script = ["bare_asgi.py", port, *(["--thread-hop"] if name.endswith("-hop") else [])]
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / script[0]), *script[1:]],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        time.sleep(4)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def _measure(name: str, conc: int) -> dict[str, float | str] | None:
    cmd = ["bash", str(PEERS / "pa.sh"), HTTP[name], "add_sub", str(conc), "http"]
    if name == "shim-hop":
        # Its statistics never move (the data plane is bypassed); with no version named,
        # perf_analyzer picks the version whose count moved and finds none.
        cmd += ["-x", "1"]
    out = _run(cmd)
    match = ROW.search(out)
    shown = " ".join(cmd).replace(str(PEERS_DIR), "$PEERS_DIR").replace(str(ROOT.parent), "..")
    print(f"  {name:11s} c={conc:<3d} {match.group(0) if match else 'FAILED ' + out[-200:]}")
    if match is None:
        return None
    infer, p50, p99 = (float(g) for g in match.groups())
    return {"infer_per_s": infer, "p50_ms": p50, "p99_ms": p99, "command": shown}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="measurements per row (median)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tensorgate-http-bench"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    # Every server stays up (idle ones cost nothing measurable) and each round measures them
    # one after another, so a row's ratio compares runs minutes apart, not a whole phase of
    # this VM's drifting speed apart.
    servers: list[ScriptServer | Running] = []
    measured: dict[tuple[str, int], list[dict[str, float | str]]] = {}
    try:
        for name in HTTP:
            print(f"== starting {name}", flush=True)
            servers.append(
                ScriptServer(args.workdir, name)
                if name not in ("tensorgate", "triton")
                else Running(SERVERS[name], args.workdir)
            )
        for index in range(args.rounds):
            print(f"== round {index + 1} of {args.rounds}", flush=True)
            for conc in CONCURRENCY:
                for name in HTTP:
                    if run := _measure(name, conc):
                        measured.setdefault((name, conc), []).append(run)
    finally:
        for server in servers:
            server.stop()
    rows: list[dict[str, object]] = []
    for (name, conc), runs in measured.items():
        best = statistics.median_high([float(r["infer_per_s"]) for r in runs])
        chosen = next(r for r in runs if r["infer_per_s"] == best)
        all_runs = [round(float(r["infer_per_s"])) for r in runs]
        rows.append({"server": name, "concurrency": conc, **chosen, "runs": all_runs})
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": "python benchmarks/run_http_bench.py " + " ".join(sys.argv[1:]),
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "http.json").write_text(json.dumps(result, indent=1))
    write_section(result, ROOT / "benchmarks" / "RESULTS.md")


def write_section(result: dict[str, object], path: Path) -> None:
    rows = {(r["server"], r["concurrency"]): r for r in result["rows"]}  # type: ignore[attr-defined]
    lines = [
        BEGIN,
        f"### HTTP (REST shim), perf_analyzer -i http, add_sub, binary tensors — {result['date']}",
        "",
        f"Machine: {result['machine']}. Command: `{result['command']}` (median of the rounds).",
        "",
        "| c | tensorgate infer/s | p50 / p99 ms | bare ASGI | bare + thread hop "
        "| shim + thread hop | Triton HTTP | vs Triton (target ≥ 1.3×) "
        "| vs bare (target ≥ 0.8×) | shim + hop vs Triton | shim + hop vs bare |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(top: dict[str, object] | None, bottom: dict[str, object] | None) -> str:
        if top is None or bottom is None:
            return "n/a"
        return f"{float(top['infer_per_s']) / float(bottom['infer_per_s']):.2f}×"

    def rate(row: dict[str, object] | None) -> str:
        return f"{float(row['infer_per_s']):,.0f}" if row else "n/a"

    for conc in CONCURRENCY:
        ours, bare, hop, shim, triton = (
            rows.get((n, conc))
            for n in ("tensorgate", "bare-asgi", "bare-asgi-hop", "shim-hop", "triton")
        )
        if ours is None:
            continue
        lines.append(
            f"| {conc} | {rate(ours)} | {ours['p50_ms']} / {ours['p99_ms']} | {rate(bare)} "
            f"| {rate(hop)} | {rate(shim)} | {rate(triton)} | {ratio(ours, triton)} "
            f"| {ratio(ours, bare)} | {ratio(shim, triton)} | {ratio(shim, bare)} |"
        )
    lines += ["", "Each round's infer/s, in the order measured:"]
    for (name, conc), row in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        runs = row.get("runs")
        if isinstance(runs, list):
            lines.append(f"- {name} c={conc}: {', '.join(f'{r:,}' for r in runs)}")
    paired_rows = (
        ("tensorgate", "triton"),
        ("tensorgate", "shim-hop"),  # what the data plane and batcher cost
        ("shim-hop", "triton"),
        ("shim-hop", "bare-asgi"),  # what the shim costs
    )
    for top, bottom in paired_rows:
        for conc in CONCURRENCY:
            a, b = rows.get((top, conc)), rows.get((bottom, conc))
            if a and b and isinstance(a.get("runs"), list) and isinstance(b.get("runs"), list):
                paired = zip(a["runs"], b["runs"], strict=False)
                shown = ", ".join(f"{x / y:.2f}×" for x, y in paired)
                lines.append(f"- {top} ÷ {bottom} round by round, c={conc}: {shown}")
    lines += ["", "Row commands: `bash ../shared/peers/pa.sh HOST:PORT add_sub C http`.", END]
    text = path.read_text() if path.exists() else ""
    section = "\n".join(lines)
    if BEGIN in text:
        text = text.split(BEGIN)[0] + section + text.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
