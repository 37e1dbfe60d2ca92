"""The generate extension's routes: `/generate` answers with one JSON object, and
`/generate_stream` with Server-Sent Events, one `data:` event per response.

Both take the flat JSON document of protocol/generate_codec.py. `/generate` on a decoupled
model collects its stream and answers when the model sent exactly one response, as Triton
does; a model that streams is read with `/generate_stream`. Errors before the first
response are ordinary JSON errors with their HTTP status; an error after the stream has
begun is its last event, `data: {"error": "..."}`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from contextlib import aclosing

import orjson

from tensorgate.dataplane.dataplane import DataPlane
from tensorgate.dataplane.types import InferRequest, InferResponse
from tensorgate.errors import INTERNAL_MESSAGE, InvalidArgument, TensorgateError
from tensorgate.observability.tracing import traced_step, traced_stream
from tensorgate.protocol.generate_codec import decode_generate_request, encode_generate_response
from tensorgate.transport.rest.sse import Send, send_events

_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/(generate|generate_stream)")
_SUFFIXES = ("/generate", "/generate_stream")


def match_generate(path: str) -> tuple[str, str, bool] | None:
    """(model, version, streaming) when `path` is a generate route."""
    if not path.endswith(_SUFFIXES):  # every infer request asks: keep the answer cheap
        return None
    found = _PATH.fullmatch(path)
    if found is None:
        return None
    model, version, route = found.groups()
    return model, version or "", route == "generate_stream"


class Generate:
    """Both generate routes over the data plane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def decode(self, body: bytes, model: str, version: str) -> InferRequest:
        spec = self.dataplane.model(model, version).spec
        types = {name: tensor.datatype for name, tensor in spec.inputs.items()}
        return decode_generate_request(body, model, version, types, spec.max_batch_size > 0)

    def _stream(self, request: InferRequest) -> AsyncGenerator[InferResponse, None]:
        """The request's responses, recorded under its trace when it is traced."""
        if request.trace is None:
            return self.dataplane.stream(request)
        return traced_stream(request, self.dataplane.stream)

    async def one(self, request: InferRequest) -> bytes:
        """`/generate`: the model's one response as a JSON object."""
        if not self.dataplane.is_decoupled(request.model_name, request.model_version):
            if request.trace is None:
                response = await self.dataplane.infer(request)
            else:
                response = await traced_step(request, self.dataplane.infer)
            return orjson.dumps(encode_generate_response(response))
        answers: list[InferResponse] = []
        async with aclosing(self._stream(request)) as responses:
            async for response in responses:
                if response.outputs:
                    answers.append(response)
                if len(answers) > 1:
                    raise InvalidArgument(
                        f"model '{request.model_name}' sent more than one response: read it "
                        "with /generate_stream"
                    )
        if not answers:
            raise InvalidArgument(f"model '{request.model_name}' sent no response")
        return orjson.dumps(encode_generate_response(answers[0]))

    async def events(
        self, request: InferRequest, send: Send, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """`/generate_stream`: each response as an event (transport/rest/sse.py)."""

        def events(response: InferResponse) -> list[bytes]:
            if not response.outputs and response.final:
                return []  # the bare final flag of a decoupled model: the stream just ends
            return [orjson.dumps(encode_generate_response(response))]

        def error_event(exc: TensorgateError | None) -> bytes:
            return orjson.dumps({"error": exc.message if exc is not None else INTERNAL_MESSAGE})

        await send_events(self._stream(request), send, headers, events, error_event)
