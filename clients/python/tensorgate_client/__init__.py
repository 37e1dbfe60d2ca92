"""numpy-first client for tensorgate (and any KServe v2 / Triton server).

    from tensorgate_client import InferenceClient
    with InferenceClient("localhost:8001") as client:
        outputs = client.infer("add_sub", {"INPUT0": a, "INPUT1": b})

InferenceClient (gRPC, sync), AsyncInferenceClient (grpc.aio) and HttpInferenceClient (REST,
binary tensors) share one API. The generated stubs (the tensorgate-protos package, shared with
the server) define the protobuf package `inference`, as tritonclient's do: the two cannot
share one process.
"""

from tensorgate_client.aio_client import AsyncInferenceClient
from tensorgate_client.errors import InferenceServerError
from tensorgate_client.grpc_client import InferenceClient
from tensorgate_client.http_client import HttpInferenceClient
from tensorgate_client.messages import StreamResult
from tensorgate_client.options import NO_RETRY, RetryPolicy, TlsOptions

__all__ = [
    "NO_RETRY",
    "AsyncInferenceClient",
    "HttpInferenceClient",
    "InferenceClient",
    "InferenceServerError",
    "RetryPolicy",
    "StreamResult",
    "TlsOptions",
]
