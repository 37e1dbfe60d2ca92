"""What the benchmarks share: the machine in words, the command that starts tensorgate, and
the JSON file in benchmarks/results/ that the summary table (summary.py) reads, with the
machine, the date and the exact command."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """The machine in words: cores, processor, Python and the libraries that matter."""
    versions = []
    for module, label in (("onnxruntime", "onnxruntime"), ("grpc", "grpcio")):
        with contextlib.suppress(ImportError):
            versions.append(f"{label} {__import__(module).__version__}")
    processor = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                processor = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} cores ({processor}), {platform.machine()}, Python "
        f"{platform.python_version()}, {', '.join(versions)}; clients on the same cores"
    )


def serve_command(
    repository: Path | str, grpc_port: int | str, http_port: int | str, metrics_port: int | str
) -> list[str]:
    """`tensorgate serve` on loopback with these ports (-1 turns one off)."""
    return [
        sys.executable,
        "-m",
        "tensorgate",
        "serve",
        "--model-repository",
        str(repository),
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(http_port),
        "--metrics-port",
        str(metrics_port),
    ]


def write_results(name: str, **content: Any) -> Path:
    """benchmarks/results/NAME.json with `content` beside the machine, date and command."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    document = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "command": "python " + " ".join(["benchmarks/" + Path(sys.argv[0]).name, *sys.argv[1:]]),
        **content,
    }
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path


def start_server(repo: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """`tensorgate serve` on loopback: gRPC on `port`, no HTTP or metrics, no access log."""
    return subprocess.Popen(
        [*serve_command(repo, port, -1, -1), "--access-log-rate", "0", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
