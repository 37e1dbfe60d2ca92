"""The OpenAI-compatible API's request and response shapes over generation models.

`/v1/completions` and `/v1/chat/completions` requests become ordinary streamed inference
requests of a generation model (`text_input`, or the messages for its chat template, and the
sampling parameters), and the model's responses become OpenAI's objects and chunks. Fields
the server does not implement are refused by name, never ignored.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tensorgate.dataplane.types import InferRequest, InferResponse
from tensorgate.errors import InvalidArgument

MAX_N = 16  # choices per request
# Request fields understood, and what each becomes among the sampling parameters.
_SAMPLING = {
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repetition_penalty",
    "ignore_eos": "ignore_eos",
    "guided_json": "guided_json",
    "guided_regex": "guided_regex",
    "guided_grammar": "guided_grammar",
}
_ACCEPTED = {
    *("model", "stream", "stream_options", "n", "user", "response_format"),
    *("logprobs", "top_logprobs", "timeout"),
}
_NOT_YET = {
    "tools": "tool calls are not implemented",
    "tool_choice": "tool calls are not implemented",
    "functions": "function calls are not implemented",
    "logit_bias": "logit_bias is not implemented",
    "suffix": "suffix is not implemented",
    "echo": "echo is not implemented",
    "best_of": "best_of is not implemented",
}


@dataclass(frozen=True, slots=True)
class OpenAIRequest:
    """A decoded OpenAI request: the inference request, and how to answer it."""

    request: InferRequest
    stream: bool
    include_usage: bool
    chat: bool
    id: str
    created: int
    n: int = 1  # choices: one sequence each

    def choice_requests(self) -> list[InferRequest]:
        """One inference request per choice; with a seed, choice i samples with seed + i so
        the choices differ yet are reproducible."""
        seed = self.request.parameters.get("seed")
        requests = [self.request]
        for index in range(1, self.n):
            parameters = dict(self.request.parameters)
            if isinstance(seed, int) and not isinstance(seed, bool):
                parameters["seed"] = seed + index
            requests.append(replace(self.request, parameters=parameters))
        return requests


def decode(body: bytes, chat: bool) -> OpenAIRequest:
    """An OpenAI completions or chat request as a generation model's inference request."""
    try:
        document = json.loads(body or b"{}")
    except ValueError as exc:
        raise InvalidArgument(f"malformed JSON body: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidArgument("the request body must be a JSON object")
    model = document.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidArgument("'model' is required: the name of a generation model")
    _check_fields(document, "messages" if chat else "prompt")
    parameters: dict[str, Any] = {"stream": True, "exclude_input_in_output": True}
    sampling = {_SAMPLING[k]: v for k, v in document.items() if k in _SAMPLING and v is not None}
    stops = sampling.pop("stop", None)
    if isinstance(sampling.get("guided_json"), dict):
        sampling["guided_json"] = json.dumps(sampling["guided_json"])
    schema = _response_format(document.get("response_format"))
    if schema is not None:
        sampling["guided_json"] = schema
    parameters.update(sampling)
    timeout = document.get("timeout")
    if timeout is not None:  # seconds: ends generation early with finish_reason "deadline"
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise InvalidArgument("'timeout' must be a positive number of seconds")
        parameters["timeout"] = max(1, int(timeout * 1e6))
    top = _logprobs(document, chat)
    if top is not None:
        parameters["logprobs"] = top
        parameters["return_logprobs"] = True
    inputs = {"text_input": np.array([_prompt(document, chat, parameters)], dtype=np.object_)}
    if stops is not None:  # a list cannot be a request parameter: it travels as JSON
        stops = [stops] if isinstance(stops, str) else stops
        encoded = json.dumps({"stop": stops}).encode()
        inputs["sampling_parameters"] = np.array([encoded], dtype=np.object_)
    request = InferRequest(
        model,
        inputs=inputs,
        datatypes={name: "BYTES" for name in inputs},
        parameters=parameters,
        protocol="http",
    )
    options = document.get("stream_options") or {}
    prefix = "chatcmpl" if chat else "cmpl"
    return OpenAIRequest(
        request,
        bool(document.get("stream", False)),
        bool(options.get("include_usage", False)) if isinstance(options, dict) else False,
        chat,
        f"{prefix}-{uuid.uuid4().hex}",
        int(time.time()),
        document.get("n") or 1,
    )


def _logprobs(document: dict[str, Any], chat: bool) -> int | None:
    """How many alternatives to report with each token; None: no log-probabilities."""
    if chat:
        if not document.get("logprobs"):
            if document.get("top_logprobs"):
                raise InvalidArgument("top_logprobs needs logprobs: true")
            return None
        top = document.get("top_logprobs") or 0
    else:
        top = document.get("logprobs")
        if top is None:
            return None
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20:
        raise InvalidArgument("the number of top log-probabilities must be 0 to 20")
    return top


def _response_format(value: Any) -> str | None:
    """The JSON schema (as text) that `response_format` asks the output to follow."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return json.dumps({"type": "object"})
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidArgument("response_format.json_schema.schema must be a JSON schema")
        return json.dumps(schema)
    raise InvalidArgument(
        f"response_format.type {kind!r} is not supported: use text, json_object or json_schema"
    )


def _check_fields(document: dict[str, Any], prompt_key: str) -> None:
    for name, reason in _NOT_YET.items():
        if document.get(name) not in (None, False, 0):
            raise InvalidArgument(f"'{name}': {reason}")
    unknown = sorted(set(document) - set(_SAMPLING) - _ACCEPTED - set(_NOT_YET) - {prompt_key})
    if unknown:
        raise InvalidArgument(f"unknown fields {unknown}")
    n = document.get("n", 1)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N):
        raise InvalidArgument(f"'n' must be an integer from 1 to {MAX_N}")


def _prompt(document: dict[str, Any], chat: bool, parameters: dict[str, Any]) -> bytes:
    """The text_input (a chat's messages go to the chat template as a parameter)."""
    if chat:
        messages = document.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidArgument("'messages' must be a non-empty list")
        parameters["chat_messages"] = json.dumps(messages)
        return b""
    prompt = document.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidArgument("'prompt' must be a string (one prompt per request)")
    return prompt.encode("utf-8")


def _text(response: InferResponse) -> str:
    return bytes(response.outputs["text_output"].reshape(-1)[0]).decode("utf-8", "replace")


def _finish(response: InferResponse) -> str | None:
    if not response.final:
        return None
    reason = bytes(response.outputs["finish_reason"].reshape(-1)[0]).decode()
    return {"abort": "stop"}.get(reason, reason) or "stop"


def _entries(response: InferResponse) -> list[dict[str, Any]]:
    array = response.outputs.get("logprobs")
    if array is None:
        return []
    entries: list[dict[str, Any]] = json.loads(bytes(array.reshape(-1)[0]))
    return entries


def usage(response: InferResponse) -> dict[str, int]:
    """Token counts of a final response."""
    prompt = int(response.outputs["num_input_tokens"].reshape(-1)[0])
    completion = int(response.outputs["num_output_tokens"].reshape(-1)[0])
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


@dataclass(slots=True)
class _Choice:
    """What one choice has answered so far."""

    text: list[str] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    offset: int = 0  # characters of text before the next token (completions' offsets)
    first: bool = True
    final: InferResponse | None = None


class Answer:
    """Turns the responses of a request's choices into OpenAI chunks, or one final object."""

    def __init__(self, decoded: OpenAIRequest, model: str) -> None:
        self.decoded = decoded
        self.model = model
        self.choices = [_Choice() for _ in range(decoded.n)]
        self.wants_logprobs = bool(decoded.request.parameters.get("return_logprobs"))

    def _logprobs(self, choice: _Choice, entries: list[dict[str, Any]]) -> Any:
        """These tokens' log-probabilities in OpenAI's shape, or None when not asked for."""
        if not self.wants_logprobs:
            return None
        if self.decoded.chat:
            return {
                "content": [
                    {
                        "token": e["token"],
                        "logprob": e["logprob"],
                        "bytes": list(e["token"].encode()),
                        "top_logprobs": [
                            {"token": t, "logprob": lp, "bytes": list(t.encode())}
                            for t, lp in e["top"]
                        ],
                    }
                    for e in entries
                ]
            }
        offsets = []
        for entry in entries:
            offsets.append(choice.offset)
            choice.offset += len(entry["token"])
        return {
            "tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [dict(e["top"]) for e in entries],
            "text_offset": offsets,
        }

    def _envelope(self, chunk: bool) -> dict[str, Any]:
        kind = "chat.completion" if self.decoded.chat else "text_completion"
        return {
            "id": self.decoded.id,
            "object": f"{kind}.chunk" if chunk and self.decoded.chat else kind,
            "created": self.decoded.created,
            "model": self.model,
        }

    def _usage(self) -> dict[str, int]:
        """Token counts once every choice is final: the prompt once, all completions."""
        finals = [c.final for c in self.choices if c.final is not None]
        counts = [usage(f) for f in finals]
        prompt = counts[0]["prompt_tokens"]
        completion = sum(c["completion_tokens"] for c in counts)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def chunks(self, index: int, response: InferResponse) -> list[dict[str, Any]]:
        """The stream chunks one model response of choice `index` makes."""
        choice = self.choices[index]
        text, finish = _text(response), _finish(response)
        out = []
        if self.decoded.chat and choice.first:
            first = self._envelope(True)
            first["choices"] = [
                {
                    "index": index,
                    "delta": {"role": "assistant", "content": ""},
                    "finish_reason": None,
                }
            ]
            out.append(first)
        choice.first = False
        if text or finish:
            chunk = self._envelope(True)
            logprobs = self._logprobs(choice, _entries(response))
            if self.decoded.chat:
                delta = {"content": text} if text else {}
                chunk["choices"] = [
                    {"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
                ]
            else:
                chunk["choices"] = [
                    {"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs}
                ]
            out.append(chunk)
        if response.final:
            choice.final = response
            if self.decoded.include_usage and all(c.final for c in self.choices):
                last = self._envelope(True)
                last["choices"] = []
                last["usage"] = self._usage()
                out.append(last)
        return out

    def add(self, index: int, response: InferResponse) -> None:
        choice = self.choices[index]
        choice.text.append(_text(response))
        choice.entries += _entries(response)
        if response.final:
            choice.final = response

    def whole(self) -> dict[str, Any]:
        """The non-streamed answer, after every choice's final response."""
        document = self._envelope(False)
        choices: list[dict[str, Any]] = []
        for index, choice in enumerate(self.choices):
            assert choice.final is not None
            text = "".join(choice.text)
            finish = _finish(choice.final)
            answer: dict[str, Any] = {"index": index}
            if self.decoded.chat:
                answer["message"] = {"role": "assistant", "content": text}
            else:
                answer["text"] = text
            answer["finish_reason"] = finish
            answer["logprobs"] = self._logprobs(choice, choice.entries)
            choices.append(answer)
        document["choices"] = choices
        document["usage"] = self._usage()
        return document


def error_body(message: str, status: int) -> bytes:
    """OpenAI's error object."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 404:
        kind = "not_found_error"
    return json.dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": None}}
    ).encode()
