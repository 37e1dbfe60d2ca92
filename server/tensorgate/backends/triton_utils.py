"""Triton's `triton_python_backend_utils` API over tensorgate's types.

A Triton Python-backend `model.py` imports this module under Triton's name (the Python
backend registers it in `sys.modules` before importing the file), so such files serve
unchanged. Covered: `Tensor`, `InferenceRequest` (as received, and built for BLS with
`exec` / `async_exec`, decoupled included), `InferenceResponse`, the response sender of
decoupled models, `TritonError` / `TritonModelException`, the config helpers, `ModelConfig`
(what `auto_complete_config` receives), `load_model` / `unload_model` / `is_model_ready`,
custom metrics (`MetricFamily`, `Metric`), `Logger` and the flag constants. Tensors live in
CPU memory as numpy arrays: `to_dlpack` / `from_dlpack` go through numpy's DLPack support, and
GPU tensors are not supported.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np

from tensorgate.backends.base import ResponseSender
from tensorgate.dataplane.calls import Caller
from tensorgate.dataplane.types import Array, InferRequest, InferResponse
from tensorgate.errors import TensorgateError
from tensorgate.protocol import datatypes
from tensorgate.protocol.tensors import serialize_bytes

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2
TRITONSERVER_MEMORY_CPU = 0
TRITONSERVER_MEMORY_CPU_PINNED = 1
TRITONSERVER_MEMORY_GPU = 2

_log = logging.getLogger("tensorgate.models")

# The model whose code this thread is running (set around initialize and execute).
_running = threading.local()


@contextlib.contextmanager
def running(model_name: str) -> Iterator[None]:
    """Mark this thread as running `model_name`'s code, so that it cannot load or unload
    itself: the batch asking would wait for its own end."""
    outer = getattr(_running, "model", None)
    _running.model = model_name
    try:
        yield
    finally:
        _running.model = outer


class ModelConfig:
    """The model config `TritonPythonModel.auto_complete_config` receives and returns: the
    model may set its max batch size, dynamic batching, inputs, outputs and decoupled
    policy where the config leaves them unset, and is refused where it contradicts it."""

    def __init__(self, model_config: dict[str, Any], model_name: str = "") -> None:
        self._config = model_config
        self._name = model_name or str(model_config.get("name", ""))
        # Triton's JSON always carries these, and models index them without checking.
        for key, empty in (("input", []), ("output", []), ("max_batch_size", 0)):
            model_config.setdefault(key, empty)

    def as_dict(self) -> dict[str, Any]:
        return self._config

    def set_max_batch_size(self, max_batch_size: int) -> None:
        given = int(self._config.get("max_batch_size", 0))
        if given and given != max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {given}, but in auto-complete-config "
                f"function for model '{self._name}' specified max_batch_size {max_batch_size}"
            )
        self._config["max_batch_size"] = int(max_batch_size)

    def set_dynamic_batching(self) -> None:
        for other in ("sequence_batching", "ensemble_scheduling"):
            if other in self._config:
                raise ValueError(
                    f"configuration specified scheduling_choice as '{other}', but "
                    f"auto-complete-config function for model '{self._name}' tries to set it "
                    "as 'dynamic_batching'"
                )
        self._config.setdefault("dynamic_batching", {})

    def add_input(self, input: dict[str, Any]) -> None:  # Triton's parameter name
        self._add("input", input, {"name", "data_type", "dims", "optional"})

    def add_output(self, output: dict[str, Any]) -> None:
        self._add("output", output, {"name", "data_type", "dims"})

    def set_model_transaction_policy(self, transaction_policy_dict: dict[str, Any]) -> None:
        unknown = set(transaction_policy_dict) - {"decoupled"}
        if unknown:
            raise ValueError(
                f"model transaction property in auto-complete-config function for model "
                f"'{self._name}' contains unknown properties {sorted(unknown)}"
            )
        decoupled = bool(transaction_policy_dict.get("decoupled", False))
        given = self._config.get("model_transaction_policy")
        if given is not None and bool(given.get("decoupled", False)) != decoupled:
            raise ValueError(
                "trying to change decoupled property in auto-complete-config for model "
                f"'{self._name}', which is already set to {given.get('decoupled', False)}"
            )
        self._config["model_transaction_policy"] = {"decoupled": decoupled}

    def _add(self, kind: str, tensor: dict[str, Any], allowed: set[str]) -> None:
        if not isinstance(tensor, dict):
            raise ValueError(f"model '{self._name}': an {kind} must be a dict")
        unknown = set(tensor) - allowed
        if unknown:
            raise ValueError(
                f"model '{self._name}': {kind} '{tensor.get('name')}' has properties "
                f"{sorted(unknown)}; allowed are {sorted(allowed)}"
            )
        missing = [key for key in ("name", "data_type", "dims") if key not in tensor]
        if missing:
            raise ValueError(
                f"model '{self._name}': {kind} '{tensor.get('name')}' is missing {missing}"
            )
        entry = dict(tensor, dims=[int(d) for d in tensor["dims"]])
        listed = self._config.setdefault(kind, [])
        for existing in listed:
            if existing.get("name") != entry["name"]:
                continue
            for key in ("data_type", "dims"):
                if key in existing and existing[key] != entry[key]:
                    raise ValueError(
                        f"model '{self._name}', tensor '{entry['name']}': the model expects "
                        f"{key} {entry[key]} but the model configuration specifies "
                        f"{existing[key]}"
                    )
            existing.update({k: v for k, v in entry.items() if k not in existing})
            return
        listed.append(entry)


class TritonError:
    """An error a model reports in a response (`InferenceResponse(error=...)`)."""

    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE = 0, 1, 2, 3, 4
    UNSUPPORTED, ALREADY_EXISTS, CANCELLED = 5, 6, 7

    def __init__(self, msg: str, code: int = INTERNAL) -> None:
        self._message = msg
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class TritonModelException(Exception):
    """Raised by the API on misuse, and by BLS calls whose response failed."""

    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class Tensor:
    """A named tensor: a numpy array in CPU memory."""

    def __init__(self, name: str, data: Any) -> None:
        self._name = name
        self._array = np.asarray(data)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> Array:
        return self._array

    def is_cpu(self) -> bool:
        return True

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def triton_dtype(self) -> int:
        """Triton's TRITONSERVER_DataType code (FP32: 11), which `triton_to_numpy_type` reads."""
        return _TYPE_CODES[self._datatype()]

    def _datatype(self) -> str:
        return datatypes.from_numpy(self._array.dtype).name

    def to_dlpack(self) -> Any:
        return self._array.__dlpack__()

    @classmethod
    def from_dlpack(cls, name: str, capsule: Any) -> Tensor:
        """From an object that offers `__dlpack__` (a torch CPU tensor, for one)."""
        return cls(name, np.from_dlpack(capsule))


class InferenceResponse:
    """Output tensors for one request, or an error."""

    def __init__(
        self,
        output_tensors: list[Tensor] | None = None,
        error: TritonError | None = None,
        parameters: dict[str, Any] | str | None = None,
    ) -> None:
        self._outputs = list(output_tensors or [])
        self._error = error
        self._parameters = (
            parameters if isinstance(parameters, str) else json.dumps(parameters or {})
        )

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return self._parameters


class InferenceResponseSender:
    """A decoupled model's way to answer a request any number of times."""

    def __init__(self, sender: ResponseSender) -> None:
        self._sender = sender

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        final = bool(flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        if response is not None and response.has_error():
            error = response.error()
            raise TritonModelException(
                f"a decoupled response carried an error: {error.message() if error else ''}"
            )
        outputs = outputs_of(response) if response is not None else None
        try:
            self._sender.send(outputs, final)
        except TensorgateError as exc:
            raise TritonModelException(exc.message) from None

    def is_cancelled(self) -> bool:
        return self._sender.is_cancelled()


class InferenceTrace:
    """What `InferenceRequest.trace()` returns: a handle a BLS request may be given, so
    that the call is traced under the request making it (when that one is traced)."""

    def __init__(self, handle: Any = None) -> None:
        self._handle = handle  # the received request's trace, opaque to model code


class PreferredMemory:
    """Where a BLS call's outputs should be placed: tensorgate's are in CPU memory."""

    def __init__(self, preferred_memory_type: int = TRITONSERVER_MEMORY_CPU, device_id: int = 0):
        self.preferred_memory_type = preferred_memory_type
        self.device_id = device_id


class InferenceRequest:
    """A request a model receives in `execute`, or one it builds to call a model (BLS)."""

    # The server's model calls; the Python backend sets it when it loads a Triton model.
    _calls: Caller | None = None

    def __init__(
        self,
        model_name: str = "",
        inputs: list[Tensor] | None = None,
        requested_output_names: list[str] | None = None,
        model_version: int = -1,
        correlation_id: int | str = 0,
        request_id: str = "",
        flags: int = 0,
        timeout: int = 0,
        parameters: dict[str, Any] | str | None = None,
        trace: InferenceTrace | None = None,
        **_: Any,
    ) -> None:
        self._model_name = model_name
        # As received: this request's trace; built for BLS: the trace it is made under.
        self._trace = trace._handle if trace is not None else None
        self._inputs = list(inputs or [])
        self._requested = list(requested_output_names or [])
        self._model_version = model_version
        self._correlation_id = correlation_id
        self._request_id = request_id
        self._flags = flags
        self._timeout_us = timeout
        if isinstance(parameters, str):
            parameters = json.loads(parameters) if parameters else {}
        self._parameters: dict[str, Any] = dict(parameters or {})
        self._sender: ResponseSender | None = None
        self._cancelled: Callable[[], bool] | None = None
        # Set by the sequence batcher of a model with `iterative_sequence: true`.
        self._reschedulable = False
        self._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL

    # As received --------------------------------------------------------------------

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def requested_output_names(self) -> list[str]:
        return self._requested

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def model_name(self) -> str:
        return self._model_name

    def model_version(self) -> int:
        return self._model_version

    def timeout(self) -> int:
        return self._timeout_us

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def get_response_sender(self) -> InferenceResponseSender:
        if self._sender is None:
            raise TritonModelException(
                "only requests to a decoupled model (model_transaction_policy "
                "{ decoupled: true }) have a response sender"
            )
        return InferenceResponseSender(self._sender)

    def is_cancelled(self) -> bool:
        """Whether the request's client has cancelled it, disconnected or passed its
        deadline: a long computation may stop early."""
        if self._sender is not None:
            return self._sender.is_cancelled()
        return self._cancelled is not None and self._cancelled()

    def trace(self) -> InferenceTrace:
        """This request's trace, to hand to a BLS request (`trace=`): a traced request's
        calls are traced under it, as steps of an ensemble are."""
        return InferenceTrace(self._trace)

    def set_release_flags(self, flags: int) -> None:
        """Release the request when `execute` returns (RELEASE_ALL, the default), or run it
        again in a later batch (RELEASE_RESCHEDULE), which only an iterative sequence model
        may ask for."""
        if flags & TRITONSERVER_REQUEST_RELEASE_RESCHEDULE and not self._reschedulable:
            raise TritonModelException(
                "Request is released with TRITONSERVER_REQUEST_RELEASE_RESCHEDULE, but model "
                f"'{self._model_name}' does not set sequence_batching {{ iterative_sequence: "
                "true }: only iterative sequences reschedule requests"
            )
        self._release_flags = flags

    def _rescheduled(self) -> bool:
        return bool(self._release_flags & TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)

    # BLS ----------------------------------------------------------------------------

    def _as_request(self) -> InferRequest:
        request = InferRequest(
            self._model_name,
            str(self._model_version) if self._model_version > 0 else "",
            self._request_id,
            protocol="bls",
            trace=self._trace,  # the caller's: the data plane's calls trace the call under it
        )
        for tensor in self._inputs:
            request.inputs[tensor.name()] = tensor.as_numpy()
            request.datatypes[tensor.name()] = tensor._datatype()
        if self._requested:
            request.requested_outputs = list(self._requested)
        params = dict(self._parameters)
        if self._correlation_id:
            params["sequence_id"] = self._correlation_id
            params["sequence_start"] = bool(self._flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_START)
            params["sequence_end"] = bool(self._flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_END)
        request.parameters = params
        return request

    def _caller(self) -> Caller:
        if InferenceRequest._calls is None:
            raise TritonModelException("BLS calls need a running tensorgate server")
        return InferenceRequest._calls

    def exec(self, decoupled: bool = False) -> Any:
        """Call the model and wait; decoupled: an iterator of its responses."""
        calls = self._caller()
        if decoupled:
            return _responses(calls.stream(self._as_request()))
        try:
            return _response_of(calls.infer(self._as_request(), self._timeout_s()))
        except TensorgateError as exc:
            return InferenceResponse(error=TritonError(exc.message))

    async def async_exec(self, decoupled: bool = False) -> Any:
        """Call the model from `async def execute`."""
        calls = self._caller()
        if decoupled:
            return _responses(calls.stream(self._as_request()))
        try:
            return _response_of(await calls.infer_async(self._as_request()))
        except TensorgateError as exc:
            return InferenceResponse(error=TritonError(exc.message))

    def _timeout_s(self) -> float | None:
        return self._timeout_us / 1e6 if self._timeout_us else None


def _responses(stream: Iterator[InferResponse]) -> Iterator[InferenceResponse]:
    try:
        for response in stream:
            yield _response_of(response)
    except TensorgateError as exc:
        yield InferenceResponse(error=TritonError(exc.message))


def _response_of(response: InferResponse) -> InferenceResponse:
    return InferenceResponse([Tensor(n, a) for n, a in response.outputs.items()])


def outputs_of(response: InferenceResponse) -> dict[str, Array]:
    """A response's output tensors as named arrays (tensorgate's side of the API)."""
    return {tensor.name(): tensor.as_numpy() for tensor in response.output_tensors()}


def _on_server(service: Literal["control", "metrics"], operation: str, *arguments: Any) -> Any:
    """An operation model code asks the server for: on the repository (`control`) or on its
    metrics; the server's refusal comes back as TritonModelException."""
    calls = InferenceRequest._calls
    if calls is None:
        what = "loading models" if service == "control" else "custom metrics"
        raise TritonModelException(f"{what} needs a running tensorgate server")
    try:
        return getattr(calls, service)(operation, *arguments)
    except TensorgateError as exc:
        raise TritonModelException(exc.message) from None


def _repository(operation: str, *arguments: Any) -> Any:
    return _on_server("control", operation, *arguments)


def _metrics(operation: str, *arguments: Any) -> Any:
    return _on_server("metrics", operation, *arguments)


def load_model(model_name: str, config: str = "", files: dict[str, bytes] | None = None) -> None:
    """Load (or reload) a model, as a client's load with these parameters would: the server
    must run with --model-control-mode explicit. A model cannot load itself."""
    _not_itself("load", model_name)
    parameters: dict[str, object] = dict(files or {})
    if config:
        parameters["config"] = config
    _repository("load", model_name, parameters)


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    """Unload a model (explicit model control only); a model cannot unload itself."""
    _not_itself("unload", model_name)
    _repository("unload", model_name, {"unload_dependents": unload_dependents})


def _not_itself(operation: str, model_name: str) -> None:
    if getattr(_running, "model", None) == model_name:
        raise TritonModelException(
            f"model '{model_name}' cannot {operation} itself: the server would wait for the "
            "very batch that asks to finish"
        )


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    """Whether the server serves the model (that version, else its latest) now."""
    return bool(_repository("ready", model_name, str(model_version)))


class MetricFamily:
    """A family of custom metrics, exported on the server's /metrics (Triton's API)."""

    COUNTER, GAUGE, HISTOGRAM = 0, 1, 2

    def __init__(self, name: str, description: str, kind: int) -> None:
        _metrics("family", name, description, kind)
        self.name = name
        self.kind = kind

    def Metric(  # Triton's name for it
        self, labels: dict[str, str] | None = None, buckets: list[float] | None = None
    ) -> Metric:
        """The family's series with these labels (created, or the existing one)."""
        key = tuple(sorted((labels or {}).items()))
        _metrics("metric", self.name, key, None if buckets is None else list(buckets))
        return Metric(self, key)


class Metric:
    """One series of a MetricFamily: `increment`, `set` (gauges), `observe` (histograms),
    `value` (counters and gauges)."""

    def __init__(self, family: MetricFamily, labels: tuple[tuple[str, str], ...]) -> None:
        self._family = family
        self._labels = labels

    def increment(self, value: float) -> None:
        if self._family.kind == MetricFamily.HISTOGRAM:
            raise TritonModelException("increment is not supported on a histogram metric")
        if self._family.kind == MetricFamily.COUNTER and value < 0:
            raise TritonModelException("a counter's increment must not be negative")
        self._update("increment", value)

    def set(self, value: float) -> None:
        if self._family.kind != MetricFamily.GAUGE:
            raise TritonModelException("set is supported on gauge metrics only")
        self._update("set", value)

    def observe(self, value: float) -> None:
        if self._family.kind != MetricFamily.HISTOGRAM:
            raise TritonModelException("observe is supported on histogram metrics only")
        self._update("observe", value)

    def value(self) -> float:
        return float(_metrics("value", self._family.name, self._labels))

    def _update(self, operation: str, value: float) -> None:
        _metrics(operation, self._family.name, self._labels, float(value))


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    """The request input named `name`, or None."""
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    """The response output named `name`, or None."""
    return next((t for t in response.output_tensors() if t.name() == name), None)


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The config entry (a dict) of the input named `name`, or None."""
    return next((t for t in model_config.get("input", []) if t.get("name") == name), None)


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The config entry (a dict) of the output named `name`, or None."""
    return next((t for t in model_config.get("output", []) if t.get("name") == name), None)


def using_decoupled_model_transaction_policy(model_config: dict[str, Any]) -> bool:
    """Whether the config makes the model decoupled."""
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


def triton_string_to_numpy(triton_type: str) -> Any:
    """`TYPE_FP32` (or `FP32`) → numpy.float32; BYTES / STRING → numpy.object_."""
    name = triton_type.removeprefix("TYPE_")
    row = datatypes.BY_CONFIG_NAME.get(f"TYPE_{name}") or datatypes.BY_NAME.get(name)
    if row is None:
        raise TritonModelException(f"unknown datatype {triton_type!r}")
    return row.numpy.type if row.name != "BYTES" else np.object_


# TRITONSERVER_DataType's values, the codes Triton's type helpers use.
_TYPE_CODES = {
    "BOOL": 1,
    "UINT8": 2,
    "UINT16": 3,
    "UINT32": 4,
    "UINT64": 5,
    "INT8": 6,
    "INT16": 7,
    "INT32": 8,
    "INT64": 9,
    "FP16": 10,
    "FP32": 11,
    "FP64": 12,
    "BYTES": 13,
    "BF16": 14,
}


def _numpy_type(name: str) -> Any:
    return np.object_ if name == "BYTES" else datatypes.BY_NAME[name].numpy.type


TRITON_STRING_TO_NUMPY = {
    "TYPE_STRING" if name == "BYTES" else f"TYPE_{name}": _numpy_type(name) for name in _TYPE_CODES
}


def numpy_to_triton_type(dtype: Any) -> int | None:
    """The TRITONSERVER_DataType code of a numpy type (numpy.float32 → 11); None when it
    has none, as in Triton."""
    try:
        kind = np.dtype(dtype)
    except TypeError:
        return None
    if kind.type is np.bytes_:
        return _TYPE_CODES["BYTES"]
    try:
        return _TYPE_CODES.get(datatypes.from_numpy(kind).name)
    except TensorgateError:
        return None


def triton_to_numpy_type(code: int) -> Any:
    """The numpy type of a TRITONSERVER_DataType code (11 → numpy.float32); None when none."""
    for name, value in _TYPE_CODES.items():
        if value == code:
            return _numpy_type(name)
    return None


def serialize_byte_tensor(array: Array) -> bytes | tuple[()]:
    """A BYTES tensor as Triton's flat encoding: each element's 4-byte little-endian length,
    then its bytes, in row-major order (an empty tensor gives `()`, as in Triton)."""
    if array.size == 0:
        return ()
    return serialize_bytes(array)


def deserialize_bytes_tensor(encoded: bytes) -> Array:
    """Triton's flat BYTES encoding back into a 1-D object array of bytes elements."""
    elements = []
    view = memoryview(encoded)
    offset = 0
    while offset < len(view):
        size = int.from_bytes(view[offset : offset + 4], "little")
        elements.append(bytes(view[offset + 4 : offset + 4 + size]))
        offset += 4 + size
    return np.array(elements, dtype=np.object_)


class Logger:
    """Triton's model logger, writing to tensorgate's log."""

    @staticmethod
    def log_info(message: str) -> None:
        _log.info(message)

    @staticmethod
    def log_warn(message: str) -> None:
        _log.warning(message)

    @staticmethod
    def log_error(message: str) -> None:
        _log.error(message)

    @staticmethod
    def log_verbose(message: str) -> None:
        _log.debug(message)

    log = log_info
