"""What a busy event loop does to a model call on another thread: one batch-1 `session.run`
of the peers' mlp (one onnxruntime thread), timed in a thread of its own, alone, beside
processes that burn the cores (CPU contention only), and beside a busy Python thread of the
same process at two GIL switch intervals (the run releases the GIL; getting it back waits for
the busy thread's interval to end).

usage: python benchmarks/gil_handback.py [MODEL.onnx]
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

PEERS_DIR = Path(os.environ.get("PEERS_DIR", Path.home() / ".cache" / "tensorgate-peers"))


def _burn(stop: threading.Event | Any) -> None:
    while not stop.is_set():
        sum(range(1000))


def timed_run(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> float:
    """Mean ms of 2,000 runs in a new thread, after 200 to warm up."""
    times: list[float] = []

    def run() -> None:
        for _ in range(200):
            session.run(None, feed)
        for _ in range(2000):
            started = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - started)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return statistics.mean(times) * 1e3


def mlp_session(path: str) -> tuple[ort.InferenceSession, dict[str, np.ndarray]]:
    """The model with one onnxruntime thread, and a batch-1 input for it."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options)
    return session, {session.get_inputs()[0].name: np.random.rand(1, 256).astype(np.float32)}


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else str(PEERS_DIR / "models/mlp/1/model.onnx")
    session, feed = mlp_session(path)
    print(f"alone: {timed_run(session, feed):.3f} ms")
    for busy in (2, 3):
        stop = multiprocessing.Event()
        burners = [multiprocessing.Process(target=_burn, args=(stop,)) for _ in range(busy)]
        for burner in burners:
            burner.start()
        time.sleep(0.5)
        print(f"{busy} processes burning the cores: {timed_run(session, feed):.3f} ms")
        stop.set()
        for burner in burners:
            burner.join()
    for interval in (0.005, 0.0005):
        sys.setswitchinterval(interval)
        stop_thread = threading.Event()
        busy_thread = threading.Thread(target=_burn, args=(stop_thread,))
        busy_thread.start()
        took = timed_run(session, feed)
        stop_thread.set()
        busy_thread.join()
        print(f"a busy Python thread, switch interval {interval * 1e3:.1f} ms: {took:.3f} ms")


if __name__ == "__main__":
    main()
