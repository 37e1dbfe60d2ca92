"""The response cache on the bundled CNN (TorchScript, 3x32x32 in, 10 out), in one run:
the same server with the cache on, answering hits (one image, over and over) and misses
(every image new), beside the server without a cache on the same new images. Closed loop,
one client at a time (latency) and 8 (throughput), over gRPC with tritonclient; the server's
CPU per request from /proc. Where ../shared/peers installed Triton, the same cases for the
CNN as an ONNX file, on tensorgate and on Triton (through its Python backend, the only one
its build here has), side by side.

Goals: hits at least 10 times faster than misses; a 0 % hit rate costs at most 3 %
against no cache. Results: benchmarks/results/cache.json.

usage: python benchmarks/cache_bench.py [--seconds 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import triton_peer
import tritonclient.grpc as grpcclient
from bench_results import start_server, write_results
from goals_bench import _tree_cpu

ROOT = Path(__file__).resolve().parents[1]


CACHE_BYTES = 256 * 2**20
TRITON_PORT = 18911


def _repository(cached: bool, onnx: bool = False) -> Path:
    """The bundled CNN (TorchScript), or with `onnx` the same net as the ONNX file Triton
    runs, on onnxruntime with one thread as there."""
    root = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    shutil.copytree(ROOT / "model_repository" / "cnn", root / "cnn")
    config = root / "cnn" / "config.pbtxt"
    text = config.read_text()
    if onnx:
        (root / "cnn" / "1" / "model.pt").unlink()
        _cnn_onnx(
            ROOT / "model_repository" / "cnn" / "1" / "model.pt", root / "cnn" / "1" / "model.onnx"
        )
        text = text.replace('backend: "pytorch"', 'backend: "onnxruntime"')
        text += 'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
    config.write_text(text + ("response_cache { enable: true }\n" if cached else ""))
    return root


def _cnn_onnx(torchscript: Path, out: Path) -> None:
    """The bundled CNN with its weights as an ONNX graph (Triton's build here runs models
    through its Python backend; there onnxruntime runs this)."""
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper

    weights = {
        k: v.numpy()
        for k, v in torch.jit.load(str(torchscript)).state_dict().items()  # type: ignore[no-untyped-call]
    }  # 0: conv, 3: conv, 7: linear (the nn.Sequential's indices)
    nodes = [
        helper.make_node("Conv", ["IMAGE", "0.weight", "0.bias"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "3.weight", "3.bias"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "7.weight", "7.bias"], ["LOGITS"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("IMAGE", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("LOGITS", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w, name) for name, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(out))


def _triton_repository(cached: bool) -> Path:
    root = Path(tempfile.mkdtemp(prefix="cache-bench-triton-"))
    (root / "cnn" / "1").mkdir(parents=True)
    model = root / "cnn" / "1" / "cnn.onnx"
    _cnn_onnx(ROOT / "model_repository" / "cnn" / "1" / "model.pt", model)
    setup = (
        "import onnxruntime as ort\n"
        "options = ort.SessionOptions()\n"
        "options.intra_op_num_threads = 1\n"
        f"SESSION = ort.InferenceSession({str(model)!r}, options)\n"
    )
    body = '    return {"LOGITS": SESSION.run(None, {"IMAGE": inputs["IMAGE"]})[0]}'
    (root / "cnn" / "1" / "model.py").write_text(triton_peer.python_model(body, setup))
    config = (ROOT / "model_repository" / "cnn" / "config.pbtxt").read_text()
    config = config.replace('backend: "pytorch"', 'backend: "python"')
    config = config.replace(', label_filename: "labels.txt"', "")
    (root / "cnn" / "config.pbtxt").write_text(
        config + ("response_cache { enable: true }\n" if cached else "")
    )
    return root


class _Served:
    """tensorgate (the bundled CNN, or `tensorgate-onnx` its ONNX form) or Triton (the ONNX
    form) serving the CNN, with or without the response cache."""

    def __init__(self, server: str, cached: bool) -> None:
        self._triton: triton_peer.Triton | None = None
        self._process: subprocess.Popen[bytes] | None = None
        if server == "triton":
            self.repository, self.port = _triton_repository(cached), TRITON_PORT
            cache = ["--cache-config", f"local,size={CACHE_BYTES}"] if cached else []
            self._triton = triton_peer.Triton(self.repository, self.port, 18912, 18913, *cache)
            self.pid = self._triton.pid
        else:
            self.repository = _repository(cached, onnx=server == "tensorgate-onnx")
            self.port = 18901
            cache = ["--cache-size", str(CACHE_BYTES)] if cached else []
            self._process = start_server(self.repository, self.port, *cache)
            self.pid = self._process.pid
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{self.port}")
        for _ in range(600):
            try:
                if client.is_model_ready("cnn"):
                    return
            except Exception:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{server} did not load the CNN")

    def stop(self) -> None:
        if self._triton is not None:
            self._triton.stop()
        if self._process is not None:
            self._process.terminate()
            self._process.wait(30)
        shutil.rmtree(self.repository, ignore_errors=True)


def _server_time(port: int) -> tuple[int, int]:
    """Requests answered and their total time inside the server (ModelStatistics)."""
    with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        success = client.get_inference_statistics("cnn").model_stats[0].inference_stats.success
    return success.count, success.ns


def _load(port: int, same: bool, clients: int, seconds: float) -> tuple[float, float]:
    """Requests per second, and median latency in ms."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        # Fresh entropy for each client and load: a seeded generator would repeat the images
        # of the load before, and "misses" would hit.
        rng = np.random.default_rng()
        fixed = np.ones((1, 3, 32, 32), np.float32)
        with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as c:
            mine = []
            while time.monotonic() < stop:
                image = fixed if same else rng.random((1, 3, 32, 32), dtype=np.float32)
                tensor = grpcclient.InferInput("IMAGE", [1, 3, 32, 32], "FP32")
                tensor.set_data_from_numpy(image)
                started = time.perf_counter()
                c.infer("cnn", [tensor])
                mine.append(time.perf_counter() - started)
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies) / seconds, statistics.median(latencies) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    servers = ["tensorgate"]
    if triton_peer.available():  # the same ONNX file on both
        servers += ["tensorgate-onnx", "triton"]
    else:
        print("Triton is not installed (../shared/peers/setup.sh): tensorgate only")
    rows: list[dict[str, Any]] = []
    for round_index in range(args.rounds):
        for server, (label, cached, same) in itertools.product(
            servers, (("hits", True, True), ("misses", True, False), ("no cache", False, False))
        ):
            served = _Served(server, cached)
            port = served.port
            try:
                _load(port, same, 1, 1.0)  # warm up
                for clients in (1, 8):
                    before, cpu = _server_time(port), _tree_cpu(served.pid)
                    rate, p50 = _load(port, same, clients, args.seconds)
                    after, cpu = _server_time(port), _tree_cpu(served.pid) - cpu
                    requests = max(1, after[0] - before[0])
                    server_ms = (after[1] - before[1]) / requests / 1e6
                    rows.append(
                        {
                            "round": round_index + 1,
                            "server": server,
                            "case": label,
                            "clients": clients,
                            "infer_per_s": rate,
                            "p50_ms": p50,
                            "server_ms": server_ms,
                            "server_cpu_us_per_request": cpu / requests * 1e6,
                        }
                    )
                    print(
                        f"{server:10s} {label:9s} c={clients}: {rate:8.1f} infer/s  p50 "
                        f"{p50:6.2f} ms  in the server {server_ms:6.3f} ms, CPU "
                        f"{cpu / requests * 1e6:6.0f} µs/request",
                        flush=True,
                    )
            finally:
                served.stop()

    def summary(server: str) -> dict[str, Any]:
        def median(case: str, clients: int, key: str) -> float:
            return statistics.median(
                r[key]
                for r in rows
                if r["server"] == server and r["case"] == case and r["clients"] == clients
            )

        return {
            "hit_vs_miss_server_time_c1": median("misses", 1, "server_ms")
            / median("hits", 1, "server_ms"),
            "hit_vs_miss_latency_c1": median("misses", 1, "p50_ms") / median("hits", 1, "p50_ms"),
            "hit_vs_miss_throughput_c8": median("hits", 8, "infer_per_s")
            / median("misses", 8, "infer_per_s"),
            "miss_vs_no_cache_throughput_c8": median("misses", 8, "infer_per_s")
            / median("no cache", 8, "infer_per_s"),
            "cpu_us_per_request_c8": {
                case: median(case, 8, "server_cpu_us_per_request")
                for case in ("hits", "misses", "no cache")
            },
        }

    summaries = {server: summary(server) for server in servers}
    for server, figures in summaries.items():
        for key, value in figures.items():
            shown = (
                ", ".join(f"{k} {v:.0f}" for k, v in value.items())
                if isinstance(value, dict)
                else f"{value:.2f}x"
            )
            print(f"{server} {key}: {shown}")
    write_results(
        "cache",
        rows=rows,
        summary=summaries["tensorgate"],
        onnx={k: v for k, v in summaries.items() if k != "tensorgate"},
    )


if __name__ == "__main__":
    main()
