"""The ceiling of the stack: a bare grpc.aio KServe-v2 server that computes add_sub with numpy.

No repository, validation or batching: ModelInfer and ModelStreamInfer decode the raw
contents, add and subtract, and answer. Metadata and config are fixed answers so that
perf_analyzer accepts it; ModelStatistics counts the inferences (one execution each), for CPU
time per request. It runs on the event loop tensorgate serves on (uvloop where installed), so
the two differ only in what happens between parsing and answering.

With --thread-hop, ModelInfer computes in one worker thread and awaits the result, one
hand-off per request: the ceiling of any server that keeps model code off the event loop.

usage: python benchmarks/bare_grpc.py PORT [--thread-hop]
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
from tensorgate_protos import grpc_service_pb2 as pb
from tensorgate_protos import model_config_pb2 as mc

SERVICE = "inference.GRPCInferenceService"
SHAPE = [-1, 16]


SERVED = [0]  # inferences answered


def _add_sub(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    SERVED[0] += 1  # the worker thread's increments are under the GIL too
    a = np.frombuffer(request.raw_input_contents[0], dtype=np.float32)
    b = np.frombuffer(request.raw_input_contents[1], dtype=np.float32)
    shape = request.inputs[0].shape
    response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
    for name in ("OUTPUT0", "OUTPUT1"):
        response.outputs.add(name=name, datatype="FP32", shape=shape)
    response.raw_output_contents.extend([(a + b).tobytes(), (a - b).tobytes()])
    return response


async def model_infer(request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
    return _add_sub(request)


class _Worker:
    """One thread that runs add_sub and hands each result back with call_soon_threadsafe."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[pb.ModelInferRequest, asyncio.Future[Any]]]
        self.jobs = queue.SimpleQueue()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            request, future = self.jobs.get()
            future.get_loop().call_soon_threadsafe(future.set_result, _add_sub(request))

    async def model_infer(
        self, request: pb.ModelInferRequest, context: Any
    ) -> pb.ModelInferResponse:
        future: asyncio.Future[pb.ModelInferResponse] = asyncio.get_running_loop().create_future()
        self.jobs.put((request, future))
        return await future


async def model_stream_infer(
    requests: AsyncIterator[pb.ModelInferRequest], context: Any
) -> AsyncIterator[pb.ModelStreamInferResponse]:
    async for request in requests:
        yield pb.ModelStreamInferResponse(infer_response=_add_sub(request))


async def model_metadata(request: Any, context: Any) -> pb.ModelMetadataResponse:
    response = pb.ModelMetadataResponse(name="add_sub", versions=["1"], platform="onnxruntime")
    for name in ("INPUT0", "INPUT1"):
        response.inputs.add(name=name, datatype="FP32", shape=SHAPE)
    for name in ("OUTPUT0", "OUTPUT1"):
        response.outputs.add(name=name, datatype="FP32", shape=SHAPE)
    return response


async def model_config(request: Any, context: Any) -> pb.ModelConfigResponse:
    config = mc.ModelConfig(name="add_sub", backend="onnxruntime", max_batch_size=32)
    for name in ("INPUT0", "INPUT1"):
        config.input.add(name=name, data_type=mc.TYPE_FP32, dims=[16])
    for name in ("OUTPUT0", "OUTPUT1"):
        config.output.add(name=name, data_type=mc.TYPE_FP32, dims=[16])
    return pb.ModelConfigResponse(config=config)


async def model_statistics(request: Any, context: Any) -> pb.ModelStatisticsResponse:
    response = pb.ModelStatisticsResponse()
    served = SERVED[0]
    response.model_stats.add(
        name="add_sub", version="1", inference_count=served, execution_count=served
    )
    return response


async def server_metadata(request: Any, context: Any) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name="bare", version="0")


async def ready(request: Any, context: Any) -> Any:
    return pb.ServerReadyResponse(ready=True)


def _unary(fn: Any, request_type: Any, response_type: Any) -> Any:
    return grpc.unary_unary_rpc_method_handler(
        fn,
        request_deserializer=request_type.FromString,
        response_serializer=response_type.SerializeToString,
    )


async def main(port: int, thread_hop: bool) -> None:
    infer = _Worker().model_infer if thread_hop else model_infer
    handlers = {
        "ModelInfer": _unary(infer, pb.ModelInferRequest, pb.ModelInferResponse),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
            model_stream_infer,
            request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelStreamInferResponse.SerializeToString,
        ),
        "ModelMetadata": _unary(model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "ModelConfig": _unary(model_config, pb.ModelConfigRequest, pb.ModelConfigResponse),
        "ModelStatistics": _unary(
            model_statistics, pb.ModelStatisticsRequest, pb.ModelStatisticsResponse
        ),
        "ServerMetadata": _unary(
            server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse
        ),
        "ServerReady": _unary(ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": _unary(ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    from tensorgate.app import loop_factory

    with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:
        runner.run(main(int(sys.argv[1]), "--thread-hop" in sys.argv[2:]))
