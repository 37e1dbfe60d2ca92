"""The synchronous gRPC client: `InferenceClient("localhost:8001").infer("m", {"X": array})`."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from tensorgate_protos import grpc_service_pb2 as pb
from tensorgate_protos import grpc_service_pb2_grpc as pb_grpc

from tensorgate_client.errors import InferenceServerError
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


def rpc_error(error: grpc.RpcError, request_id: str) -> InferenceServerError:
    """An InferenceServerError from a grpc.RpcError, keeping its status and request id."""
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    return InferenceServerError(code.name if code else "UNKNOWN", details or "", request_id)


class InferenceClient:
    """A channel to one server. Thread-safe; close it (or use `with`) when done.

    Every call has a deadline (`timeout`, per client or per call), carries an `x-request-id`
    (yours or a generated one; the server logs it on every line of the request and returns
    it) and is retried on UNAVAILABLE according to `retry`.
    """

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
            self._channel = grpc.insecure_channel(url, options=options)
        else:
            self._channel = grpc.secure_channel(url, tls.grpc_credentials(), options=options)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.last_request_id = ""

    def close(self) -> None:
        """Close the connection; calls after this fail."""
        self._channel.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
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
                return call(request, timeout=max(deadline - time.monotonic(), 0), metadata=metadata)
            except grpc.RpcError as error:
                delay = next(delays, None)
                retryable = error.code() == grpc.StatusCode.UNAVAILABLE
                if not retryable or delay is None or time.monotonic() + delay >= deadline:
                    raise rpc_error(error, request_id) from None
                time.sleep(delay)

    # Health and metadata ---------------------------------------------------------------

    def server_live(self, timeout: float | None = None) -> bool:
        """Whether the server process serves (ServerLive)."""
        return bool(self._call("ServerLive", pb.ServerLiveRequest(), timeout, None).live)

    def server_ready(self, timeout: float | None = None) -> bool:
        """Whether the server is ready for inference (ServerReady)."""
        return bool(self._call("ServerReady", pb.ServerReadyRequest(), timeout, None).ready)

    def model_ready(self, model: str, version: str = "", timeout: float | None = None) -> bool:
        """Whether a version of the model is loaded and ready (ModelReady)."""
        request = pb.ModelReadyRequest(name=model, version=version)
        return bool(self._call("ModelReady", request, timeout, None).ready)

    def server_metadata(self) -> dict[str, Any]:
        """The server's name, version and protocol extensions."""
        return to_dict(self._call("ServerMetadata", pb.ServerMetadataRequest(), None, None))

    def model_metadata(self, model: str, version: str = "") -> dict[str, Any]:
        """The model's versions, platform and input and output tensors."""
        request = pb.ModelMetadataRequest(name=model, version=version)
        return to_dict(self._call("ModelMetadata", request, None, None))

    def model_config(self, model: str, version: str = "") -> dict[str, Any]:
        """The model's completed config.pbtxt, as a dict of its JSON form."""
        request = pb.ModelConfigRequest(name=model, version=version)
        return to_dict(self._call("ModelConfig", request, None, None).config)

    def statistics(self, model: str = "", version: str = "") -> list[dict[str, Any]]:
        """Triton's ModelStatistics for one model, or every loaded model."""
        request = pb.ModelStatisticsRequest(name=model, version=version)
        response = self._call("ModelStatistics", request, None, None)
        return [to_dict(s) for s in response.model_stats]

    # Repository ------------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Every model in the repository with its state and, if any, the reason."""
        response = self._call(
            "RepositoryIndex", pb.RepositoryIndexRequest(ready=ready_only), None, None
        )
        return [to_dict(m) for m in response.models]

    def load_model(self, model: str, timeout: float | None = None) -> None:
        """Load or reload a model (the server must run in explicit model-control mode)."""
        self._call(
            "RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=model), timeout, None
        )

    def unload_model(self, model: str, timeout: float | None = None) -> None:
        """Unload a model once its running requests finish (explicit mode)."""
        request = pb.RepositoryModelUnloadRequest(model_name=model)
        self._call("RepositoryModelUnload", request, timeout, None)

    # Inference -------------------------------------------------------------------------

    def infer(
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
        return infer_outputs(self._call("ModelInfer", request, timeout, request_id))

    def stream_infer(
        self,
        model: str,
        requests: Iterable[Mapping[str, np.ndarray]],
        *,
        version: str = "",
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Iterator[StreamResult]:
        """Send every request on one bidirectional stream; results come as they complete,
        each with the id of its request (its position, "0", "1", ...)."""
        request_id = request_id or new_request_id()
        self.last_request_id = request_id
        messages = (
            infer_request(model, inputs, version, id=str(i)) for i, inputs in enumerate(requests)
        )
        responses = self._stub.ModelStreamInfer(
            messages,
            timeout=timeout if timeout is not None else self.timeout,
            metadata=((REQUEST_ID, request_id),),
        )
        try:
            for response in responses:
                message = response.infer_response
                if response.error_message:
                    yield StreamResult(message.id, {}, response.error_message)
                else:
                    yield StreamResult(message.id, infer_outputs(message))
        except grpc.RpcError as error:
            raise rpc_error(error, request_id) from None
