"""Triton Python-backend models served unchanged: `class TritonPythonModel` in model.py.

The model's `initialize(args)`, `execute(requests)` and `finalize()` are called as Triton
calls them, in process, on tensorgate's instance threads: `execute` gets the batch's
requests one by one (each with its own batch dimension), not merged, and returns one
response per request; a response with an error fails only its request. A decoupled model
answers through each request's response sender. `async def execute` runs on the
instance's own event loop. BLS calls go through the data plane (dataplane/calls.py).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from google.protobuf import json_format
from tensorgate_protos import model_config_pb2 as mc

from tensorgate.backends import triton_utils as pb
from tensorgate.backends.base import (
    MODEL_DEVICE,
    InstanceContext,
    ModelSignature,
    ResponseSender,
    SequenceStep,
    StepOutcome,
)
from tensorgate.dataplane.types import Array, InferRequest
from tensorgate.errors import ErrorKind, ModelExecutionError, ModelLoadError
from tensorgate.executors.instance_threads import thread_event_loop

# Config fields Triton writes as JSON numbers that protobuf's JSON form writes as strings.
_INT64_FIELDS = frozenset(
    {
        "dims",
        "shape",
        "versions",
        "model_version",
        "max_queue_delay_microseconds",
        "max_sequence_idle_microseconds",
        "default_timeout_microseconds",
        "priority_levels",
        "default_priority_level",
    }
)


def config_dict(config: mc.ModelConfig) -> dict[str, Any]:
    """The model config as the dict Triton hands Python models (JSON of the proto)."""
    document = json_format.MessageToDict(config, preserving_proto_field_name=True)
    return _numbers(document)  # type: ignore[no-any-return]


def _numbers(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _numbers(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v, key) for v in value]
    if key in _INT64_FIELDS and isinstance(value, str):
        return int(value)
    return value


class TritonPythonInstance:
    """One instance of a Triton `TritonPythonModel`."""

    def __init__(self, module: ModuleType, context: InstanceContext) -> None:
        if context.calls is not None:
            pb.InferenceRequest._calls = context.calls
        config = context.config
        self._name = context.model_name
        self._outputs = [o.name for o in config.output]
        self._model: Any = module.TritonPythonModel()
        gpu = context.device.startswith("cuda")
        kind = "GPU" if gpu else "MODEL" if context.device == MODEL_DEVICE else "CPU"
        args = {
            "model_config": json.dumps(config_dict(config)),
            "model_instance_kind": kind,
            "model_instance_name": f"{context.model_name}_{context.index}",
            "model_instance_device_id": context.device.split(":")[1] if gpu else "0",
            "model_repository": str(context.model_dir),
            "model_version": str(context.version),
            "model_name": context.model_name,
        }
        initialize = getattr(self._model, "initialize", None)
        if initialize is not None:
            try:
                with pb.running(self._name):
                    _run(initialize(args))
            except Exception as exc:  # user code may raise anything while loading
                raise ModelLoadError(
                    f"TritonPythonModel.initialize failed: {type(exc).__name__}: {exc}"
                ) from None

    def signature(self) -> ModelSignature | None:
        return None

    def execute_requests(
        self, batch: list[dict[str, Array]], sent: Sequence[InferRequest | None] = ()
    ) -> list[dict[str, Array] | Exception]:
        """The batch's requests as Triton passes them, each with its id, parameters and
        requested outputs when `sent` has them; one outputs dict (or error) each."""
        requests = [
            self._received(inputs, request)
            for inputs, request in zip(batch, sent or [None] * len(batch), strict=True)
        ]
        with pb.running(self._name):
            responses = _run(self._model.execute(requests))
        if not isinstance(responses, list | tuple) or len(responses) != len(requests):
            count = (
                len(responses) if isinstance(responses, list | tuple) else type(responses).__name__
            )
            raise ModelExecutionError(
                f"TritonPythonModel.execute returned {count} responses for {len(requests)} requests"
            )
        return [_outputs_or_error(response) for response in responses]

    def execute(self, inputs: dict[str, Array]) -> dict[str, Array]:
        (outputs,) = self.execute_requests([inputs])
        if isinstance(outputs, Exception):
            raise outputs
        return outputs

    def execute_steps(self, steps: list[SequenceStep], iterative: bool) -> list[StepOutcome]:
        """A sequence batch, one request per step with its correlation id and flags, as
        Triton's sequence batcher hands them; a decoupled model answers through each step's
        sender. With `iterative`, a request the model releases with RELEASE_RESCHEDULE comes
        back in a later batch (its response is None, or nothing sent)."""
        requests = []
        for step in steps:
            received = self._received(step.inputs, step.request, (step.correlation_id, step.flags))
            received._sender = step.sender
            received._reschedulable = iterative
            requests.append(received)
        with pb.running(self._name):
            responses = _run(self._model.execute(requests))
        decoupled = steps[0].sender is not None
        if decoupled:
            if responses:  # answered like an ordinary model: pass those on, then end
                for response, step in zip(responses, steps, strict=False):
                    assert step.sender is not None
                    step.sender.send(_outputs_for(response), False)
                    step.sender.send(None, True)
            return [StepOutcome(None, rescheduled=r._rescheduled()) for r in requests]
        if not isinstance(responses, list | tuple) or len(responses) != len(requests):
            count = (
                len(responses) if isinstance(responses, list | tuple) else type(responses).__name__
            )
            raise ModelExecutionError(
                f"TritonPythonModel.execute returned {count} responses for {len(requests)} requests"
            )
        return [_step_outcome(r, response) for r, response in zip(requests, responses, strict=True)]

    def execute_decoupled(self, request: InferRequest, sender: ResponseSender) -> None:
        """A decoupled model: `execute` answers through the request's response sender."""
        received = self._received(request.inputs, request)
        received._sender = sender
        with pb.running(self._name):
            responses = _run(self._model.execute([received]))
        if responses:  # answered like an ordinary model: pass those on, then end
            for response in responses:
                sender.send(_outputs_for(response), False)
            sender.send(None, True)

    def _received(
        self,
        inputs: dict[str, Array],
        request: InferRequest | None = None,
        sequence: tuple[int | str, int] | None = None,
    ) -> pb.InferenceRequest:
        """The request as model code sees it; `sequence`: its correlation id and flags as
        the sequence batcher sets them, else read from the client's parameters."""
        sent = request.parameters if request is not None else {}
        params = {k: v for k, v in sent.items() if not _served(k)}
        if sequence is not None:
            corrid, flags = sequence
        else:
            sequence_id = sent.get("sequence_id", 0)
            corrid = sequence_id if isinstance(sequence_id, int | str) else 0
            flags = 0
            if sent.get("sequence_start", False):
                flags |= pb.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START
            if sent.get("sequence_end", False):
                flags |= pb.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END
        wanted = request.requested_outputs if request is not None else None
        received = pb.InferenceRequest(
            self._name,
            [pb.Tensor(name, array) for name, array in inputs.items()],
            wanted or self._outputs,
            correlation_id=corrid,
            request_id=request.id if request is not None else "",
            flags=flags,
            parameters=params,
        )
        received._cancelled = request.cancelled if request is not None else None
        received._trace = request.trace if request is not None else None
        return received

    def close(self) -> None:
        finalize = getattr(self._model, "finalize", None)
        if finalize is not None:
            _run(finalize())


# Request parameters the server acts on itself; Triton hands a model only the others.
_SERVED = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "binary_data_output"}
)


def _served(key: str) -> bool:
    return key in _SERVED or key.startswith("triton_")


def _run(result: Any) -> Any:
    """A model method's result, awaited on the instance's own loop when it is a coroutine."""
    if inspect.isawaitable(result):
        return thread_event_loop().run_until_complete(result)
    return result


def _step_outcome(request: pb.InferenceRequest, response: Any) -> StepOutcome:
    if request._rescheduled():
        if response is None:
            return StepOutcome(None, rescheduled=True)
        return StepOutcome(
            None,
            ModelExecutionError(
                "TritonPythonModel.execute returned a response for a request it rescheduled; "
                "a rescheduled request's place in the list holds None"
            ),
        )
    outputs = _outputs_or_error(response)
    if isinstance(outputs, Exception):
        return StepOutcome(None, outputs)
    return StepOutcome(outputs)


def _outputs_for(response: Any) -> dict[str, Array]:
    outputs = _outputs_or_error(response)
    if isinstance(outputs, Exception):
        raise outputs
    return outputs


# TritonError's codes as the status the client gets, as Triton maps them.
_ERROR_KINDS = {
    pb.TritonError.UNKNOWN: ErrorKind.UNKNOWN,
    pb.TritonError.INTERNAL: ErrorKind.INTERNAL,
    pb.TritonError.NOT_FOUND: ErrorKind.NOT_FOUND,
    pb.TritonError.INVALID_ARG: ErrorKind.INVALID_ARGUMENT,
    pb.TritonError.UNAVAILABLE: ErrorKind.UNAVAILABLE,
    pb.TritonError.UNSUPPORTED: ErrorKind.UNIMPLEMENTED,
    pb.TritonError.ALREADY_EXISTS: ErrorKind.ALREADY_EXISTS,
    pb.TritonError.CANCELLED: ErrorKind.CANCELLED,
}


def _outputs_or_error(response: Any) -> dict[str, Array] | Exception:
    if not isinstance(response, pb.InferenceResponse):
        return ModelExecutionError(
            f"TritonPythonModel.execute returned a {type(response).__name__}, not an "
            "InferenceResponse"
        )
    error = response.error()
    if error is not None:
        kind = _ERROR_KINDS.get(error.code(), ErrorKind.INTERNAL)
        return ModelExecutionError(error.message(), kind)
    return pb.outputs_of(response)
