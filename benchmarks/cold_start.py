"""Cold start to ready: launch `tensorgate serve` on a repository, poll ServerReady, report.

usage: python benchmarks/cold_start.py REPO [runs]
Prints one line per run and the median, seconds from process launch to ServerReady == true.
"""

from __future__ import annotations

import signal
import socket
import statistics
import subprocess
import sys
import time

import tritonclient.grpc as grpcclient
from bench_results import serve_command  # beside this script


def once(repo: str) -> float:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.perf_counter()
    process = subprocess.Popen(
        serve_command(repo, port, -1, -1),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        for _ in range(6000):  # at most 60 s
            try:
                if client.is_server_ready():
                    return time.perf_counter() - started
            except Exception:
                pass
            time.sleep(0.01)
        raise RuntimeError("server not ready in 60 s")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


if __name__ == "__main__":
    repo, runs = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5
    times = [once(repo) for _ in range(runs)]
    for t in times:
        print(f"cold start to ready: {t:.3f} s")
    print(f"median of {runs}: {statistics.median(times):.3f} s")
