"""The HTTP path's CPU per request, in one process, with no sockets: what the shim itself costs.

perf_analyzer over loopback shares the 2 cores with the server and the VM's speed drifts
20-40 % within minutes, so a 10 % change in the shim's own work hides in the noise. Here
uvicorn's real protocol objects parse and answer add_sub requests from C connections that
resend as soon as their response is written, over an in-memory transport. Variants, run in
turn for each round:

- bare: benchmarks/bare_asgi.py's app (the ceiling: uvicorn plus a few lines of numpy);
- bare-hop: the same with its numpy work in one worker thread (`--thread-hop`);
- tensorgate: the REST shim, data plane, dynamic batcher and one ONNX instance thread;
- tensorgate-shim-hop: the REST shim with the data plane replaced by the same numpy in one
  worker thread (benchmarks/shim_hop.py): no batcher or bookkeeping, only the hop;
- tensorgate-no-dataplane: the same with the numpy on the loop (no thread), to split the
  shim's cost from the data plane's.

Each variant runs in a fresh process. Reported: event-loop thread CPU, whole-process CPU and
wall time per request, as the median of the rounds. It serves the peers' add_sub
(../shared/peers/setup.sh) from the repository run_peer_bench.py builds, building it if missing.
usage: python benchmarks/http_inprocess.py [--repository DIR] [--rounds N] [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import inprocess

VARIANTS = ("bare", "bare-hop", "tensorgate", "tensorgate-shim-hop", "tensorgate-no-dataplane")


def _request() -> bytes:
    import numpy as np
    import orjson

    tensors = [
        {"name": n, "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}}
        for n in ("INPUT0", "INPUT1")
    ]
    outputs = [{"name": n, "parameters": {"binary_data": True}} for n in ("OUTPUT0", "OUTPUT1")]
    header = orjson.dumps({"inputs": tensors, "outputs": outputs})
    body = header + np.arange(16, dtype=np.float32).tobytes() + np.ones(16, np.float32).tobytes()
    return (
        b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
        b"Inference-Header-Content-Length: %d\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(header), len(body), body)
    )


class _Socket(asyncio.Transport):
    """Collects a response's bytes and calls back once its Content-Length is complete."""

    def __init__(self, on_response: Any) -> None:
        super().__init__()
        self.pending = b""
        self.on_response = on_response
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.pending += bytes(data)
        end = self.pending.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.pending[:end].lower()
        at = head.index(b"content-length: ") + 16
        length = int(head[at : head.index(b"\r\n", at)] if b"\r\n" in head[at:] else head[at:])
        if len(self.pending) >= end + 4 + length:
            status, self.pending = self.pending[9:12], b""
            self.on_response(status)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _app_and_config(variant: str, repository: Path, execution: str) -> tuple[Any, Any]:
    import uvicorn

    if variant.startswith("bare"):
        sys.argv[1:] = ["0", "--thread-hop"] if variant == "bare-hop" else ["0"]
        import bare_asgi

        config = uvicorn.Config(
            bare_asgi.app, http="httptools", lifespan="off", access_log=False, log_config=None
        )
        return bare_asgi.app, config
    import shim_hop

    free: shim_hop.FreeDataPlane | None = None  # tensorgate: its own data plane
    if variant == "tensorgate-shim-hop":
        free = shim_hop.hop_infer()
    elif variant == "tensorgate-no-dataplane":
        free = shim_hop.inline_infer
    servers = await shim_hop.servers_with(free, repository, 8000, execution)
    assert servers.http is not None
    return servers.http.config.app, servers.http.config


async def _measure(
    variant: str, repository: Path, connections: int, requests: int, execution: str
) -> None:
    from uvicorn.server import ServerState

    request = _request()
    _, config = await _app_and_config(variant, repository, execution)
    config.load()
    loop = asyncio.get_running_loop()
    state = ServerState()
    done: asyncio.Future[None] = loop.create_future()
    left, failed = [requests], [0]

    def connect() -> Any:
        protocol = config.http_protocol_class(config, state, {}, loop)

        def on_response(status: bytes) -> None:
            failed[0] += status != b"200"
            left[0] -= 1
            if left[0] > 0:
                loop.call_soon(protocol.data_received, request)
            elif not done.done():
                done.set_result(None)

        protocol.connection_made(_Socket(on_response))
        return protocol

    protocols = [connect() for _ in range(connections)]
    since = inprocess.clocks()
    for protocol in protocols:
        protocol.data_received(request)
    await done
    inprocess.report(since, requests, failed=failed[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=inprocess.DEFAULT_REPOSITORY)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=8)
    inprocess.add_execution_option(parser)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        from tensorgate.app import loop_factory

        with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:
            runner.run(
                _measure(
                    args.variant, args.repository, args.connections, args.requests, args.execution
                )
            )
        return
    inprocess.ensure_repository(args.repository)
    arguments = ["--repository", str(args.repository), "--requests", str(args.requests)]
    arguments += ["--connections", str(args.connections), "--execution", args.execution]
    results = inprocess.run_rounds(__file__, VARIANTS, args.rounds, arguments)
    print(
        f"{args.connections} connections, {args.requests} requests, execution {args.execution}, "
        f"median of {args.rounds} rounds"
    )
    print("| variant | loop CPU µs/req | process CPU µs/req | wall µs/req | loop CPU vs bare |")
    print("|---|---:|---:|---:|---:|")
    bare = inprocess.medians(results["bare"])[0]
    for variant, runs in results.items():
        loop_us, process_us, wall_us = inprocess.medians(runs)
        bad = sum(int(r["failed"]) for r in runs)
        note = f" ({bad} non-200)" if bad else ""
        print(
            f"| {variant}{note} | {loop_us:.1f} | {process_us:.1f} | {wall_us:.1f} "
            f"| {loop_us / bare:.2f}× |"
        )


if __name__ == "__main__":
    main()
