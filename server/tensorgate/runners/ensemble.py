"""The ensemble scheduler: a DAG of models run server-side as one request.

`platform: "ensemble"` with `ensemble_scheduling { step [...] }`: each step names a model and
maps that model's inputs from, and outputs to, the ensemble's tensors. At load the plan is
checked against the composing models (which must be loaded): every tensor a step reads is
an ensemble input or another step's output, no tensor is produced twice, there is no cycle,
and producer and consumer agree on datatype and dims. A request then runs each step as
soon as its inputs exist, steps whose inputs are ready at the same time concurrently, each
through its own model's runner via the data plane, so a step batches with the model's other
traffic and counts in its statistics. Tensors pass from step to step as the same arrays.

A decoupled step makes the ensemble decoupled (answered over a stream, as Triton's): every
step that does not wait on a decoupled step runs once; then each response of the
decoupled step runs the steps after it, and each run that completes the ensemble's
outputs is one response of the ensemble. The next response is taken from the decoupled
step once the steps after the previous one are done, so a fast producer waits for its
consumers instead of piling responses up in memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, replace

from tensorgate_protos import model_config_pb2 as mc

from tensorgate.dataplane.types import Array, InferRequest, InferResponse
from tensorgate.errors import ModelLoadError, TensorgateError, Unavailable
from tensorgate.observability.tracing import traced_step, traced_stream
from tensorgate.repository.config import ModelSpec, TensorSpec
from tensorgate.runners.base import ModelVersion, RunnerStatus, Scheduled, Streamed, one_result

# Resolves a model version the way the data plane does (raises NOT_FOUND / UNAVAILABLE).
Resolve = Callable[[str, str], ModelVersion]
# Runs one inference through the data plane.
Infer = Callable[[InferRequest], Awaitable[InferResponse]]
# Runs one inference of a decoupled model through the data plane: its responses.
Stream = Callable[[InferRequest], AsyncGenerator[InferResponse, None]]


@dataclass(frozen=True, slots=True)
class Step:
    """One model call of the ensemble: its inputs from, and outputs to, ensemble tensors."""

    index: int
    model: str
    version: str  # "" for the latest
    inputs: dict[str, str]  # model input -> ensemble tensor
    outputs: dict[str, str]  # model output -> ensemble tensor
    decoupled: bool = False  # its model answers with a stream of responses

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
        spec = ModelSpec.from_config(config)
        models = {step.index: _composing(config.name, step, resolve) for step in steps}
        steps = tuple(replace(s, decoupled=models[s.index].runner.decoupled) for s in steps)
        inputs = tuple(t.name for t in config.input)
        plan = cls(steps, inputs, tuple(t.name for t in config.output), {})
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

    def __init__(
        self, name: str, plan: EnsemblePlan, spec: ModelSpec, infer: Infer, stream: Stream
    ) -> None:
        self.name = name
        self.plan = plan
        self.spec = spec
        self.decoupled = any(step.decoupled for step in plan.steps)
        self._infer = infer
        self._stream = stream
        self._running = 0
        self._drained: asyncio.Future[None] | None = None

    def status(self) -> RunnerStatus:
        return RunnerStatus(0, self._running, 0)

    def stream(self, request: InferRequest, rows: int) -> AsyncGenerator[Streamed, None]:
        if not self.decoupled:
            return one_result(self.run(request, rows))
        return self._responses(request)

    async def _responses(self, request: InferRequest) -> AsyncGenerator[Streamed, None]:
        """A decoupled ensemble's stream: one response per completed run of its outputs,
        then the final flag."""
        self._running += 1
        try:
            async with aclosing(
                self._flow(request, dict(request.inputs), list(self.plan.steps))
            ) as runs:
                async for outputs in runs:
                    yield Streamed(outputs, False)
            yield Streamed(None, True)
        finally:
            self._finished_one()

    async def _flow(
        self, request: InferRequest, tensors: dict[str, Array], waiting: list[Step]
    ) -> AsyncGenerator[dict[str, Array], None]:
        """Run the steps that wait on no decoupled step, then fork the rest on each
        response of a decoupled one; yields the ensemble's outputs of every finished run."""
        running: dict[asyncio.Task[InferResponse], Step] = {}
        try:
            while True:
                for step in self._ready(waiting, tensors, decoupled=False):
                    waiting.remove(step)
                    task = asyncio.ensure_future(
                        self._run_step(self._step_request(step, request, tensors))
                    )
                    running[task] = step
                if running:
                    done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        step = running.pop(task)
                        self._keep(step, self._step_result(step, task), tensors)
                    continue
                if not waiting:
                    yield {name: tensors[name] for name in self.plan.outputs}
                    return
                ready = self._ready(waiting, tensors, decoupled=True)
                if not ready:
                    raise Unavailable(f"ensemble '{self.name}' has steps that can never run")
                step = ready[0]
                waiting.remove(step)
                step_request = self._step_request(step, request, tensors)
                responses = (
                    self._stream(step_request)
                    if step_request.trace is None
                    else traced_stream(step_request, self._stream)
                )
                async with aclosing(responses):
                    async for response in self._step_responses(step, responses):
                        fork = dict(tensors)
                        self._keep(step, response, fork)
                        async with aclosing(self._flow(request, fork, list(waiting))) as runs:
                            async for outputs in runs:
                                yield outputs
                return
        finally:
            for task in running:
                task.cancel()

    async def _run_step(self, step_request: InferRequest) -> InferResponse:
        if step_request.trace is None:
            return await self._infer(step_request)
        return await traced_step(step_request, self._infer)

    @staticmethod
    def _ready(waiting: list[Step], tensors: dict[str, Array], decoupled: bool) -> list[Step]:
        return [
            s
            for s in waiting
            if s.decoupled == decoupled and set(s.inputs.values()) <= tensors.keys()
        ]

    @staticmethod
    def _keep(step: Step, response: InferResponse, tensors: dict[str, Array]) -> None:
        for model_output, tensor in step.outputs.items():
            tensors[tensor] = response.outputs[model_output]

    async def _step_responses(
        self, step: Step, responses: AsyncGenerator[InferResponse, None]
    ) -> AsyncGenerator[InferResponse, None]:
        """A decoupled step's responses that carry outputs (a bare final flag carries
        none); a failure names the step."""
        try:
            async for response in responses:
                if response.outputs:
                    yield response
        except TensorgateError as exc:
            raise self._failed(step, exc) from None

    async def run(self, request: InferRequest, rows: int) -> Scheduled:
        """1. Start every step whose inputs exist. 2. As each finishes, add its outputs and
        start the steps they complete. 3. Answer with the ensemble's outputs."""
        started = time.perf_counter_ns()
        self._running += 1
        try:
            flow = self._flow(request, dict(request.inputs), list(self.plan.steps))
            async with aclosing(flow) as runs:
                (outputs,) = [outputs async for outputs in runs]  # no decoupled step: one run
        finally:
            self._finished_one()
        return Scheduled(outputs, 0, 0, time.perf_counter_ns() - started, 0, None)

    def _finished_one(self) -> None:
        self._running -= 1
        if not self._running and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _step_request(
        self, step: Step, request: InferRequest, tensors: dict[str, Array]
    ) -> InferRequest:
        inputs = {model_input: tensors[tensor] for model_input, tensor in step.inputs.items()}
        types = self.plan.datatypes
        declared = {model_input: types[tensor] for model_input, tensor in step.inputs.items()}
        # A traced ensemble request traces its steps under it.
        trace = request.trace.step(step.model) if request.trace is not None else None
        return InferRequest(
            model_name=step.model,
            model_version=step.version,
            id=request.id,
            inputs=inputs,
            datatypes=declared,
            requested_outputs=list(step.outputs),
            parameters=request.parameters,
            protocol=request.protocol,
            trace=trace,
        )

    def _step_result(self, step: Step, task: asyncio.Task[InferResponse]) -> InferResponse:
        try:
            return task.result()
        except TensorgateError as exc:
            raise self._failed(step, exc) from None

    def _failed(self, step: Step, exc: TensorgateError) -> TensorgateError:
        """A step's error as the ensemble's, naming the step."""
        return TensorgateError(
            f"ensemble '{self.name}' {step.label} failed: {exc.message}", exc.kind
        )

    async def close(self) -> None:
        """Wait for running requests; the composing models are unloaded on their own."""
        if self._running:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    def discard(self) -> None:
        pass
