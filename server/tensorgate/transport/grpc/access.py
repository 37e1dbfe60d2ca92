"""Access control for every gRPC service (inference, status, health, reflection): an
interceptor that asks the policy before the method runs, installed only when the policy
restricts anything, so an open server pays nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from tensorgate.errors import TensorgateError
from tensorgate.transport.access import RPC_GROUPS, AccessPolicy


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Refuses a call its metadata does not allow, with the status the policy gives."""

    def __init__(self, policy: AccessPolicy) -> None:
        self.policy = policy

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        method = details.method  # "/package.Service/Method"
        group = RPC_GROUPS.get(method.rsplit("/", 1)[-1])
        handler = await continuation(details)
        if handler is None or group is None:
            return handler  # unknown method: grpc answers UNIMPLEMENTED
        wanted = self.policy.headers
        headers = {  # binary metadata (keys ending -bin) is never a credential here
            k: v for k, v in details.invocation_metadata or () if k in wanted and isinstance(v, str)
        }
        try:
            self.policy.check(group, headers, "grpc", method)
        except TensorgateError as exc:
            return _refusing(handler, exc)
        return handler


def _refusing(handler: Any, exc: TensorgateError) -> Any:
    """A handler of the same shape as `handler` that only aborts with `exc`'s status."""
    code = grpc.StatusCode[exc.kind.grpc_status_name]

    async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, exc.message)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[handler.request_streaming, handler.response_streaming]
    return make(
        abort,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
