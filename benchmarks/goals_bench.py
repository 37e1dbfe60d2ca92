"""The execution goals, side by side in one run: tensorgate, Triton and the bare handlers
serve at once (idle but the one measured), and each round measures every row on each with
perf_analyzer (`../shared/peers/pa.sh`), alternating against the machine's drift.

The bare handlers are the ceilings of the stack tensorgate is built on, measured on the same
rows: bare_grpc.py (grpc.aio computing add_sub on the event loop; with --thread-hop in one
worker thread, one hand-off per request) and bare_asgi.py (uvicorn + httptools). A second
tensorgate runs every batch on the event loop (`--execution inline`) for the add_sub rows
where that placement is the recommended one (unary gRPC and HTTP). A goal above what the
bare handler itself reaches against the same peer cannot be met by any server on that
stack; the goals table shows the ceiling beside each ratio.

Every row also gives the server's CPU time per request: user + system time of the server's
whole process tree (Triton's Python-backend stubs, tensorgate's process instances) from
/proc, divided by the requests its ModelStatistics counted over the same interval. For mlp it
adds the mean batch size and the mean `compute_infer` of a batch of one, next to the same
`session.run` timed in a thread of this script.

Rows: add_sub gRPC unary c=32, add_sub gRPC streaming c=32, add_sub HTTP binary c=8, mlp
gRPC unary c=32, mobilenet_v2 c=8 with and without `--shared-memory system`.
Results: benchmarks/results/goals.json, read by summary.py for the goals table.

usage: python benchmarks/goals_bench.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_results import write_results
from run_http_bench import ScriptServer
from run_peer_bench import PEERS, PEERS_DIR, ROOT, ROW, SERVERS, Running, Server, _alive, _run

# tensorgate once more with every batch on the event loop (`--execution inline`): the
# placement the batching page recommends for micro-models such as add_sub.
INLINE = Server("tensorgate-inline", "127.0.0.1:18731", True, True)
GRPC = {
    "tensorgate": 18701,
    "tensorgate-inline": 18731,
    "triton": 28001,
    "bare-grpc": 18703,
    "bare-grpc-hop": 18704,
}
HTTP = {"tensorgate": 18711, "tensorgate-inline": 18741, "triton": 28000, "bare-asgi": 18705}
# Servers that keep no statistics: no CPU per request or batch figures for them.
BARE = ("bare-grpc", "bare-grpc-hop", "bare-asgi")


@dataclass(frozen=True)
class Case:
    """One row of the goals table: a model, a concurrency and perf_analyzer's options."""

    key: str
    model: str
    concurrency: int
    protocol: str  # grpc | http
    extra: tuple[str, ...]
    servers: tuple[str, ...]


CASES = (
    Case(
        "add_sub unary c=32",
        "add_sub",
        32,
        "grpc",
        (),
        ("tensorgate", "tensorgate-inline", "triton", "bare-grpc", "bare-grpc-hop"),
    ),
    Case(
        "add_sub streaming c=32",
        "add_sub",
        32,
        "grpc",
        ("--streaming",),
        ("tensorgate", "triton", "bare-grpc"),
    ),
    Case(
        "add_sub HTTP binary c=8",
        "add_sub",
        8,
        "http",
        (),
        ("tensorgate", "tensorgate-inline", "triton", "bare-asgi"),
    ),
    Case("mlp unary c=32", "mlp", 32, "grpc", (), ("tensorgate", "triton")),
    Case("mobilenet_v2 c=8", "mobilenet_v2", 8, "grpc", (), ("tensorgate", "triton")),
    Case(
        "mobilenet_v2 c=8 shared memory",
        "mobilenet_v2",
        8,
        "grpc",
        ("--shared-memory", "system", "--output-shared-memory-size", "4000"),
        ("tensorgate",),
    ),
)


def _tree_cpu(root: int) -> float:
    """User + system CPU seconds of `root` and every process below it (live ones)."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        times[pid] = (int(fields[11]) + int(fields[12])) / tick
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += times.get(pid, 0.0)
        stack.extend(children.get(pid, ()))
    return total


def _stats(server: str, model: str) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    if server == "bare-asgi":  # one execution per inference, counted at GET /served
        with urllib.request.urlopen(f"http://127.0.0.1:{HTTP[server]}/served") as answer:
            served = int(answer.read())
        return {"inferences": served, "executions": served, "batch1_count": 0, "batch1_ns": 0}
    with grpcclient.InferenceServerClient(f"127.0.0.1:{GRPC[server]}") as client:
        doc = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    one = next((b for b in doc.get("batch_stats", []) if int(b["batch_size"]) == 1), None)
    return {
        "inferences": int(doc.get("inference_count", 0)),
        "executions": int(doc.get("execution_count", 0)),
        "batch1_count": int(one["compute_infer"].get("count", 0)) if one else 0,
        "batch1_ns": int(one["compute_infer"].get("ns", 0)) if one else 0,
    }


def _measure(server: str, pid: int | None, case: Case) -> dict[str, Any] | None:
    port = (HTTP if case.protocol == "http" else GRPC)[server]
    cmd = ["bash", str(PEERS / "pa.sh"), f"127.0.0.1:{port}", case.model]
    cmd += [str(case.concurrency), case.protocol, *case.extra]
    # The server's request count and CPU time before the run.
    start = (_stats(server, case.model), _tree_cpu(pid)) if pid is not None else None
    out = _run(["timeout", "240", *cmd], timeout=300)
    match = ROW.search(out)
    if match is None:
        print(f"  {server:10s} {case.key:32s} FAILED {out.strip()[-200:]}", flush=True)
        return None
    row: dict[str, Any] = {
        "server": server,
        "case": case.key,
        "infer_per_s": float(match.group(1)),
        "p50_ms": float(match.group(2)),
        "p99_ms": float(match.group(3)),
        "command": " ".join(cmd)
        .replace(str(PEERS_DIR), "$PEERS_DIR")
        .replace(str(ROOT.parent), ".."),
    }
    if pid is not None and start is not None:
        before, cpu_before = start
        cpu = _tree_cpu(pid) - cpu_before
        after = _stats(server, case.model)
        requests = after["inferences"] - before["inferences"]
        executions = after["executions"] - before["executions"]
        row["server_cpu_us_per_request"] = cpu / max(requests, 1) * 1e6
        if server not in BARE:  # they never batch
            row["mean_batch"] = requests / max(executions, 1)
        ones = after["batch1_count"] - before["batch1_count"]
        if ones:
            row["batch1_compute_infer_ms"] = (after["batch1_ns"] - before["batch1_ns"]) / ones / 1e6
    extra = "".join(
        f"  {k} {row[k]:.3g}"
        for k in ("server_cpu_us_per_request", "mean_batch", "batch1_compute_infer_ms")
        if k in row
    )
    print(f"  {server:10s} {case.key:32s} {match.group(0)}{extra}", flush=True)
    return row


def _standalone_mlp_ms() -> float:
    """mlp's batch-1 `session.run` in a thread of its own, one intra-op thread, idle machine."""
    from gil_handback import mlp_session, timed_run

    session, feed = mlp_session(str(PEERS_DIR / "models" / "mlp" / "1" / "model.onnx"))
    return timed_run(session, feed)


class Servers:
    """tensorgate, Triton and the bare handlers, started together; one that dies under a row
    is started again (and the run notes it)."""

    NAMES = ("tensorgate", "tensorgate-inline", "triton", *BARE)

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running = {name: self._start(name) for name in self.NAMES}
        self.notes: list[str] = []

    def _start(self, name: str) -> Running | ScriptServer:
        if name == "bare-asgi":
            return ScriptServer(self.workdir, name)
        if name == INLINE.name:
            return Running(INLINE, self.workdir, ("--execution", "inline"))
        return Running(SERVERS[name], self.workdir)

    def pid(self, name: str) -> int | None:
        if name == "triton":  # started by ../shared/peers/start.sh, which records it
            return int((PEERS_DIR / "run" / "triton" / "pid").read_text())
        process = self.running[name].process
        return process.pid if process is not None else None

    def revive(self, name: str, case: Case) -> None:
        running = self.running[name]
        if isinstance(running, ScriptServer):
            if running.process.poll() is None:
                return
        elif _alive(INLINE.grpc if name == INLINE.name else SERVERS[name].grpc):
            return
        note = f"{name} died during {case.key}; started again"
        print(f"  {note}", flush=True)
        self.notes.append(note)
        running.stop()
        self.running[name] = self._start(name)

    def stop(self) -> None:
        for running in self.running.values():
            running.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    workdir = Path(os.environ.get("BENCH_WORKDIR", "/tmp/tensorgate-goals-bench"))
    workdir.mkdir(parents=True, exist_ok=True)
    standalone = _standalone_mlp_ms()
    print(f"mlp batch-1 session.run in a thread, idle: {standalone:.3f} ms", flush=True)
    rows: list[dict[str, Any]] = []
    servers = Servers(workdir)
    try:
        time.sleep(2)
        for round_index in range(args.rounds):
            print(f"== round {round_index + 1}", flush=True)
            for case in CASES:
                for server in case.servers:
                    # A server that died under the load is started again and measured once
                    # more: Triton's streaming has crashed in some rounds and not in others.
                    for _attempt in range(2):
                        try:
                            row = _measure(server, servers.pid(server), case)
                        except Exception as exc:  # its statistics RPC failed: the server died
                            print(f"  {server} {case.key}: {exc}", flush=True)
                            row = None
                        if row is not None:
                            rows.append({**row, "round": round_index + 1})
                            break
                        servers.revive(server, case)
    finally:
        servers.stop()
    medians: dict[str, dict[str, float]] = {}
    for case in CASES:
        for server in case.servers:
            mine = [r for r in rows if r["case"] == case.key and r["server"] == server]
            if not mine:
                continue
            medians[f"{server} {case.key}"] = {
                key: statistics.median(r[key] for r in mine)
                for key in (
                    "infer_per_s",
                    "p99_ms",
                    "server_cpu_us_per_request",
                    "mean_batch",
                    "batch1_compute_infer_ms",
                )
                if all(key in r for r in mine)
            }
    for key, values in medians.items():
        print(f"{key:48s} " + "  ".join(f"{k} {v:.4g}" for k, v in values.items()))
    revision = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    write_results(
        "goals",
        revision=revision,
        rows=rows,
        medians=medians,
        standalone_mlp_batch1_ms=standalone,
        notes=servers.notes,
    )


if __name__ == "__main__":
    main()
