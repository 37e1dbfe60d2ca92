"""The asyncio gRPC client: the same calls as InferenceClient, awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from tensorgate_protos import grpc_service_pb2 as pb
from tensorgate_protos import grpc_service_pb2_grpc as pb_grpc

from tensorgate_client.grpc_client import rpc_error
from tensorgate_client.messages import (
    Parameter,
    StreamResult,
    infer_outputs,
    infer_request,
    to_dict,
)
from tensorgate_client.options import (
    REQUEST_ID,
    RetryPolicy,
    TlsOptions,
    channel_options,
    new_request_id,
)


class AsyncInferenceClient:
    """grpc.aio channel to one server; create it inside the event loop that uses it."""

    def __init__(
        self,
        url: str = "localhost:8001",
        *,
        tls: TlsOptions | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        max_message_bytes: int = 2**31 - 1,
    ) -> None:
        options = channel_options(max_message_bytes, tls)
        if tls is None:
            self._channel = grpc.aio.insecure_channel(url, options=options)
        else:
            self._channel = grpc.aio.secure_channel(url, tls.grpc_credentials(), options=options)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.last_request_id = ""

    async def close(self) -> None:
        """Close the connection; calls after this fail."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncInferenceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(
        self, method: str, request: Any, timeout: float | None, request_id: str | None
    ) -> Any:
        request_id = request_id or new_request_id()
        self.last_request_id = request_id
        metadata = ((REQUEST_ID, request_id),)
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        call = getattr(self._stub, method)
        delays = self.retry.delays()
        while True:
            try:
                remaining = max(deadline - time.monotonic(), 0)
                return await call(request, timeout=remaining, metadata=metadata)
            except grpc.RpcError as error:
                delay = next(delays, None)
                retryable = error.code() == grpc.StatusCode.UNAVAILABLE
                if not retryable or delay is None or time.monotonic() + delay >= deadline:
                    raise rpc_error(error, request_id) from None
                await asyncio.sleep(delay)

    async def server_live(self, timeout: float | None = None) -> bool:
        """Whether the server process serves (ServerLive)."""
        return bool((await self._call("ServerLive", pb.ServerLiveRequest(), timeout, None)).live)

    async def server_ready(self, timeout: float | None = None) -> bool:
        """Whether the server is ready for inference (ServerReady)."""
        response = await self._call("ServerReady", pb.ServerReadyRequest(), timeout, None)
        return bool(response.ready)

    async def model_ready(self, model: str, version: str = "") -> bool:
        """Whether a version of the model is loaded and ready (ModelReady)."""
        request = pb.ModelReadyRequest(name=model, version=version)
        return bool((await self._call("ModelReady", request, None, None)).ready)

    async def server_metadata(self) -> dict[str, Any]:
        """The server's name, version and protocol extensions."""
        return to_dict(await self._call("ServerMetadata", pb.ServerMetadataRequest(), None, None))

    async def model_metadata(self, model: str, version: str = "") -> dict[str, Any]:
        """The model's versions, platform and input and output tensors."""
        request = pb.ModelMetadataRequest(name=model, version=version)
        return to_dict(await self._call("ModelMetadata", request, None, None))

    async def model_config(self, model: str, version: str = "") -> dict[str, Any]:
        """The model's completed config.pbtxt, as a dict of its JSON form."""
        request = pb.ModelConfigRequest(name=model, version=version)
        return to_dict((await self._call("ModelConfig", request, None, None)).config)

    async def statistics(self, model: str = "", version: str = "") -> list[dict[str, Any]]:
        """Triton's ModelStatistics for one model, or every loaded model."""
        request = pb.ModelStatisticsRequest(name=model, version=version)
        response = await self._call("ModelStatistics", request, None, None)
        return [to_dict(s) for s in response.model_stats]

    async def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Every model in the repository with its state and, if any, the reason."""
        request = pb.RepositoryIndexRequest(ready=ready_only)
        response = await self._call("RepositoryIndex", request, None, None)
        return [to_dict(m) for m in response.models]

    async def load_model(self, model: str, timeout: float | None = None) -> None:
        """Load or reload a model (the server must run in explicit model-control mode)."""
        request = pb.RepositoryModelLoadRequest(model_name=model)
        await self._call("RepositoryModelLoad", request, timeout, None)

    async def unload_model(self, model: str, timeout: float | None = None) -> None:
        """Unload a model once its running requests finish (explicit mode)."""
        request = pb.RepositoryModelUnloadRequest(model_name=model)
        await self._call("RepositoryModelUnload", request, timeout, None)

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: str = "",
        outputs: Sequence[str] | None = None,
        id: str = "",
        parameters: Mapping[str, Parameter] | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one inference; the outputs by name (all of them unless `outputs` names some)."""
        request = infer_request(model, inputs, version, outputs, id, parameters)
        return infer_outputs(await self._call("ModelInfer", request, timeout, request_id))

    async def stream_infer(
        self,
        model: str,
        requests: AsyncIterable[Mapping[str, np.ndarray]],
        *,
        version: str = "",
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[StreamResult]:
        """One bidirectional stream; results as they complete, with their request's position."""
        request_id = request_id or new_request_id()
        self.last_request_id = request_id

        async def messages() -> AsyncIterator[pb.ModelInferRequest]:
            index = 0
            async for inputs in requests:
                yield infer_request(model, inputs, version, id=str(index))
                index += 1

        call = self._stub.ModelStreamInfer(
            messages(),
            timeout=timeout if timeout is not None else self.timeout,
            metadata=((REQUEST_ID, request_id),),
        )
        try:
            async for response in call:
                message = response.infer_response
                if response.error_message:
                    yield StreamResult(message.id, {}, response.error_message)
                else:
                    yield StreamResult(message.id, infer_outputs(message))
        except grpc.RpcError as error:
            raise rpc_error(error, request_id) from None
