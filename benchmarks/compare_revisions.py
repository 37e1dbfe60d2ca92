"""Two revisions of tensorgate side by side: did a change make the server faster?

On this VM a server's speed drifts 20-40 % within minutes, so a figure from before a change
and one from after it do not compare. This starts the working tree's server and a base
revision's (its `server/` exported with `git archive`, put first on PYTHONPATH) on the
same repository, and measures them in turn, round after round, with perf_analyzer on
add_sub: HTTP c=8 and c=32, gRPC unary c=32 and gRPC streaming c=32. Each measurement gives
the throughput and the server's CPU time per request (its process's user + system time over
the requests its ModelStatistics counted meanwhile), which drifts less than throughput. The
side measured first alternates from round to round, since the first of two back-to-back
measurements tends to differ from the second. It prints each round's new ÷ base ratios and
their medians; only the ratios mean anything.
usage: python benchmarks/compare_revisions.py [--base REV] [--rounds N] [--only ROW]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import tarfile
from pathlib import Path

from bench_results import serve_command
from run_peer_bench import PEERS, ROOT, ROW, _run, _wait_ready, ensure_repository

# (protocol, concurrency, perf_analyzer's extra arguments) rows; ports are (gRPC, HTTP) per side.
ROWS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("http", 8, ()),
    ("http", 32, ()),
    ("grpc", 32, ()),
    ("grpc", 32, ("--streaming",)),
)
PORTS = {"new": (18801, 18811), "base": (18802, 18812)}


def _export(rev: str, into: Path) -> str:
    """The revision's server package and its generated stubs under `into`, as a PYTHONPATH
    (a revision's server must run with the stubs of its own schema)."""
    archive = subprocess.run(
        [
            "git",
            "-C",
            str(ROOT),
            "archive",
            "--format=tar",
            rev,
            "server/tensorgate",
            "protos/python/tensorgate_protos",
        ],
        capture_output=True,
        check=True,
    ).stdout
    target = into / rev.replace("/", "_")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return os.pathsep.join(str(target / part) for part in ("server", "protos/python"))


def _start(
    side: str, repository: Path, log: Path, pythonpath: str | None
) -> subprocess.Popen[bytes]:
    grpc_port, http_port = PORTS[side]
    env = None if pythonpath is None else {**os.environ, "PYTHONPATH": pythonpath}
    process = subprocess.Popen(
        serve_command(repository, grpc_port, http_port, -1),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    _wait_ready(f"127.0.0.1:{grpc_port}")
    return process


def _cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _counts(grpc_port: int) -> tuple[int, int]:
    """add_sub's (inferences, executions) so far, from ModelStatistics."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
        stats = client.get_inference_statistics("add_sub", as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def _measure(
    side: str, pid: int, protocol: str, conc: int, extra: tuple[str, ...]
) -> tuple[float, float] | None:
    """(infer/s, server CPU µs per request) of one perf_analyzer run, or None if it failed;
    the mean batch is printed beside them (fewer, larger batches cost less per request)."""
    grpc_port, http_port = PORTS[side]
    port = http_port if protocol == "http" else grpc_port
    cpu, (count, batches) = _cpu_seconds(pid), _counts(grpc_port)
    out = _run(
        ["bash", str(PEERS / "pa.sh"), f"127.0.0.1:{port}", "add_sub", str(conc), protocol, *extra]
    )
    cpu = _cpu_seconds(pid) - cpu
    count_after, batches_after = _counts(grpc_port)
    count, batches = count_after - count, batches_after - batches
    match = ROW.search(out)
    label = _label(protocol, conc, extra)
    if match is None or count <= 0:
        reason = out.strip().splitlines()[-1] if out.strip() else "no output"
        print(f"  {side:4s} {label} FAILED: {reason}", flush=True)
        return None
    cpu_us = cpu / count * 1e6
    batch = count / max(batches, 1)
    line = f"  {side:4s} {label} {match.group(0)}  cpu {cpu_us:.0f} µs/req  batch {batch:.1f}"
    print(line, flush=True)
    return float(match.group(1)), cpu_us


def _label(protocol: str, conc: int, extra: tuple[str, ...]) -> str:
    return f"{protocol}{' stream' if '--streaming' in extra else ''} c={conc}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD~1", help="the revision to compare against")
    parser.add_argument(
        "--rounds", type=int, default=4, help="an even number: each side goes first as often"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tensorgate-compare"))
    parser.add_argument(
        "--only", default="", help="the rows whose label starts so, e.g. 'grpc stream'"
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    # The peer benchmark's repository: same models and configs as every other figure.
    repository = args.workdir / "tensorgate"
    ensure_repository(repository)
    base_path = _export(args.base, args.workdir)
    servers = {
        "new": _start("new", repository, args.workdir / "new.log", None),
        "base": _start("base", repository, args.workdir / "base.log", base_path),
    }
    ratios: dict[str, list[tuple[float, float]]] = {}
    try:
        rows = [row for row in ROWS if _label(*row).startswith(args.only)]
        for index in range(args.rounds):
            print(f"== round {index + 1} of {args.rounds}", flush=True)
            for protocol, conc, extra in rows:
                order = ("new", "base") if index % 2 == 0 else ("base", "new")
                measured = {
                    side: _measure(side, servers[side].pid, protocol, conc, extra) for side in order
                }
                new, base = measured["new"], measured["base"]
                if new and base:
                    ratio = (new[0] / base[0], new[1] / base[1])
                    ratios.setdefault(_label(protocol, conc, extra), []).append(ratio)
    finally:
        for server in servers.values():
            server.terminate()
            server.wait(30)
    print(f"new (working tree) ÷ base ({args.base}), round by round and median:")
    for label, values in ratios.items():
        for what, column in (("infer/s", 0), ("cpu/req", 1)):
            series = [v[column] for v in values]
            rounds = ", ".join(f"{v:.2f}" for v in series)
            median = statistics.median(series)
            print(f"  {label} {what}: {rounds}; median {median:.2f}×")


if __name__ == "__main__":
    main()
