"""The gRPC paths' CPU per request, in one process, without grpc: what tensorgate's handlers,
data plane and batcher cost a request over parsing and answering it.

perf_analyzer over loopback shares the 2 cores with the server, grpc's own work is most of a
request's cost, and the VM's speed drifts 20-40 % within minutes, so a change of a few
microseconds in tensorgate's part hides in the noise. Here `clients` clients each keep one
serialized add_sub request in flight, as perf_analyzer does, and send the next the moment the
response comes back:

- streaming: each client has a stream of its own into `ModelStreamInfer`;
- unary: each request is a task of its own running the ModelInfer handler that grpc would
  call (tensorgate's, with its request-id and trace headers), as grpc.aio runs each call.

Variants, run in turn for each round, each in a fresh process:

- bare-*: benchmarks/bare_grpc.py's handlers, which parse, compute add_sub with numpy and
  answer (the ceiling: what the harness and protobuf cost);
- tensorgate-*: tensorgate's handlers over the data plane, the dynamic batcher and one ONNX
  instance thread.

Reported: event-loop thread CPU, whole-process CPU and wall time per request, the median of
the rounds; a tensorgate variant's loop CPU minus its bare one's is what tensorgate costs a
request on that path. It serves the peers' add_sub (../shared/peers/setup.sh) from the
repository run_peer_bench.py builds, building it if missing.
usage: python benchmarks/grpc_inprocess.py [--repository DIR] [--rounds N] [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import inprocess
import numpy as np
from tensorgate_protos import grpc_service_pb2 as pb

VARIANTS = ("bare-stream", "tensorgate-stream", "bare-unary", "tensorgate-unary")
StreamHandler = Callable[
    [AsyncIterator[bytes], Any, Any], AsyncIterator[pb.ModelStreamInferResponse]
]
UnaryHandler = Callable[[bytes, Any], Awaitable[pb.ModelInferResponse]]


def _request() -> bytes:
    request = pb.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
    request.raw_input_contents.extend(
        [np.arange(16, dtype=np.float32).tobytes(), np.ones(16, np.float32).tobytes()]
    )
    return request.SerializeToString()


class _Context:
    """What the handlers read of grpc's servicer context: perf_analyzer's one header, a
    deadline far away."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("user-agent", "grpc-c++/1.67.0 grpc-c/44.0.0 (linux; chttp2)"),)

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    def time_remaining(self) -> float | None:
        return None


def _bare_handlers() -> tuple[StreamHandler, UnaryHandler]:
    from bare_grpc import _add_sub

    async def stream(
        requests: AsyncIterator[bytes], context: Any, parse: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for raw in requests:
            yield pb.ModelStreamInferResponse(infer_response=_add_sub(parse(raw)))

    async def unary(raw: bytes, context: Any) -> pb.ModelInferResponse:
        return _add_sub(pb.ModelInferRequest.FromString(raw))

    return stream, unary


async def _tensorgate_handlers(
    repository: Path, execution: str
) -> tuple[StreamHandler, UnaryHandler]:
    import shim_hop
    from tensorgate.transport.grpc.handlers import build_handler
    from tensorgate.transport.grpc.servicer import InferenceServicer

    servers = await shim_hop.servers_with(None, repository, -1, execution)
    servicer = InferenceServicer(servers.dataplane)
    # The unary handler grpc calls: tensorgate's parsing, headers and errors around ModelInfer.
    methods = build_handler(servicer)._method_handlers  # type: ignore[attr-defined]
    unary = methods["/inference.GRPCInferenceService/ModelInfer"].unary_unary
    return servicer.ModelStreamInfer, unary  # type: ignore[return-value]


async def _stream_client(handler: StreamHandler, raw: bytes, left: list[int]) -> None:
    """One stream: the next request goes in when the previous response comes out."""
    answered = asyncio.Event()

    async def requests() -> AsyncIterator[bytes]:
        while left[0] > 0:
            left[0] -= 1
            yield raw
            await answered.wait()
            answered.clear()

    async for response in handler(requests(), _Context(), pb.ModelInferRequest.FromString):
        if response.error_message:
            raise RuntimeError(response.error_message)
        response.SerializeToString()
        answered.set()


async def _unary_client(handler: UnaryHandler, raw: bytes, left: list[int]) -> None:
    """One connection: each call a task of its own, the next sent when one is answered."""
    loop = asyncio.get_running_loop()
    context = _Context()
    while left[0] > 0:
        left[0] -= 1
        response = await loop.create_task(handler(raw, context))
        response.SerializeToString()


async def _measure(
    variant: str, repository: Path, clients: int, requests: int, execution: str
) -> None:
    if variant.startswith("bare"):
        stream, unary = _bare_handlers()
    else:
        stream, unary = await _tensorgate_handlers(repository, execution)
    raw = _request()

    def run(left: list[int]) -> Awaitable[Any]:
        if variant.endswith("stream"):
            return asyncio.gather(*(_stream_client(stream, raw, left) for _ in range(clients)))
        return asyncio.gather(*(_unary_client(unary, raw, left) for _ in range(clients)))

    await run([clients * 50])  # warm up: first batches, the model's first runs
    since = inprocess.clocks()
    await run([requests])
    inprocess.report(since, requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=inprocess.DEFAULT_REPOSITORY)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=32)
    inprocess.add_execution_option(parser)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        from tensorgate.app import loop_factory

        with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:
            runner.run(
                _measure(args.variant, args.repository, args.clients, args.requests, args.execution)
            )
        return
    inprocess.ensure_repository(args.repository)
    arguments = ["--repository", str(args.repository), "--requests", str(args.requests)]
    arguments += ["--clients", str(args.clients), "--execution", args.execution]
    results = inprocess.run_rounds(__file__, VARIANTS, args.rounds, arguments)
    print(
        f"{args.clients} clients, {args.requests} requests, execution {args.execution}, "
        f"median of {args.rounds} rounds"
    )
    print("| variant | loop CPU µs/req | process CPU µs/req | wall µs/req | loop CPU over bare |")
    print("|---|---:|---:|---:|---:|")
    for variant, runs in results.items():
        bare = inprocess.medians(results["bare-" + variant.split("-")[-1]])[0]
        loop_us, process_us, wall_us = inprocess.medians(runs)
        print(
            f"| {variant} | {loop_us:.1f} | {process_us:.1f} | {wall_us:.1f} "
            f"| {loop_us - bare:+.1f} µs |"
        )


if __name__ == "__main__":
    main()
