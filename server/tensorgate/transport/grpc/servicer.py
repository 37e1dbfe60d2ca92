"""gRPC servicer for inference.GRPCInferenceService: decode, call the data plane, encode."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import grpc
from tensorgate_protos import grpc_service_pb2 as pb
from tensorgate_protos import server_status_pb2 as status_pb

from tensorgate.dataplane.dataplane import DataPlane
from tensorgate.dataplane.shared_memory import CUDA
from tensorgate.dataplane.types import InferRequest, InferResponse
from tensorgate.errors import (
    INTERNAL_MESSAGE,
    InvalidArgument,
    PermissionDenied,
    TensorgateError,
    Unavailable,
    Unimplemented,
)
from tensorgate.observability.logs import LogControl
from tensorgate.observability.tracing import RequestTrace, traced_infer, traced_stream
from tensorgate.protocol.grpc_codec import decode_infer_request, encode_infer_response
from tensorgate.protocol.grpc_wire import WireResponse, WireStreamResponse, encode_for_wire
from tensorgate.protocol.model_stats import encode_model_statistics
from tensorgate.transport.grpc.stream_window import StreamWindow
from tensorgate.transport.header_forward import HeaderForward
from tensorgate.workers.siblings import Siblings, merge_index, merge_statistics

log = logging.getLogger(__name__)

# Requests of one stream pending at once (running, or answered and not yet written); more
# wait, which pushes back on the client. The same bound holds a decoupled model's unwritten
# responses, so one whose client reads slowly is held back too.
STREAM_MAX_IN_FLIGHT = 256
# Triton's request parameter asking for a bare final response when a decoupled model ends
# without one, and the response parameter that flags a stream's last response.
EMPTY_FINAL_PARAMETER = "triton_enable_empty_final_response"
FINAL_PARAMETER = "triton_final_response"
# A new request on a stream opened before the shutdown began (new calls are refused by grpc).
_SHUTTING_DOWN = "the server is shutting down: send new requests to another instance"
_INFER = "inference.GRPCInferenceService/ModelInfer"
_STREAM = "inference.GRPCInferenceService/ModelStreamInfer"
# What a stream sends: a message, or one with large outputs serialized by hand.
StreamAnswer = pb.ModelStreamInferResponse | WireStreamResponse


class InferenceServicer:
    """One method per RPC; each receives the parsed request and returns the response."""

    def __init__(
        self,
        dataplane: DataPlane,
        log_control: LogControl | None = None,
        log_updates_allowed: bool = False,
        siblings: Siblings | None = None,
        header_forward: HeaderForward | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.log_control = log_control
        self.log_updates_allowed = log_updates_allowed
        # Other worker processes of this server (--workers): statistics, the index, control
        # and log settings answer for all of them. None: this process is the whole server.
        self.siblings = siblings
        # Metadata forwarded to models as request parameters (--grpc-header-forward-pattern).
        self.header_forward = header_forward

    def _trace(self, name: str, model: str) -> RequestTrace | None:
        tracing = self.dataplane.tracing
        if tracing is None:
            return None
        method = name.rsplit("/", 1)[-1]
        return tracing.start_call(name, {"rpc.system": "grpc", "rpc.method": method}, model)

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Any
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Any
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.server_ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Any
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(
            ready=self.dataplane.model_ready(request.name, request.version)
        )

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        name, version, extensions = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        model = self.dataplane.model(request.name, request.version)
        spec = model.spec
        response = pb.ModelMetadataResponse(
            name=model.name,
            versions=self.dataplane.model_versions(model.name),
            platform=model.config.platform or model.config.backend,
        )
        for target, tensors in ((response.inputs, spec.inputs), (response.outputs, spec.outputs)):
            for t in tensors.values():
                target.add(
                    name=t.name,
                    datatype=t.datatype.name,
                    shape=t.metadata_shape(spec.max_batch_size),
                )
        return response

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Any
    ) -> pb.ModelConfigResponse:
        model = self.dataplane.model(request.name, request.version)
        return pb.ModelConfigResponse(config=model.config)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        response = pb.ModelStatisticsResponse()
        if request.name:
            models = [self.dataplane.model(request.name, request.version)]
        else:
            models = self.dataplane.loaded_versions()
        for model in models:
            encode_model_statistics(
                response.model_stats.add(), model.name, model.version, model.stats
            )
        if self.siblings is not None:
            others = await self.siblings.gather("ModelStatistics", request)
            return merge_statistics([response, *others])
        return response

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for name, version, state, reason in self.dataplane.repository_index(request.ready):
            response.models.add(name=name, version=version, state=state, reason=reason)
        if self.siblings is not None:
            others = await self.siblings.gather("RepositoryIndex", request)
            return merge_index([response, *others])
        return response

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        await self.dataplane.load_model(request.model_name, _repository_parameters(request))
        if self.siblings is not None:  # every worker has it before the caller hears back
            await self.siblings.gather("RepositoryModelLoad", request)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        await self.dataplane.unload_model(request.model_name, _repository_parameters(request))
        if self.siblings is not None:
            await self.siblings.gather("RepositoryModelUnload", request)
        return pb.RepositoryModelUnloadResponse()

    def _forward_headers(self, request: pb.ModelInferRequest, context: Any) -> None:
        """The call's matching metadata as the request's string parameters, where the
        request does not set them itself."""
        assert self.header_forward is not None
        for name, value in self.header_forward.matching(context.invocation_metadata()).items():
            if name not in request.parameters:
                request.parameters[name].string_param = value

    def _stream_parser(
        self, parse: Callable[[bytes], pb.ModelInferRequest], context: Any
    ) -> Callable[[bytes], pb.ModelInferRequest]:
        """The stream's parser, adding its metadata to each request where forwarded."""
        if self.header_forward is None:
            return parse

        def parse_forwarding(raw: bytes) -> pb.ModelInferRequest:
            request = parse(raw)
            self._forward_headers(request, context)
            return request

        return parse_forwarding

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Any
    ) -> pb.ModelInferResponse | WireResponse:
        if self.header_forward is not None:
            self._forward_headers(request, context)
        shm = self.dataplane.shared_memory
        if (
            self.dataplane.tracing is not None
            and (trace := self._trace(_INFER, request.model_name)) is not None
        ):
            return await self._traced(trace, request, "grpc")
        decoded = decode_infer_request(request, shm)
        remaining_s = context.time_remaining()
        if remaining_s is not None:  # deadline-aware admission reads it
            decoded.deadline_ns = time.monotonic_ns() + int(remaining_s * 1e9)
        response = await self.dataplane.infer(decoded)
        return encode_for_wire(response, decoded.output_regions, shm)

    async def _traced(
        self,
        trace: RequestTrace,
        request: pb.ModelInferRequest,
        protocol: str,
        into: pb.ModelInferResponse | None = None,
    ) -> pb.ModelInferResponse:
        shm = self.dataplane.shared_memory
        decoded: InferRequest | None = None

        def decode() -> InferRequest:
            nonlocal decoded
            decoded = decode_infer_request(request, shm)
            decoded.protocol = protocol
            return decoded

        def encode(response: InferResponse) -> pb.ModelInferResponse:
            assert decoded is not None
            return encode_infer_response(response, decoded.output_regions, shm, into)

        return await traced_infer(trace, decode, self.dataplane.infer, encode)

    def _decode_streamed(self, request: pb.ModelInferRequest) -> InferRequest:
        decoded = decode_infer_request(request, self.dataplane.shared_memory)
        decoded.protocol = "grpc_stream"
        return decoded

    async def _stream_traced(
        self, request: pb.ModelInferRequest, trace: RequestTrace
    ) -> pb.ModelStreamInferResponse:
        answer = pb.ModelStreamInferResponse()  # the response is encoded into it, not copied
        try:
            await self._traced(trace, request, "grpc_stream", answer.infer_response)
            return answer
        except Exception as exc:
            return _stream_error(request, exc)

    async def _stream_decoupled(
        self,
        request: pb.ModelInferRequest,
        put: Callable[[pb.ModelStreamInferResponse], Awaitable[None]],
        deadline_ns: int,
    ) -> None:
        """A decoupled model's responses to one request of the stream, each flagged final
        or not; the bare final flag goes out only if the client asked for it, as Triton."""
        try:
            started = time.perf_counter_ns()
            decoded = self._decode_streamed(request)
            decoded.deadline_ns = deadline_ns
            empty_final = decoded.parameters.get(EMPTY_FINAL_PARAMETER) is True
            trace = self._trace(_STREAM, request.model_name) if self.dataplane.tracing else None
            if trace is None:
                stream = self.dataplane.stream(decoded)
            else:  # each response recorded under the request's trace, which ends with it
                trace.child("decode", started, time.perf_counter_ns())
                decoded.trace = trace
                stream = traced_stream(decoded, self.dataplane.stream)
            async with aclosing(stream) as responses:
                async for response in responses:
                    # A traced stream's last encode is timed: its REQUEST_END and send stamps.
                    encoding = time.perf_counter_ns() if trace and response.final else 0
                    answer = _streamed_answer(response, empty_final)
                    if encoding and trace is not None:
                        trace.child("encode", encoding, time.perf_counter_ns())
                    if answer is not None:
                        await put(answer)
        except Exception as exc:
            await put(_stream_error(request, exc))

    async def ModelStreamInfer(
        self, requests: AsyncIterator[bytes], context: Any, parse: Any
    ) -> AsyncIterator[StreamAnswer]:
        """Requests of a stream run concurrently; responses go out as they complete."""
        parse = self._stream_parser(parse, context)
        window: StreamWindow[StreamAnswer] = StreamWindow(STREAM_MAX_IN_FLIGHT)
        remaining_s = context.time_remaining()
        deadline_ns = 0 if remaining_s is None else time.monotonic_ns() + int(remaining_s * 1e9)
        running = _StreamRequests(self, window, deadline_ns)

        async def read() -> None:
            try:
                async for raw in requests:
                    await window.take_slot()
                    try:
                        request = parse(raw)
                    except TensorgateError as exc:
                        window.answer(pb.ModelStreamInferResponse(error_message=exc.message))
                        continue
                    if self.dataplane.draining:  # what it runs finishes; nothing new starts
                        window.answer(_stream_error(request, Unavailable(_SHUTTING_DOWN)))
                        continue
                    running.start(request)
            except BaseException:
                window.close(wait_for_pending=False)
                raise
            window.close()

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (item := await window.next()) is not None:
                yield item
            await reader
        finally:
            reader.cancel()
            running.cancel()

    async def LogSettings(
        self, request: pb.LogSettingsRequest, context: Any
    ) -> pb.LogSettingsResponse:
        """Triton's log settings: read them, or change the level at run time."""
        control = self.log_control
        if control is None:
            raise Unimplemented("log settings are not available in this process")
        changes: dict[str, bool | int | str] = {}
        for key, value in request.settings.items():
            choice = value.WhichOneof("parameter_choice")
            if choice is None:
                raise InvalidArgument(f"log setting '{key}' has no value")
            changes[key] = getattr(value, choice)
        if changes and not self.log_updates_allowed:
            raise PermissionDenied(
                "log settings are read-only: start the server with --allow-log-updates "
                "or --model-control-mode explicit to change them"
            )
        current = control.update(changes) if changes else control.settings()
        if changes and self.siblings is not None:
            await self.siblings.gather("LogSettings", request)
        response = pb.LogSettingsResponse()
        for key, setting in current.items():
            target = response.settings[key]
            if isinstance(setting, bool):
                target.bool_param = setting
            elif isinstance(setting, int):
                target.uint32_param = setting
            else:
                target.string_param = setting
        return response

    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Any
    ) -> pb.SystemSharedMemoryStatusResponse:
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self.dataplane.shared_memory.status(request.name):
            status = response.regions[region.name]
            status.name, status.key = region.name, region.key
            status.offset, status.byte_size = region.offset, region.byte_size
        return response

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Any
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self.dataplane.shared_memory.register(
            request.name, request.key, request.offset, request.byte_size
        )
        if self.siblings is not None:  # whichever worker serves the requests reads it
            await self.siblings.gather("SystemSharedMemoryRegister", request)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Any
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self.dataplane.shared_memory.unregister(request.name)
        if self.siblings is not None:
            await self.siblings.gather("SystemSharedMemoryUnregister", request)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: Any
    ) -> pb.CudaSharedMemoryStatusResponse:
        response = pb.CudaSharedMemoryStatusResponse()
        for region in self.dataplane.shared_memory.status(request.name, CUDA):
            status = response.regions[region.name]
            status.name, status.byte_size = region.name, region.byte_size
            status.device_id = region.device.device_id if region.device is not None else 0
        return response

    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: Any
    ) -> pb.CudaSharedMemoryRegisterResponse:
        self.dataplane.shared_memory.register_cuda(
            request.name, request.raw_handle, request.device_id, request.byte_size
        )
        if self.siblings is not None:
            await self.siblings.gather("CudaSharedMemoryRegister", request)
        return pb.CudaSharedMemoryRegisterResponse()

    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: Any
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        self.dataplane.shared_memory.unregister(request.name, CUDA)
        if self.siblings is not None:
            await self.siblings.gather("CudaSharedMemoryUnregister", request)
        return pb.CudaSharedMemoryUnregisterResponse()

    async def TraceSetting(
        self, request: pb.TraceSettingRequest, context: Any
    ) -> pb.TraceSettingResponse:
        """Triton's trace settings: read them, or change them, for the server or one model.
        A setting sent without values is cleared, falling back to the server's."""
        changes = {key: list(setting.value) or None for key, setting in request.settings.items()}
        current = self.dataplane.trace_settings(request.model_name, changes)
        if changes and self.siblings is not None:
            await self.siblings.gather("TraceSetting", request)
        response = pb.TraceSettingResponse()
        for key, values in current.items():
            response.settings[key].value.extend(values)
        return response


class StatusServicer:
    """tensorgate.ServerStatus: the schedulers' state, for the browser page's live view, and
    this process's metrics, for the supervisor of worker processes."""

    def __init__(
        self, dataplane: DataPlane, metrics_text: Callable[[], bytes] | None = None
    ) -> None:
        self.dataplane = dataplane
        self.metrics_text = metrics_text

    async def Metrics(self, request: status_pb.MetricsRequest, context: Any) -> Any:
        if self.metrics_text is None:
            raise Unimplemented("metrics are off in this process (--metrics-port -1)")
        return status_pb.MetricsResponse(text=self.metrics_text())

    async def SchedulerStatus(
        self, request: status_pb.SchedulerStatusRequest, context: Any
    ) -> status_pb.SchedulerStatusResponse:
        response = status_pb.SchedulerStatusResponse()
        entries = {}
        for model in self.dataplane.loaded_versions():
            status = model.runner.status()
            entries[model.name, model.version] = response.models.add(
                name=model.name,
                version=str(model.version),
                queued=status.queued,
                executing=status.executing,
                instances=status.instances,
                max_batch_size=model.spec.max_batch_size,
            )
        for name, version, snap in self.dataplane.generation_snapshots():
            stats = snap.stats
            entries[name, version].generation.CopyFrom(
                status_pb.SchedulerStatusResponse.GenerationEngine(
                    running=snap.running,
                    waiting=snap.waiting,
                    preemptions=snap.preemptions,
                    kv_blocks_used=snap.blocks_used,
                    kv_blocks_free=snap.blocks_free,
                    prefix_cache_queried_tokens=snap.prefix_queried,
                    prefix_cache_hit_tokens=snap.prefix_hit,
                    prompt_tokens=stats.prompt_tokens,
                    generated_tokens=stats.generated_tokens,
                    first_token_count=stats.first_token.count,
                    first_token_seconds=stats.first_token.total * stats.first_token.scale,
                    inter_token_count=stats.inter_token.count,
                    inter_token_seconds=stats.inter_token.total * stats.inter_token.scale,
                )
            )
        return response


def _streamed_answer(
    response: InferResponse, empty_final: bool
) -> pb.ModelStreamInferResponse | None:
    """One response of a decoupled request as it goes on the stream, flagged final or not;
    None for the bare final flag, sent only to clients that asked for it, as Triton does."""
    if response.final and not response.outputs and not empty_final:
        return None
    answer = pb.ModelStreamInferResponse()
    message = encode_infer_response(response, into=answer.infer_response)
    message.parameters[FINAL_PARAMETER].bool_param = response.final
    return answer


class _StreamRequests:
    """The requests of one gRPC stream that have started and not been answered.

    An ordinary model's request runs without a task of its own: the data plane answers it
    through a callback into the stream's window, and what it waits on (its batch's future)
    is kept to be cancelled if the stream ends first. A task per request, with the three
    coroutines it ran, cost about 5 % of a streamed request's instructions on the loop. A
    decoupled or a traced request runs in a task.
    """

    def __init__(
        self,
        servicer: InferenceServicer,
        window: StreamWindow[StreamAnswer],
        deadline_ns: int,
    ) -> None:
        self.servicer = servicer
        self.window = window
        self.deadline_ns = deadline_ns  # the stream's own deadline, for decoupled requests
        self.waiting: set[asyncio.Future[Any]] = set()
        self._loop = asyncio.get_running_loop()

    def start(self, request: pb.ModelInferRequest) -> None:
        """Start a request that has taken a slot in the window; its answer frees it."""
        servicer = self.servicer
        dataplane = servicer.dataplane
        task: asyncio.Task[Any]
        if dataplane.is_decoupled(request.model_name, request.model_version):
            task = self._loop.create_task(self._decoupled(request))
            task.add_done_callback(self.waiting.discard)
        elif (
            dataplane.tracing is not None
            and (trace := servicer._trace(_STREAM, request.model_name)) is not None
        ):
            task = self._loop.create_task(servicer._stream_traced(request, trace))
            task.add_done_callback(self._traced_answered)
        else:
            self._start_plain(request)
            return
        self.waiting.add(task)

    def cancel(self) -> None:
        """The stream ended first: nobody reads what is still running."""
        for future in list(self.waiting):
            future.cancel()

    def _start_plain(self, request: pb.ModelInferRequest) -> None:
        servicer, window = self.servicer, self.window
        try:
            decoded = servicer._decode_streamed(request)
        except Exception as exc:
            window.answer(_stream_error(request, exc))
            return
        future: asyncio.Future[Any] | None = None
        waiting, shm = self.waiting, servicer.dataplane.shared_memory

        def answered(outcome: InferResponse | BaseException) -> None:
            if future is not None:
                waiting.discard(future)
            if isinstance(outcome, BaseException):
                if isinstance(outcome, asyncio.CancelledError):
                    window.release()
                else:
                    window.answer(_stream_error(request, outcome))
                return
            message = pb.ModelStreamInferResponse()
            answer: StreamAnswer = message
            try:
                # Encoded into the stream message: constructing it with a response copies it.
                into = message.infer_response
                encoded = encode_for_wire(outcome, decoded.output_regions, shm, into)
                if type(encoded) is WireResponse:
                    answer = WireStreamResponse(encoded)
            except Exception as exc:
                answer = _stream_error(request, exc)
            window.answer(answer)

        future = servicer.dataplane.infer_soon(decoded, answered)
        if future is not None:
            waiting.add(future)

    def _traced_answered(self, task: asyncio.Task[pb.ModelStreamInferResponse]) -> None:
        self.waiting.discard(task)
        if task.cancelled():
            self.window.release()
        else:
            self.window.answer(task.result())  # _stream_traced answers errors, never raises

    async def _decoupled(self, request: pb.ModelInferRequest) -> None:
        try:
            await self.servicer._stream_decoupled(request, self.window.put, self.deadline_ns)
        finally:
            self.window.release()


def _stream_error(request: pb.ModelInferRequest, exc: BaseException) -> pb.ModelStreamInferResponse:
    """A failed request of a stream: the error travels in a response and the stream goes on."""
    if isinstance(exc, TensorgateError):
        message = exc.message
    else:  # a bug: the client gets the fixed message, the log the details
        log.error("unexpected error in a ModelStreamInfer request", exc_info=exc)
        message = INTERNAL_MESSAGE
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name,
            model_version=request.model_version,
            id=request.id,
        ),
    )


def status_code(exc: TensorgateError) -> grpc.StatusCode:
    """The gRPC status for an expected failure, from the one error table."""
    return grpc.StatusCode[exc.kind.grpc_status_name]


def _repository_parameters(
    request: pb.RepositoryModelLoadRequest | pb.RepositoryModelUnloadRequest,
) -> dict[str, object]:
    """A load or unload request's parameters as plain values (a bytes file stays bytes)."""
    values: dict[str, object] = {}
    for key, param in request.parameters.items():
        choice = param.WhichOneof("parameter_choice")
        values[key] = getattr(param, choice) if choice is not None else None
    return values
