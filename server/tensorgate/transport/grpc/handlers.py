"""Method handlers built from the service descriptor, with parsing and errors in one place.

Requests are registered without a deserializer so that a malformed message becomes
INVALID_ARGUMENT naming the message type, instead of grpcio's generic INTERNAL. Every
expected failure maps through the one error table; anything else is a bug, logged with its
traceback and answered with a fixed INTERNAL message.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message as pb_message
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from tensorgate_protos import grpc_service_pb2 as pb
from tensorgate_protos import server_status_pb2 as status_pb

from tensorgate.errors import INTERNAL_MESSAGE, InvalidArgument, TensorgateError
from tensorgate.observability.context import begin_call
from tensorgate.observability.logs import REQUEST_ID_HEADER
from tensorgate.protocol.grpc_wire import parse_infer_request
from tensorgate.transport.grpc.servicer import status_code

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
STATUS_SERVICE = status_pb.DESCRIPTOR.services_by_name["ServerStatus"]


def _begin(context: Any) -> None:
    """Take the call's x-request-id and trace headers from its metadata; echo the id back.

    The id goes back in trailing metadata: grpc.aio sends it with the status in the same
    batch, where initial metadata would cost a separate send before the response.
    """
    request_id = traceparent = tracestate = ""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER:
            request_id = value
        elif key == "traceparent":
            traceparent = value
        elif key == "tracestate":
            tracestate = value
    call = begin_call(request_id, traceparent, tracestate)
    context.set_trailing_metadata(((REQUEST_ID_HEADER, call.request_id),))


def _parser(message_type: Any) -> Callable[[bytes], Any]:
    cls = message_factory.GetMessageClass(message_type)

    def parse(raw: bytes) -> Any:
        try:
            return cls.FromString(raw)
        except pb_message.DecodeError as exc:
            raise InvalidArgument(f"malformed {cls.__name__} message: {exc}") from None

    return parse


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: Exception, rpc: str) -> None:
    if isinstance(exc, TensorgateError):
        await context.abort(status_code(exc), exc.message)
    log.exception("unexpected error in %s", rpc, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def _unary(
    name: str, parse: Callable[[bytes], Any], impl: Callable[[Any, Any], Awaitable[Any]]
) -> Callable[[bytes, Any], Awaitable[Any]]:
    async def handle(raw: bytes, context: Any) -> Any:
        try:
            _begin(context)
            return await impl(parse(raw), context)
        except Exception as exc:
            await _abort(context, exc, name)

    return handle


def _bidi(
    name: str, parse: Callable[[bytes], Any], impl: Callable[..., AsyncIterator[Any]]
) -> Callable[[AsyncIterator[bytes], Any], AsyncIterator[Any]]:
    async def handle(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[Any]:
        try:
            _begin(context)
            async for response in impl(requests, context, parse):
                yield response
        except Exception as exc:
            await _abort(context, exc, name)

    return handle


def build_handler(servicer: object, service: ServiceDescriptor = SERVICE) -> grpc.GenericRpcHandler:
    """A generic handler serving every method of `service` (GRPCInferenceService by default)."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        # A large ModelInferRequest's raw inputs are read as views (protocol/grpc_wire.py).
        large = method.input_type.full_name == pb.ModelInferRequest.DESCRIPTOR.full_name
        parse = parse_infer_request if large else _parser(method.input_type)
        # Called on the response, not the class's method given it: ModelInfer may answer
        # with a response serialized by hand (protocol/grpc_wire.py).
        serialize = operator.methodcaller("SerializeToString")
        impl = getattr(servicer, method.name)
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _bidi(method.name, parse, impl), response_serializer=serialize
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(method.name, parse, impl), response_serializer=serialize
            )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
