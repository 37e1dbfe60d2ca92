"""Side-by-side benchmark: tensorgate against Triton, MLServer, KServe, a bare grpc.aio
handler and raw in-process onnxruntime, in one run on one machine.

Servers run one at a time (each gets the whole machine) with one model instance and one
onnxruntime intra-op thread, as every peer in ../shared/peers is set up. Every row is measured
with the same tools: perf_analyzer (`pa.sh`) where the server accepts it, and the tritonclient
aio closed-loop generator (`loadgen.py`) for all. Results go to benchmarks/results/peers.json,
an SVG plot beside it, and the section of benchmarks/RESULTS.md between the peer markers.

usage: python benchmarks/run_peer_bench.py [--servers a,b] [--seconds 6]
Needs `bash ../shared/peers/setup.sh` once (venvs, perf_analyzer, models under PEERS_DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench_results import machine, serve_command  # beside this script

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT.parent / "shared" / "peers"
PEERS_DIR = Path(os.environ.get("PEERS_DIR", Path.home() / ".cache" / "tensorgate-peers"))
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("add_sub", "mlp", "mobilenet_v2")
CONCURRENCY = (1, 8, 32)
ROW = re.compile(r"([\d.]+) infer/s\s+p50\s+([\d.]+) ms\s+p99\s+([\d.]+) ms")


@dataclass
class Row:
    server: str
    model: str
    concurrency: int
    tool: str  # "pa" (perf_analyzer unary), "pa-stream", "loadgen"
    infer_per_s: float
    p50_ms: float
    p99_ms: float
    command: str


@dataclass
class Server:
    """How to start one server and where it listens (gRPC)."""

    name: str
    grpc: str
    perf_analyzer: bool  # MLServer and KServe refuse perf_analyzer (no ModelConfig RPC)
    streaming: bool
    models: tuple[str, ...] = MODELS


SERVERS = {
    "tensorgate": Server("tensorgate", "127.0.0.1:18701", True, True),
    "tensorgate-nobatch": Server("tensorgate-nobatch", "127.0.0.1:18702", True, False),
    "bare-grpc": Server("bare-grpc", "127.0.0.1:18703", True, True, ("add_sub",)),
    # The bare handler with add_sub in a worker thread: the ceiling off the event loop.
    "bare-grpc-hop": Server("bare-grpc-hop", "127.0.0.1:18704", True, False, ("add_sub",)),
    "triton": Server("triton", "127.0.0.1:28001", True, True),
    "mlserver": Server("mlserver", "127.0.0.1:38001", False, False),
    "kserve": Server("kserve", "127.0.0.1:48001", False, False),
}


def _run(cmd: list[str], timeout: float = 600) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s"
    return done.stdout + done.stderr


def ensure_repository(repository: Path, batching: bool = True) -> None:
    """tensorgate's repository of the peers' benchmark models, built once per workdir."""
    if repository.exists():
        return
    args = [str(PEERS_DIR / "models"), str(repository), *([] if batching else ["--no-batching"])]
    _run([sys.executable, str(ROOT / "benchmarks" / "peer_repository.py"), *args])


def _wait_ready(url: str, seconds: float = 120) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if client.is_server_ready():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {seconds} s")


class Running:
    """A started server; `stop()` ends it."""

    def __init__(self, server: Server, workdir: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.server = server
        self.process: subprocess.Popen[bytes] | None = None
        port = server.grpc.rsplit(":", 1)[1]
        if server.name.startswith("tensorgate"):
            repo = workdir / server.name
            ensure_repository(repo, batching=not server.name.endswith("nobatch"))
            self._spawn(
                [*serve_command(repo, port, int(port) + 10, int(port) + 20), *extra_args],
                workdir / f"{server.name}.log",
            )
        elif server.name.startswith("bare-grpc"):
            hop = ["--thread-hop"] if server.name.endswith("-hop") else []
            self._spawn(
                [sys.executable, str(ROOT / "benchmarks" / "bare_grpc.py"), port, *hop],
                workdir / f"{server.name}.log",
            )
        else:
            print(_run(["bash", str(PEERS / "start.sh"), server.name], 300).strip())
        _wait_ready(server.grpc)

    def _spawn(self, cmd: list[str], log: Path) -> None:
        self.process = subprocess.Popen(
            cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        else:
            _run(["bash", str(PEERS / "stop.sh"), self.server.name])


def _measure(server: Server, model: str, conc: int, tool: str, seconds: float) -> Row | None:
    if tool == "loadgen":
        cmd = [str(PEERS_DIR / "venv-load" / "bin" / "python"), str(PEERS / "loadgen.py")]
        cmd += [server.grpc, model, str(conc), str(seconds)]
    else:
        cmd = ["bash", str(PEERS / "pa.sh"), server.grpc, model, str(conc), "grpc"]
        if tool == "pa-stream":
            cmd.append("--streaming")
    out = _run(cmd)
    match = ROW.search(out)
    shown = " ".join(cmd).replace(str(PEERS_DIR), "$PEERS_DIR").replace(str(ROOT.parent), "..")
    if match is None:
        print(f"  {server.name} {model} c={conc} {tool}: FAILED {out.strip()[-300:]}")
        return None
    row = Row(server.name, model, conc, tool, *(float(g) for g in match.groups()), shown)
    print(f"  {server.name:18s} {model:13s} c={conc:<3d} {tool:9s} {match.group(0)}", flush=True)
    return row


# A server of a side-by-side run: its label, how to start it, and the flags it is given.
Variant = tuple[str, Server, tuple[str, ...]]


def side_by_side(
    variants: list[Variant], model: str, conc: int, rounds: int, seconds: float, workdir: Path
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Each variant measured once per round (rounds alternate, against the machine's drift)
    with the aio generator and perf_analyzer: every row, and each label's median infer/s per
    tool (keyed "LABEL TOOL")."""
    rows: list[dict[str, Any]] = []
    for round_index in range(rounds):
        print(f"== round {round_index + 1}", flush=True)
        for label, server, extra in variants:
            running = Running(server, workdir, extra)
            try:
                for tool in ("loadgen", "pa"):
                    row = _measure(server, model, conc, tool, seconds)
                    if row is not None:
                        rows.append({**asdict(row), "server": label, "round": round_index + 1})
            finally:
                running.stop()
    medians = {}
    for label, _, _ in variants:
        for tool in ("loadgen", "pa"):
            values = [r["infer_per_s"] for r in rows if r["server"] == label and r["tool"] == tool]
            if values:
                medians[f"{label} {tool}"] = statistics.median(values)
    return rows, medians


def _alive(url: str) -> bool:
    import tritonclient.grpc as grpcclient

    try:
        return bool(grpcclient.InferenceServerClient(url).is_server_live())
    except Exception:
        return False


def _bench_server(server: Server, workdir: Path, seconds: float, notes: list[str]) -> list[Row]:
    rows: list[Row] = []
    print(f"== {server.name}", flush=True)
    running = Running(server, workdir)
    try:
        for model in server.models:
            for conc in CONCURRENCY:
                tools = ["loadgen"] + (["pa"] if server.perf_analyzer else [])
                if server.streaming and model == "add_sub":
                    tools.append("pa-stream")
                for tool in tools:
                    row = _measure(server, model, conc, tool, seconds)
                    if row is not None:
                        rows.append(row)
                    elif not _alive(server.grpc):
                        note = f"{server.name} died during {model} c={conc} {tool}; restarted"
                        print(f"  {note}", flush=True)
                        notes.append(note)
                        running.stop()
                        running = Running(server, workdir)
    finally:
        running.stop()
    return rows


def _raw() -> tuple[dict[str, dict[int, float]], str]:
    """Raw in-process onnxruntime rows/s per model and batch size, one intra-op thread."""
    cmd = [str(PEERS_DIR / "venv-triton" / "bin" / "python"), str(PEERS / "raw.py")]
    cmd += [str(PEERS_DIR / "models"), "1"]
    out = _run(cmd)
    raw: dict[str, dict[int, float]] = {}
    for name, batch, per_s in re.findall(r"(\w+)\s+batch=\s*(\d+).*?([\d.]+) rows/s", out):
        raw.setdefault(name, {})[int(batch)] = float(per_s)
    print(out.strip())
    shown = " ".join(cmd).replace(str(PEERS_DIR), "$PEERS_DIR").replace(str(ROOT.parent), "..")
    return raw, shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--seconds", type=float, default=6.0, help="loadgen duration per row")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tensorgate-peer-bench"))
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the last run's rows (and raw figures) for servers not measured now",
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    names = args.servers.split(",")
    previous = json.loads((RESULTS / "peers.json").read_text()) if args.merge else None
    raw, raw_command = (previous["raw"], previous["raw_command"]) if previous else _raw()
    rows: list[Row] = []
    notes: list[str] = []
    for name in names:
        rows += _bench_server(SERVERS[name], args.workdir, args.seconds, notes)
    kept = [Row(**r) for r in previous["rows"] if r["server"] not in names] if previous else []
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": (previous["command"] + "; then " if previous else "")
        + "python benchmarks/run_peer_bench.py "
        + " ".join(sys.argv[1:]),
        "raw": raw,
        "raw_command": raw_command,
        "rows": [asdict(r) for r in kept + rows],
        "notes": (previous.get("notes", []) if previous else []) + notes,
    }
    (RESULTS / "peers.json").write_text(json.dumps(result, indent=1))
    from peer_report import write_report  # beside this script

    write_report(result, ROOT / "benchmarks" / "RESULTS.md", RESULTS / "peers.svg")


if __name__ == "__main__":
    main()
