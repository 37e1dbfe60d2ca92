"""A generation request as the data plane hands it over: inputs and parameters → prompt and
SamplingParams.

The inputs follow Triton's vLLM backend: `text_input`, and optionally `stream`,
`sampling_parameters` (a JSON object) and `exclude_input_in_output`. Sampling keys may also
come as request parameters (the generate extension puts every key that is not an input
there), and `chat_messages` (a JSON list of messages) asks for the chat template. A key that
is neither a sampling key nor one of Triton's request parameters is refused by name.

Triton's `timeout` parameter (microseconds) and the transport's deadline bound the
generation: it ends, with finish reason `deadline`, at the last step that completes before.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields
from typing import Any

from tensorgate.dataplane.types import Array, InferRequest
from tensorgate.errors import InvalidArgument
from tensorgate.generation.sampling_params import SamplingParams

SAMPLING_KEYS = frozenset(f.name for f in fields(SamplingParams))
# Request parameters that are not about sampling: Triton's, and this module's own.
OTHER_KEYS = frozenset(
    {
        "triton_enable_empty_final_response",
        "priority",
        "timeout",
        "binary_data_output",
        "stream",
        "exclude_input_in_output",
        "chat_messages",
        "return_logprobs",
    }
)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What to generate from, how, and how to answer."""

    prompt: str | None  # None: render `messages` with the chat template
    messages: list[dict[str, Any]] | None
    params: SamplingParams
    stream: bool
    exclude_input: bool
    logprobs: bool = False  # answer each token's log-probability (`return_logprobs`)
    deadline_ns: int = 0  # time.monotonic_ns() by which to answer; 0: none


def _scalar(inputs: dict[str, Array], name: str) -> Any:
    array = inputs.get(name)
    if array is None:
        return None
    flat = array.reshape(-1)
    if flat.size != 1:
        raise InvalidArgument(f"input '{name}' must hold one element, it holds {flat.size}")
    value = flat[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value.item()


def _sampling(raw: dict[str, Any]) -> SamplingParams:
    unknown = sorted(set(raw) - SAMPLING_KEYS)
    if unknown:
        raise InvalidArgument(
            f"unknown sampling parameters {unknown}; known: {', '.join(sorted(SAMPLING_KEYS))}"
        )
    values = dict(raw)
    for key in ("stop", "stop_token_ids"):
        if isinstance(values.get(key), str | int):
            values[key] = [values[key]]
        if key in values:
            values[key] = tuple(values[key])
    try:
        return SamplingParams(**values)
    except TypeError as exc:
        raise InvalidArgument(f"bad sampling parameters: {exc}") from None


def parse_request(request: InferRequest) -> GenerationRequest:
    """Read a generation request; every mistake is INVALID_ARGUMENT naming it."""
    inputs = request.inputs
    raw: dict[str, Any] = {}
    encoded = _scalar(inputs, "sampling_parameters")
    if encoded:
        try:
            raw = json.loads(encoded)
        except ValueError as exc:
            raise InvalidArgument(f"sampling_parameters is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise InvalidArgument("sampling_parameters must be a JSON object")
    params = request.parameters
    raw.update({k: v for k, v in params.items() if k not in OTHER_KEYS})
    messages = None
    if "chat_messages" in params:
        try:
            messages = json.loads(str(params["chat_messages"]))
        except ValueError as exc:
            raise InvalidArgument(f"chat_messages is not JSON: {exc}") from None
        if not isinstance(messages, list):
            raise InvalidArgument("chat_messages must be a JSON list of messages")
    prompt = _scalar(inputs, "text_input")
    if prompt is None and messages is None:
        raise InvalidArgument("a generation request needs text_input")
    stream = _scalar(inputs, "stream")
    if stream is None:
        stream = params.get("stream", False)
    exclude = _scalar(inputs, "exclude_input_in_output")
    if exclude is None:
        exclude = params.get("exclude_input_in_output", False)
    wants_logprobs = bool(params.get("return_logprobs", False))
    return GenerationRequest(
        prompt,
        messages,
        _sampling(raw),
        bool(stream),
        bool(exclude),
        wants_logprobs,
        _deadline(request),
    )


def _deadline(request: InferRequest) -> int:
    """The earlier of the transport's deadline and the `timeout` parameter, if any."""
    timeout_us = request.parameters.get("timeout", 0)
    if isinstance(timeout_us, bool) or not isinstance(timeout_us, int) or timeout_us < 0:
        raise InvalidArgument(f"timeout must be a number of microseconds, got {timeout_us!r}")
    deadlines = [request.deadline_ns] if request.deadline_ns else []
    if timeout_us:
        deadlines.append(time.monotonic_ns() + timeout_us * 1000)
    return min(deadlines, default=0)
