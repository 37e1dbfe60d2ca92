"""The one internal request and response type every transport decodes to and encodes from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ParameterValue = bool | int | float | str
Array = np.ndarray


@dataclass(slots=True)
class InferRequest:
    """A decoded inference request: named numpy arrays plus addressing and parameters."""

    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: dict[str, Array] = field(default_factory=dict)
    # v2 datatype the client declared for each input (BYTES/BF16 are not recoverable from
    # the numpy dtype alone, and the declaration is what gets validated).
    datatypes: dict[str, str] = field(default_factory=dict)
    # None means "every output of the model", as the protocol says.
    requested_outputs: list[str] | None = None
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    protocol: str = "grpc"  # which transport brought it: grpc, grpc_stream or http
    # observability.tracing.RequestTrace when this request is traced. A call model code
    # makes (BLS) carries the trace of the request making it, until ModelCalls starts the
    # call's own trace under that one.
    trace: Any = None
    # time.monotonic_ns() at which the caller stops waiting (a gRPC deadline); 0: none.
    # Runners that can end early with a partial answer (generation) read it.
    deadline_ns: int = 0
    # Outputs to write into shared-memory regions (Placement by output name); None: none.
    output_regions: dict[str, Any] | None = None
    # Outputs asked for as their top classes (class count by output name); None: none.
    classifications: dict[str, int] | None = None
    # Set by the runner holding the request: whether its caller stopped waiting for it
    # (model code asks through `request.is_cancelled()`); callable from any thread.
    cancelled: Callable[[], bool] | None = None


@dataclass(slots=True)
class InferResponse:
    """Outputs of one request, in the order the model config lists them."""

    model_name: str
    model_version: str
    id: str
    outputs: dict[str, Array]
    datatypes: dict[str, str]
    parameters: dict[str, Any] = field(default_factory=dict)
    # A decoupled model's responses: False on all but the last of a request's stream.
    final: bool = True
