"""OpenTelemetry traces, an optional extra (`pip install tensorgate[otel]`).

A traced inference is a server span with children for decode, queue and encode; the batch it
rode in is one `execute` span per batch, a child of the first traced request in the batch and
linked to every traced request in it, so a trace of any request leads to the batch and the
batch to all its requests. Timings are measured on the request path with perf_counter_ns
(cheap, monotonic) and turned into wall-clock span times only for requests being traced.

With tracing off (the default) nothing here is imported beyond this module and the request
path pays one `is None` check.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from tensorgate.dataplane.types import InferRequest, InferResponse
from tensorgate.errors import TensorgateError
from tensorgate.observability.context import current_call
from tensorgate.runners.base import BatchTiming


class Tracing:
    """The tracer and propagator, built once from the settings."""

    def __init__(self, exporter_name: str, rate: float, exporter: Any = None) -> None:
        try:
            from opentelemetry.propagators.textmap import DefaultGetter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import (
                BatchSpanProcessor,
                ConsoleSpanExporter,
                SimpleSpanProcessor,
            )
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
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

        provider = TracerProvider(
            resource=Resource.create(
                {"service.name": "tensorgate", "service.version": __version__}
            ),
            sampler=ParentBased(TraceIdRatioBased(rate)),
        )
        if exporter is not None:  # tests hand in an in-memory exporter
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        elif exporter_name == "console":
            # One JSON object per line on stdout, written by the batch processor's thread.
            console = ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
            provider.add_span_processor(BatchSpanProcessor(console))
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
        self, name: str, traceparent: str, tracestate: str, attributes: Mapping[str, Any]
    ) -> RequestTrace | None:
        """A server span for one request, under the client's trace if it sent one; None when
        the sampler drops it."""
        carrier = {"traceparent": traceparent, "tracestate": tracestate} if traceparent else {}
        parent = self.propagator.extract(carrier, getter=self._getter)
        span = self.tracer.start_span(
            name, context=parent, kind=self._SpanKind.SERVER, attributes=dict(attributes)
        )
        if not span.is_recording():
            return None
        return RequestTrace(self, span)

    def start_call(self, name: str, attributes: dict[str, Any]) -> RequestTrace | None:
        """`start` for the current call: its traceparent, and its request id as an attribute."""
        call = current_call()
        if call is None:
            return self.start(name, "", "", attributes)
        attributes = {**attributes, "tensorgate.request_id": call.request_id}
        return self.start(name, call.traceparent, call.tracestate, attributes)

    def shutdown(self) -> None:
        self.provider.shutdown()


class RequestTrace:
    """The spans of one request being traced."""

    __slots__ = ("span", "tracing")

    def __init__(self, tracing: Tracing, span: Any) -> None:
        self.tracing = tracing
        self.span = span

    def child(self, name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
        """A finished child span from perf_counter_ns times."""
        from opentelemetry import trace

        offset = self.tracing.offset_ns
        span = self.tracing.tracer.start_span(
            name,
            context=trace.set_span_in_context(self.span),
            start_time=start_ns + offset,
            attributes=attributes,
        )
        span.end(end_time=end_ns + offset)

    def set(self, key: str, value: Any) -> None:
        self.span.set_attribute(key, value)

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
        trace.set("tensorgate.model", request.model_name)
        response = await infer(request)
        answered = time.perf_counter_ns()
        trace.set("tensorgate.model_version", response.model_version)
        encoded = encode(response)
        trace.child("encode", answered, time.perf_counter_ns())
    except BaseException as exc:
        trace.end(exc)
        raise
    trace.end()
    return encoded


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
