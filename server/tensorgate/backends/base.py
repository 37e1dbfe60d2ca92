"""The small interface every backend implements: arrays in, arrays out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tensorgate_protos import model_config_pb2 as mc

from tensorgate.dataplane.types import Array

if TYPE_CHECKING:
    from tensorgate.dataplane.calls import Caller
    from tensorgate.dataplane.types import InferRequest


# The device of a KIND_MODEL instance: Python model code that chooses its devices itself.
MODEL_DEVICE = "model"


@dataclass(frozen=True, slots=True)
class TensorSignature:
    """A tensor as the model file declares it; -1 marks a dynamic dimension."""

    name: str
    config_type: str  # model config enum name, e.g. TYPE_FP32
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelSignature:
    """Inputs and outputs read from a model file, used to complete and check the config."""

    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...]


@dataclass(frozen=True, slots=True)
class InstanceContext:
    """Everything a backend needs to create one instance of a model version."""

    model_name: str
    version: int
    model_dir: Path
    model_file: Path
    config: mc.ModelConfig
    device: str  # "cpu", "cuda:<id>", or MODEL_DEVICE (KIND_MODEL: the model places itself)
    intra_op_threads: int
    index: int = 0  # which instance of the version this is
    calls: Caller | None = None  # how model code calls other models (BLS)


def model_input_names(config: mc.ModelConfig) -> list[str]:
    """Every input a batch brings the model, in order: the config's inputs, then the
    sequence batcher's control inputs and state inputs (backends that pass inputs by
    position, such as TorchScript, pass them in this order)."""
    batching = config.sequence_batching
    return [
        *(t.name for t in config.input),
        *(c.name for c in batching.control_input),
        *(s.input_name for s in batching.state),
    ]


def model_output_names(config: mc.ModelConfig) -> list[str]:
    """Every output the model returns, in order: the config's outputs, then the state
    outputs the config does not list."""
    listed = [t.name for t in config.output]
    states = [s.output_name for s in config.sequence_batching.state]
    return [*listed, *(name for name in states if name not in listed)]


class Backend(Protocol):
    """One loaded instance of a model version; `execute` runs in an executor thread."""

    def signature(self) -> ModelSignature | None:
        """Inputs and outputs the model file declares, or None when it cannot tell."""
        ...

    def execute(self, inputs: dict[str, Array]) -> dict[str, Array]:
        """Run the model on named arrays and return every output by name."""
        ...

    def close(self) -> None:
        """Release the instance's resources."""
        ...


class BackendFactory(Protocol):
    """Creates instances; `default_filename` is looked for in each version directory."""

    name: str
    default_filename: str

    def create(self, context: InstanceContext) -> Backend:
        """Load one instance. Raises ModelLoadError with a reason the user can act on."""
        ...


class ResponseSender(Protocol):
    """Where a decoupled model pushes a request's responses, from any of its threads.

    `send` blocks while the client is behind on reading (backpressure); once the client has
    cancelled or gone away it returns at once and the response is dropped.
    """

    def send(self, outputs: dict[str, Array] | None, final: bool) -> None: ...

    def is_cancelled(self) -> bool: ...


@dataclass(slots=True)
class SequenceStep:
    """One request of a sequence as a model that takes its requests one by one sees it
    (Triton Python models under the sequence batcher): its inputs with the control and
    state inputs added, its sequence's correlation id, Triton's START/END request flags
    for this execution, and, for a decoupled model, where its responses go."""

    inputs: dict[str, Array]
    request: InferRequest
    correlation_id: int | str
    flags: int
    sender: ResponseSender | None = None


@dataclass(slots=True)
class StepOutcome:
    """What became of one SequenceStep: its outputs (None for a decoupled model, whose
    responses went through the sender, and for a rescheduled request) or its error, and
    whether the model rescheduled it to run again in a later batch (iterative sequences)."""

    outputs: dict[str, Array] | None
    error: Exception | None = None
    rescheduled: bool = False


class SteppedBackend(Backend, Protocol):
    """A backend that runs a sequence batch as separate requests, each of which it may
    answer, fail or reschedule on its own."""

    def execute_steps(self, steps: list[SequenceStep], iterative: bool) -> list[StepOutcome]:
        """Run one batch of steps; `iterative`: the model may reschedule requests."""
        ...
