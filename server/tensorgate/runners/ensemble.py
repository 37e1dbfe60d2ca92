"""The ensemble scheduler: a DAG of models run server-side as one request.

`platform: "ensemble"` with `ensemble_scheduling { step [...] }`: each step names a model and
maps that model's inputs from, and outputs to, the ensemble's tensors. At load the plan is
checked against the composing models (which must be loaded): every tensor a step reads is
an ensemble input or another step's output, no tensor is produced twice, there is no cycle,
and producer and consumer agree on datatype and dims. A request then runs each step as
soon as its inputs exist, steps whose inputs are ready at the same time concurrently, each
through its own model's runner via the data plane, so a step batches with the model's other
traffic and counts in its statistics. Tensors pass from step to step as the same arrays.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from tensorgate_protos import model_config_pb2 as mc

from tensorgate.dataplane.types import Array, InferRequest, InferResponse
from tensorgate.errors import ModelLoadError, TensorgateError, Unavailable
from tensorgate.repository.config import ModelSpec, TensorSpec
from tensorgate.runners.base import ModelVersion, RunnerStatus, Scheduled, Streamed, one_result

# Resolves a model version the way the data plane does (raises NOT_FOUND / UNAVAILABLE).
Resolve = Callable[[str, str], ModelVersion]
# Runs one inference through the data plane.
Infer = Callable[[InferRequest], Awaitable[InferResponse]]


@dataclass(frozen=True, slots=True)
class Step:
    """One model call of the ensemble: its inputs from, and outputs to, ensemble tensors."""

    index: int
    model: str
    version: str  # "" for the latest
    inputs: dict[str, str]  # model input -> ensemble tensor
    outputs: dict[str, str]  # model output -> ensemble tensor

    @property
    def label(self) -> str:
        return f"step {self.index + 1} ('{self.model}')"


@dataclass(frozen=True, slots=True)
class EnsemblePlan:
    """The checked steps of an ensemble."""

    steps: tuple[Step, ...]
    inputs: tuple[str, ...]  # ensemble inputs
    outputs: tuple[str, ...]  # ensemble outputs
    datatypes: dict[str, str]  # every ensemble tensor's v2 datatype

    @classmethod
    def from_config(cls, config: mc.ModelConfig, resolve: Resolve) -> EnsemblePlan:
        """Read and check the steps; every failure names what the user must fix."""
        steps = tuple(
            Step(
                i,
                s.model_name,
                str(s.model_version) if s.model_version > 0 else "",
                dict(s.input_map),
                dict(s.output_map),
            )
            for i, s in enumerate(config.ensemble_scheduling.step)
        )
        if not steps:
            raise ModelLoadError("an ensemble needs at least one ensemble_scheduling step")
        inputs = tuple(t.name for t in config.input)
        plan = cls(steps, inputs, tuple(t.name for t in config.output), {})
        spec = ModelSpec.from_config(config)
        models = {step.index: _composing(config.name, step, resolve) for step in steps}
        producers = plan._producers(spec, models)
        plan._check_consumers(spec, models, producers)
        plan._check_acyclic()
        plan.datatypes.update({name: p[1].datatype.name for name, p in producers.items()})
        return plan

    def _producers(
        self, spec: ModelSpec, models: dict[int, ModelVersion]
    ) -> dict[str, tuple[str, TensorSpec, ModelSpec, int]]:
        """Ensemble tensor -> (who makes it, its spec, the maker's model spec, step or -1)."""
        made: dict[str, tuple[str, TensorSpec, ModelSpec, int]] = {
            name: ("the ensemble's input", spec.inputs[name], spec, -1) for name in self.inputs
        }
        for step in self.steps:
            model = models[step.index].spec
            for model_output, tensor in step.outputs.items():
                if model_output not in model.outputs:
                    raise ModelLoadError(
                        f"{step.label} maps output '{model_output}', which model "
                        f"'{step.model}' does not have (it has {', '.join(model.outputs)})"
                    )
                if tensor in made:
                    raise ModelLoadError(
                        f"ensemble tensor '{tensor}' is produced twice: by {made[tensor][0]} "
                        f"and by {step.label}"
                    )
                made[tensor] = (step.label, model.outputs[model_output], model, step.index)
        return made

    def _check_consumers(
        self,
        spec: ModelSpec,
        models: dict[int, ModelVersion],
        producers: dict[str, tuple[str, TensorSpec, ModelSpec, int]],
    ) -> None:
        for step in self.steps:
            model = models[step.index].spec
            for model_input, tensor in step.inputs.items():
                if model_input not in model.inputs:
                    raise ModelLoadError(
                        f"{step.label} maps input '{model_input}', which model "
                        f"'{step.model}' does not have (it has {', '.join(model.inputs)})"
                    )
                if tensor not in producers:
                    raise ModelLoadError(
                        f"{step.label} reads ensemble tensor '{tensor}', which no step "
                        "produces and is not an ensemble input"
                    )
                _check_match(tensor, producers[tensor], model.inputs[model_input], model, step)
            unmapped = [
                n for n, t in model.inputs.items() if not t.optional and n not in step.inputs
            ]
            if unmapped:
                raise ModelLoadError(f"{step.label} leaves model inputs {unmapped} unmapped")
        for name in self.outputs:
            if name not in producers or producers[name][3] < 0:
                raise ModelLoadError(f"ensemble output '{name}' is produced by no step")
            _check_match(name, producers[name], spec.outputs[name], spec, None)

    def _check_acyclic(self) -> None:
        available = set(self.inputs)
        remaining = list(self.steps)
        while remaining:
            ready = [s for s in remaining if set(s.inputs.values()) <= available]
            if not ready:
                labels = ", ".join(s.label for s in remaining)
                raise ModelLoadError(f"ensemble steps form a cycle: {labels} wait on each other")
            for step in ready:
                available.update(step.outputs.values())
                remaining.remove(step)


def _composing(ensemble: str, step: Step, resolve: Resolve) -> ModelVersion:
    if step.model == ensemble:
        raise ModelLoadError(f"{step.label} names the ensemble itself")
    try:
        model = resolve(step.model, step.version)
    except TensorgateError as exc:
        raise ModelLoadError(f"{step.label}: {exc.message}") from None
    if model.runner.decoupled:
        raise ModelLoadError(f"{step.label}: decoupled models cannot be ensemble steps")
    return model


def _check_match(
    tensor: str,
    producer: tuple[str, TensorSpec, ModelSpec, int],
    consumer: TensorSpec,
    consumer_model: ModelSpec,
    step: Step | None,
) -> None:
    who, made, maker, _ = producer
    reader = step.label if step is not None else "the ensemble's output"
    if made.datatype != consumer.datatype:
        raise ModelLoadError(
            f"ensemble tensor '{tensor}' is {made.datatype.name} from {who} but "
            f"{reader} expects {consumer.datatype.name}"
        )
    made_shape = made.metadata_shape(maker.max_batch_size)
    want_shape = consumer.metadata_shape(consumer_model.max_batch_size)
    compatible = len(made_shape) == len(want_shape) and all(
        a == b or a == -1 or b == -1 for a, b in zip(made_shape, want_shape, strict=True)
    )
    if not compatible:
        raise ModelLoadError(
            f"ensemble tensor '{tensor}' has shape {made_shape} from {who} but {reader} "
            f"expects {want_shape}"
        )


class EnsembleRunner:
    """Runs an ensemble's steps for each request through the data plane."""

    decoupled = False

    def __init__(self, name: str, plan: EnsemblePlan, spec: ModelSpec, infer: Infer) -> None:
        self.name = name
        self.plan = plan
        self.spec = spec
        self._infer = infer
        self._running = 0
        self._drained: asyncio.Future[None] | None = None

    def status(self) -> RunnerStatus:
        return RunnerStatus(0, self._running, 0)

    def stream(self, request: InferRequest, rows: int) -> AsyncGenerator[Streamed, None]:
        return one_result(self.run(request, rows))

    async def run(self, request: InferRequest, rows: int) -> Scheduled:
        """1. Start every step whose inputs exist. 2. As each finishes, add its outputs and
        start the steps they complete. 3. Answer with the ensemble's outputs."""
        started = time.perf_counter_ns()
        tensors: dict[str, Array] = dict(request.inputs)
        waiting = list(self.plan.steps)
        running: dict[asyncio.Task[InferResponse], Step] = {}
        self._running += 1
        try:
            while waiting or running:
                for step in [s for s in waiting if set(s.inputs.values()) <= tensors.keys()]:
                    waiting.remove(step)
                    task = asyncio.ensure_future(
                        self._infer(self._step_request(step, request, tensors))
                    )
                    running[task] = step
                if not running:
                    raise Unavailable(f"ensemble '{self.name}' has steps that can never run")
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    step = running.pop(task)
                    response = self._step_result(step, task)
                    for model_output, tensor in step.outputs.items():
                        tensors[tensor] = response.outputs[model_output]
        finally:
            self._running -= 1
            for task in running:
                task.cancel()
            if not self._running and self._drained is not None and not self._drained.done():
                self._drained.set_result(None)
        outputs = {name: tensors[name] for name in self.plan.outputs}
        return Scheduled(outputs, 0, 0, time.perf_counter_ns() - started, 0, None)

    def _step_request(
        self, step: Step, request: InferRequest, tensors: dict[str, Array]
    ) -> InferRequest:
        inputs = {model_input: tensors[tensor] for model_input, tensor in step.inputs.items()}
        types = self.plan.datatypes
        declared = {model_input: types[tensor] for model_input, tensor in step.inputs.items()}
        return InferRequest(
            model_name=step.model,
            model_version=step.version,
            id=request.id,
            inputs=inputs,
            datatypes=declared,
            requested_outputs=list(step.outputs),
            parameters=request.parameters,
            protocol=request.protocol,
        )

    def _step_result(self, step: Step, task: asyncio.Task[InferResponse]) -> InferResponse:
        try:
            return task.result()
        except TensorgateError as exc:
            raise TensorgateError(
                f"ensemble '{self.name}' {step.label} failed: {exc.message}", exc.kind
            ) from None

    async def close(self) -> None:
        """Wait for running requests; the composing models are unloaded on their own."""
        if self._running:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    def discard(self) -> None:
        pass
