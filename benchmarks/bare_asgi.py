"""The HTTP ceiling of the stack: a bare ASGI app on uvicorn + httptools doing add_sub.

No routing table, validation, batching or statistics: the inference route reads Triton's
binary tensor extension, adds and subtracts with numpy and answers in binary. Metadata, config
and statistics are fixed answers so that perf_analyzer accepts it; GET /served answers the
number of inferences served, for CPU time per request. uvicorn picks the same event loop
tensorgate serves on (uvloop where installed).

With --thread-hop the numpy work runs in one worker thread and the handler awaits it, one
hand-off per request: the ceiling of any server that keeps model code off the event loop.
usage: python benchmarks/bare_asgi.py PORT [--thread-hop]
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
import uvicorn

TENSORS = [{"name": n, "datatype": "FP32", "shape": [-1, 16]} for n in ("INPUT0", "INPUT1")]
OUTPUTS = [{"name": n, "datatype": "FP32", "shape": [-1, 16]} for n in ("OUTPUT0", "OUTPUT1")]
FIXED = {
    "/v2/models/add_sub": {
        "name": "add_sub",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": TENSORS,
        "outputs": OUTPUTS,
    },
    "/v2/models/add_sub/config": {
        "name": "add_sub",
        "backend": "onnxruntime",
        "max_batch_size": 32,
        "input": [{"name": t["name"], "data_type": "TYPE_FP32", "dims": [16]} for t in TENSORS],
        "output": [{"name": t["name"], "data_type": "TYPE_FP32", "dims": [16]} for t in OUTPUTS],
    },
    "/v2/models/add_sub/stats": {"model_stats": []},
    "/v2/models/stats": {"model_stats": []},
    "/v2": {"name": "bare-asgi", "version": "0", "extensions": []},
}
FIXED_BODIES = {path: orjson.dumps(doc) for path, doc in FIXED.items()}
JSON = [(b"content-type", b"application/json")]


def _add_sub(a: np.ndarray, b: np.ndarray) -> list[bytes]:
    return [(a + b).tobytes(), (a - b).tobytes()]


def _worker(jobs: queue.SimpleQueue[Any]) -> None:
    while True:
        a, b, future = jobs.get()
        future.get_loop().call_soon_threadsafe(future.set_result, _add_sub(a, b))


SERVED = [0]  # inferences answered
HOP: queue.SimpleQueue[Any] | None = None
if "--thread-hop" in sys.argv[2:]:
    HOP = queue.SimpleQueue()
    threading.Thread(target=_worker, args=(HOP,), daemon=True).start()


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if scope["method"] == "POST" and path.endswith("/infer"):
        message = await receive()
        body = message.get("body", b"")
        while message.get("more_body"):
            message = await receive()
            body += message.get("body", b"")
        length = next(
            int(v) for k, v in scope["headers"] if k == b"inference-header-content-length"
        )
        doc = orjson.loads(body[:length])
        shape = doc["inputs"][0]["shape"]
        size = doc["inputs"][0]["parameters"]["binary_data_size"]
        a = np.frombuffer(body, np.float32, size // 4, length)
        b = np.frombuffer(body, np.float32, size // 4, length + size)
        if HOP is None:
            outputs = _add_sub(a, b)
        else:
            future: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
            HOP.put((a, b, future))
            outputs = await future
        header = orjson.dumps(
            {
                "model_name": "add_sub",
                "outputs": [
                    {
                        "name": n,
                        "datatype": "FP32",
                        "shape": shape,
                        "parameters": {"binary_data_size": len(o)},
                    }
                    for n, o in zip(("OUTPUT0", "OUTPUT1"), outputs, strict=True)
                ],
            }
        )
        payload = b"".join((header, *outputs))
        SERVED[0] += 1
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(len(header)).encode()),
            (b"content-length", str(len(payload)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        return
    if path.endswith("/ready") or path.startswith("/v2/health"):
        status, payload = 200, b""
    elif path == "/served":
        status, payload = 200, str(SERVED[0]).encode()
    elif path in FIXED_BODIES:
        status, payload = 200, FIXED_BODIES[path]
    else:
        status, payload = 404, b'{"error": "not found"}'
    headers = [*JSON, (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        proxy_headers=False,
        server_header=False,
    )
