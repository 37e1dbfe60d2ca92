"""Request traces: which requests are traced, and the two places traces go.

`Tracing` asks the trace settings (observability/trace_settings.py) whether a request is
traced, then starts its trace in a sink: OpenTelemetry spans (`SpanSink`, the `otel` extra), or
Triton's JSON trace file (observability/trace_file.py). The transports call `start_call`, and
`traced_infer` runs decode, infer and encode under the trace; the data plane adds the batch.

In OpenTelemetry a traced inference is a server span with children for decode, queue and
encode; the batch it rode in is one `execute` span per batch, a child of the first traced
request in the batch and linked to every traced request in it, so a trace of any request leads
to the batch and the batch to all its requests. Timings are measured on the request path with
perf_counter_ns (cheap, monotonic) and turned into wall-clock span times only for requests
being traced.

With tracing off (the default) nothing here is imported beyond this module and the request
path pays one `is None` check.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import Any, Protocol, TypeVar

from tensorgate.dataplane.types import InferRequest, InferResponse
from tensorgate.errors import TensorgateError
from tensorgate.observability.context import current_call
from tensorgate.observability.trace_settings import TraceSettings
from tensorgate.runners.base import BatchTiming


class RequestTrace(Protocol):
    """One traced request, as the request path reports it (perf_counter_ns times)."""

    def child(self, name: str, start_ns: int, end_ns: int) -> None:
        """A finished step: `decode` (request bytes to arrays) or `encode` (and back)."""

    def decoded(self, request: InferRequest) -> None: ...

    def answered(self, response: InferResponse) -> None: ...

    def batch(self, timing: BatchTiming, queue_ns: int) -> None:
        """The request waited `queue_ns` and then ran in this batch."""

    def step(self, model: str) -> RequestTrace:
        """The trace of a request this one makes to `model` (an ensemble's step), under it."""

    def end(self, error: BaseException | None = None, end_ns: int | None = None) -> None: ...


class TraceSink(Protocol):
    """Where traces go: starts one request's trace, and flushes at shutdown."""

    def start(
        self,
        name: str,
        attributes: Mapping[str, Any],
        traceparent: str,
        tracestate: str,
        model: str,
        levels: tuple[str, ...],
    ) -> RequestTrace | None: ...

    def shutdown(self) -> None: ...


class Tracing:
    """The trace settings and the sink, built once at start."""

    def __init__(self, settings: TraceSettings, sink: TraceSink) -> None:
        self.settings = settings
        self.sink = sink

    def start_call(
        self, name: str, attributes: Mapping[str, Any], model: str
    ) -> RequestTrace | None:
        """The trace of the current call's request for `model`; None when not traced."""
        call = current_call()
        traceparent, tracestate = (call.traceparent, call.tracestate) if call else ("", "")
        levels = self.settings.sample(model, _sampled(traceparent))
        if levels is None:
            return None
        if call is not None:
            attributes = {**attributes, "tensorgate.request_id": call.request_id}
        return self.sink.start(name, attributes, traceparent, tracestate, model, levels)

    def shutdown(self) -> None:
        self.sink.shutdown()


def _sampled(traceparent: str) -> bool | None:
    """The sampled flag of a W3C traceparent; None when there is none (or it is malformed)."""
    parts = traceparent.split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[3]) != 2:
        return None
    try:
        return bool(int(parts[3], 16) & 1)
    except ValueError:
        return None


class SpanSink:
    """OpenTelemetry: a tracer, a propagator and an exporter."""

    def __init__(
        self,
        exporter_name: str,
        exporter: Any = None,
        otlp_url: str = "",
        resource: Mapping[str, str] | None = None,
    ) -> None:
        """`otlp_url`: send spans over OTLP/HTTP there (Triton's opentelemetry `url`; a
        bare `host:port/path` is http://) instead of OTLP/gRPC; `resource`: attributes of
        the service, over tensorgate's service.name and version."""
        try:
            from opentelemetry.propagators.textmap import DefaultGetter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import (
                BatchSpanProcessor,
                ConsoleSpanExporter,
                SimpleSpanProcessor,
            )
            from opentelemetry.trace import Link, SpanKind, Status, StatusCode
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError as exc:
            raise RuntimeError(
                f"--trace-exporter {exporter_name} needs OpenTelemetry: "
                f"pip install 'tensorgate[otel]' ({exc})"
            ) from None
        from tensorgate import __version__

        # No sampler of its own: the trace settings choose which requests get a span.
        provider = TracerProvider(
            resource=Resource.create(
                {"service.name": "tensorgate", "service.version": __version__, **(resource or {})}
            ),
        )
        if exporter is not None:  # tests hand in an in-memory exporter
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        elif exporter_name == "console":
            # One JSON object per line on stdout, written by the batch processor's thread.
            console = ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
            provider.add_span_processor(BatchSpanProcessor(console))
        elif otlp_url:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpExporter,
            )

            url = otlp_url if "://" in otlp_url else f"http://{otlp_url}"
            provider.add_span_processor(BatchSpanProcessor(HttpExporter(endpoint=url)))
        else:
            # Endpoint, headers and TLS come from the standard OTEL_EXPORTER_OTLP_* variables.
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.provider = provider
        self.tracer = provider.get_tracer("tensorgate")
        self.propagator = TraceContextTextMapPropagator()
        self._getter = DefaultGetter()
        self._Link, self._SpanKind = Link, SpanKind
        self._Status, self._StatusCode = Status, StatusCode
        # perf_counter_ns + offset = wall-clock ns, which is what span times are.
        self.offset_ns = time.time_ns() - time.perf_counter_ns()

    def start(
        self,
        name: str,
        attributes: Mapping[str, Any],
        traceparent: str,
        tracestate: str,
        model: str,
        levels: tuple[str, ...],
    ) -> SpanTrace | None:
        """A server span for one request, under the client's trace if it sent one."""
        carrier = {"traceparent": traceparent, "tracestate": tracestate} if traceparent else {}
        parent = self.propagator.extract(carrier, getter=self._getter)
        span = self.tracer.start_span(
            name, context=parent, kind=self._SpanKind.SERVER, attributes=dict(attributes)
        )
        if not span.is_recording():
            return None
        return SpanTrace(self, span)

    def shutdown(self) -> None:
        self.provider.shutdown()


class SpanTrace:
    """The spans of one request being traced."""

    __slots__ = ("span", "tracing")

    def __init__(self, tracing: SpanSink, span: Any) -> None:
        self.tracing = tracing
        self.span = span

    def child(self, name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
        from opentelemetry import trace

        offset = self.tracing.offset_ns
        span = self.tracing.tracer.start_span(
            name,
            context=trace.set_span_in_context(self.span),
            start_time=start_ns + offset,
            attributes=attributes,
        )
        span.end(end_time=end_ns + offset)

    def decoded(self, request: InferRequest) -> None:
        self.span.set_attribute("tensorgate.model", request.model_name)

    def answered(self, response: InferResponse) -> None:
        self.span.set_attribute("tensorgate.model_version", response.model_version)

    def step(self, model: str) -> SpanTrace:
        from opentelemetry import trace

        span = self.tracing.tracer.start_span(
            f"step {model}",
            context=trace.set_span_in_context(self.span),
            attributes={"tensorgate.model": model},
        )
        return SpanTrace(self.tracing, span)

    def batch(self, timing: BatchTiming, queue_ns: int) -> None:
        """This request's queue span, and its place in the batch's execute span."""
        self.child("queue", timing.dispatched_ns - queue_ns, timing.dispatched_ns)
        timing.traces.append(self)
        if len(timing.traces) == 1:
            # Every request of the batch was woken by the same scheduler callback, so their
            # continuations are already queued on the loop; this runs after all of them have
            # added themselves, and emits the batch's span once.
            asyncio.get_running_loop().call_soon(_emit_batch, timing)

    def end(self, error: BaseException | None = None, end_ns: int | None = None) -> None:
        if error is not None:
            message = error.message if isinstance(error, TensorgateError) else type(error).__name__
            self.span.set_status(self.tracing._Status(self.tracing._StatusCode.ERROR, message))
        self.span.end(end_time=None if end_ns is None else end_ns + self.tracing.offset_ns)


T = TypeVar("T")


async def traced_infer(
    trace: RequestTrace,
    decode: Callable[[], InferRequest],
    infer: Callable[[InferRequest], Awaitable[InferResponse]],
    encode: Callable[[InferResponse], T],
) -> T:
    """decode → infer → encode, each step a span of `trace`, which ends with the request."""
    try:
        started = time.perf_counter_ns()
        request = decode()
        decoded = time.perf_counter_ns()
        trace.child("decode", started, decoded)
        request.trace = trace
        trace.decoded(request)
        response = await infer(request)
        answered = time.perf_counter_ns()
        trace.answered(response)
        encoded = encode(response)
        trace.child("encode", answered, time.perf_counter_ns())
    except BaseException as exc:
        trace.end(exc)
        raise
    trace.end()
    return encoded


async def traced_step(
    request: InferRequest, infer: Callable[[InferRequest], Awaitable[InferResponse]]
) -> InferResponse:
    """A request one model makes to another (an ensemble's step, a BLS call), whose
    `trace` is a step of the caller's: infer under it, which ends with the request."""
    trace = request.trace
    trace.decoded(request)
    try:
        response = await infer(request)
    except BaseException as exc:
        trace.end(exc)
        raise
    trace.answered(response)
    trace.end()
    return response


async def traced_stream(
    request: InferRequest,
    stream: Callable[[InferRequest], AsyncGenerator[InferResponse, None]],
) -> AsyncGenerator[InferResponse, None]:
    """A stream of responses one model asks of another (a decoupled ensemble step, a
    decoupled BLS call), whose `trace` is a step of the caller's: each response is
    recorded under it, and it ends with the stream (or when its reader stops)."""
    trace = request.trace
    trace.decoded(request)
    try:
        async with aclosing(stream(request)) as responses:
            async for response in responses:
                trace.answered(response)
                yield response
    except GeneratorExit:  # the reader has what it wanted
        trace.end()
        raise
    except BaseException as exc:
        trace.end(exc)
        raise
    trace.end()


def _emit_batch(timing: BatchTiming) -> None:
    from opentelemetry import trace

    first = timing.traces[0]
    tracing = first.tracing
    offset = tracing.offset_ns
    span = tracing.tracer.start_span(
        "execute",
        context=trace.set_span_in_context(first.span),
        start_time=timing.dispatched_ns + offset,
        links=[tracing._Link(t.span.get_span_context()) for t in timing.traces],
        attributes={
            "tensorgate.batch.rows": timing.rows,
            "tensorgate.batch.requests": timing.requests,
            "tensorgate.batch.traced_requests": len(timing.traces),
            "tensorgate.compute_input_ms": (timing.merged_ns - timing.dispatched_ns) / 1e6,
            "tensorgate.compute_infer_ms": (timing.inferred_ns - timing.merged_ns) / 1e6,
            "tensorgate.compute_output_ms": (timing.finished_ns - timing.inferred_ns) / 1e6,
        },
    )
    span.end(end_time=timing.finished_ns + offset)
