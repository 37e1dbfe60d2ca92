"""How a model version is put together: config → backend instances → runner → counters.

The repository decides what to load and tracks its state; this module is the one place that
says what a loaded version is made of. Steps, in order:

1. Refuse any config field tensorgate does not implement (repository/support.py).
   An ensemble has no backend: its plan is checked against its (loaded) steps, done. A
   generation model (`backend: "generation"`) is built by generation/build.py.
2. Resolve the backend and create one instance per `instance_group` entry and count; the
   first instance's signature completes and checks the config.
3. Choose the runner the config asks for: the sequence batcher for `sequence_batching`
   (decoupled or not), the decoupled runner for `model_transaction_policy { decoupled:
   true }`, else the dynamic batcher (with or without `dynamic_batching`).
4. Attach statistics and metrics.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tensorgate_protos import model_config_pb2 as mc

from tensorgate.backends.base import (
    MODEL_DEVICE,
    Backend,
    InstanceContext,
    ModelSignature,
    TensorSignature,
)
from tensorgate.backends.python_model import auto_complete
from tensorgate.backends.registry import model_file, resolve_backend
from tensorgate.batching.policy import BatchingPolicy
from tensorgate.batching.ragged import RaggedBatching
from tensorgate.batching.scheduler import ExecutionObserver, Scheduler
from tensorgate.dataplane.calls import ModelCalls
from tensorgate.dataplane.classification import Labels, read_labels
from tensorgate.dataplane.statistics import LatencyWindow, ModelStats
from tensorgate.errors import ModelLoadError
from tensorgate.executors.instance_pool import InstancePool
from tensorgate.executors.instance_threads import InstanceThreads
from tensorgate.executors.model_env import ENV_PARAMETER, env_parameter, model_env
from tensorgate.executors.process_instance import ProcessInstance
from tensorgate.executors.rate_limiter import Gate, RateLimiter, instance_needs
from tensorgate.observability.metrics import MetricsStore, ModelMetrics
from tensorgate.observability.triton_metrics import MetricsConfig
from tensorgate.repository.autocomplete import complete_config
from tensorgate.repository.config import ModelSpec
from tensorgate.repository.support import check_supported
from tensorgate.runners.base import ModelRunner, ModelVersion
from tensorgate.runners.decoupled import DecoupledRunner
from tensorgate.runners.ensemble import EnsemblePlan, EnsembleRunner, Resolve
from tensorgate.runners.sequence import SequenceRunner, check_sequence_config
from tensorgate.runners.sequence_state import StateTensor, check_signature, state_tensors
from tensorgate.runners.warmup import warm_up
from tensorgate.settings import Settings

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble"
GENERATION = "generation"  # a language model served by tensorgate's generation engine


# The config parameter that sets a model's execution timeout, in seconds.
TIMEOUT_PARAMETER = "model_timeout"
# The config parameter that places a model's instances in threads or processes.
EXECUTION_PARAMETER = "execution"
EXECUTIONS = ("thread", "process", "inline", "auto")


def instance_placements(config: mc.ModelConfig) -> list[tuple[mc.ModelInstanceGroup, str]]:
    """One (instance group, device name) per instance the config's instance groups ask for."""
    groups = list(config.instance_group) or [mc.ModelInstanceGroup(count=1)]
    placements: list[tuple[mc.ModelInstanceGroup, str]] = []
    for group in groups:
        count = group.count or 1
        if group.kind == mc.ModelInstanceGroup.KIND_GPU:
            devices = [f"cuda:{gpu}" for gpu in group.gpus or [0] for _ in range(count)]
        elif group.kind in (mc.ModelInstanceGroup.KIND_CPU, mc.ModelInstanceGroup.KIND_AUTO):
            devices = ["cpu"] * count
        elif group.kind == mc.ModelInstanceGroup.KIND_MODEL:
            devices = [MODEL_DEVICE] * count
        else:
            raise ModelLoadError(
                f"instance_group kind {mc.ModelInstanceGroup.Kind.Name(group.kind)} "
                "is not supported"
            )
        placements += [(group, device) for device in devices]
    return placements


def instance_devices(config: mc.ModelConfig) -> list[str]:
    """One device name per instance the config's instance groups ask for."""
    return [device for _, device in instance_placements(config)]


def execution(config: mc.ModelConfig, server_default: str, rate_limited: bool = False) -> str:
    """Where the model's batches run: `thread` (an instance thread of the server),
    `process` (each instance its own process), `inline` (on the event loop) or `auto`
    (inline while batches are short, else threads); the model's `execution` parameter,
    else the server's --execution. What a model cannot run is refused when the model asks
    for it, and falls back to threads when it comes from the server's default. A
    `rate_limited` model's instances wait for resources, which only a thread may do."""
    param = config.parameters.get(EXECUTION_PARAMETER)
    asked = param is not None and bool(param.string_value)
    chosen = param.string_value if param is not None and asked else server_default
    if env_parameter(config):  # its interpreter is another program: a process of its own
        if asked and chosen != "process":
            raise ModelLoadError(
                f"execution: {chosen} is not possible for this model: parameter "
                f"{ENV_PARAMETER} runs it with its environment's interpreter, in processes"
            )
        return "process"
    if chosen not in EXECUTIONS:
        raise ModelLoadError(
            f"parameter {EXECUTION_PARAMETER} must be one of {', '.join(EXECUTIONS)}, "
            f"got {chosen!r}"
        )
    why = _cannot_run(config, chosen)
    if rate_limited and chosen in ("inline", "auto"):
        why = "its instances wait for the rate limiter's resources, off the event loop"
    if why and asked:
        raise ModelLoadError(f"execution: {chosen} is not possible for this model: {why}")
    return "thread" if why else chosen


def _cannot_run(config: mc.ModelConfig, chosen: str) -> str:
    stateful = config.model_transaction_policy.decoupled or config.HasField("sequence_batching")
    if chosen in ("inline", "auto"):
        if stateful:
            return "decoupled and sequence models run on their instance threads"
        if config.backend == "python":
            return "Python model code would hold the event loop"
        if any(d.startswith("cuda") for d in instance_devices(config)):
            return "GPU instances wait on their CUDA stream"
    return ""


def model_timeout(config: mc.ModelConfig, server_default: float) -> float:
    """Seconds a batch may run: the model's parameter, else the server's; 0: no limit."""
    param = config.parameters.get(TIMEOUT_PARAMETER)
    if param is None or not param.string_value:
        return server_default
    try:
        seconds = float(param.string_value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        raise ModelLoadError(
            f"parameter {TIMEOUT_PARAMETER} must be a number of seconds >= 0, "
            f"got {param.string_value!r}"
        )
    return seconds


class VersionBuilder:
    """Builds loaded model versions with the server's settings and metrics store."""

    def __init__(self, settings: Settings, metrics: MetricsStore | None, resolve: Resolve) -> None:
        self.settings = settings
        self.metrics = metrics
        self.resolve = resolve  # finds loaded models: an ensemble's steps
        # Triton's rate limiter, shared by every model (--rate-limit execution_count).
        self.limiter = (
            RateLimiter.from_flags(settings.rate_limit_resource)
            if settings.rate_limit == "execution_count"
            else None
        )
        # How ensembles and model code call models: the data plane sets it (None: refused).
        self.calls: ModelCalls | None = None

    def build(
        self, name: str, model_dir: Path, version: int, base_config: mc.ModelConfig
    ) -> ModelVersion:
        """Blocking (backends load files): run it off the event loop."""
        config = mc.ModelConfig()
        config.CopyFrom(base_config)
        check_supported(config)
        if config.response_cache.enable and config.backend == GENERATION:
            raise ModelLoadError(
                "response_cache is implemented for models that answer each request once, not "
                "for generation models"
            )
        if config.model_warmup and (config.platform == ENSEMBLE or config.backend == GENERATION):
            raise ModelLoadError(
                "model_warmup is implemented for models with instances, not for ensembles or "
                "generation models"
            )
        labels = read_labels(config, model_dir)
        if config.platform == ENSEMBLE or config.backend == GENERATION:
            _check_graph_level(config, "ensemble" if config.platform == ENSEMBLE else GENERATION)
        if config.platform == ENSEMBLE:
            return self._ensemble(name, version, config, labels)
        if config.backend == GENERATION:
            return self._generation(name, model_dir / str(version), version, config, labels)
        states = state_tensors(config, model_dir)
        ragged = _ragged(config)
        gates = self._gates(name, config)
        instances, create = self._instances(name, model_dir, version, config, states)
        try:
            spec = ModelSpec.from_config(config, labels)
            warm_up(config, spec, instances, model_dir)
            stats = self._stats()
            metrics = self.metrics.model(name, version) if self.metrics is not None else None
            runner = self._runner(
                name, version, config, instances, create, stats, metrics, states, gates, ragged
            )
        except BaseException:
            for instance in instances:
                instance.close()
            raise
        cached = self._cached(config)
        return ModelVersion(name, version, config, spec, runner, stats, metrics, cached=cached)

    def _gates(self, name: str, config: mc.ModelConfig) -> list[Gate | None] | None:
        """Each instance's rate-limiter gate; None when no instance of the model needs one."""
        needs = instance_needs(instance_placements(config))
        if not any(needs):
            return None
        if self.limiter is None:
            log.info(
                "%s: rate_limiter resources take effect with --rate-limit execution_count", name
            )
            return None
        for need in needs:
            if need is not None:
                try:
                    self.limiter.admit(need)
                except ValueError as exc:
                    raise ModelLoadError(str(exc)) from None
        return [None if need is None else self.limiter.gate(need) for need in needs]

    def _cached(self, config: mc.ModelConfig) -> bool:
        """Whether the model's answers may be cached (`response_cache { enable: true }`)."""
        if not config.response_cache.enable:
            return False
        if not self.settings.cache_size:
            raise ModelLoadError(
                "response_cache is enabled but the server has no cache: start it with "
                "--cache-size BYTES"
            )
        if config.model_transaction_policy.decoupled or config.HasField("sequence_batching"):
            raise ModelLoadError(
                "response_cache is implemented for models that answer each request once and "
                "keep no state, not for decoupled or sequence models"
            )
        return True

    def _ensemble(
        self, name: str, version: int, config: mc.ModelConfig, labels: Labels
    ) -> ModelVersion:
        if self.calls is None:
            raise ModelLoadError("ensembles need the data plane, which this server lacks")
        if not config.input or not config.output:
            raise ModelLoadError("an ensemble's config.pbtxt must list its input and output")
        if config.instance_group:  # batching is excluded already: it shares a oneof with it
            raise ModelLoadError(
                "an ensemble takes no 'instance_group': each step is placed by its own "
                "model's config"
            )
        config.backend = ""
        spec = ModelSpec.from_config(config, labels)
        plan = EnsemblePlan.from_config(config, self.resolve)
        runner = EnsembleRunner(name, plan, spec, self.calls.on_loop, self.calls.stream_on_loop)
        metrics = self.metrics.model(name, version) if self.metrics is not None else None
        needs = tuple(sorted({step.model for step in plan.steps}))
        stateful = runner.decoupled or any(
            self.resolve(step.model, step.version).config.HasField("sequence_batching")
            for step in plan.steps
        )
        if config.response_cache.enable and stateful:
            raise ModelLoadError(
                "response_cache is implemented for ensembles that answer each request once "
                "and keep no state, not for ones with a decoupled or sequence step"
            )
        cached = self._cached(config)
        return ModelVersion(
            name, version, config, spec, runner, self._stats(), metrics, needs, cached
        )

    def _stats(self) -> ModelStats:
        """A version's statistics, keeping recent latencies where Triton's summaries are on."""
        settings = self.settings
        summaries = settings.metrics_port >= 0 and (
            MetricsConfig.parse(settings.metrics_config).summary_latencies
        )
        return ModelStats(window=LatencyWindow() if summaries else None)

    def _generation(
        self, name: str, version_dir: Path, version: int, config: mc.ModelConfig, labels: Labels
    ) -> ModelVersion:
        from tensorgate.generation.build import build_generation

        runner = build_generation(name, version_dir, config, self.settings.kv_cache_bytes)
        spec = ModelSpec.from_config(config, labels)
        metrics = self.metrics.model(name, version) if self.metrics is not None else None
        return ModelVersion(name, version, config, spec, runner, self._stats(), metrics)

    def _instances(
        self,
        name: str,
        model_dir: Path,
        version: int,
        config: mc.ModelConfig,
        states: list[StateTensor],
    ) -> tuple[list[Backend], Callable[[int], Backend]]:
        """The config's instances, and how to create instance i again (a replacement)."""
        version_dir = model_dir / str(version)
        factory = resolve_backend(config, version_dir)
        _check_graph_level(config, factory.name)
        devices = instance_devices(config)
        if factory.name != "python" and MODEL_DEVICE in devices:
            raise ModelLoadError(
                "instance_group kind KIND_MODEL lets model code place itself on devices; only "
                f"Python models can, not the {factory.name} backend (use KIND_CPU or KIND_GPU)"
            )
        path = model_file(config, factory, version_dir)
        fill = not self.settings.disable_auto_complete_config
        in_process = execution(config, self.settings.execution) == "process"
        env = model_env(config, model_dir)  # unpacked once for every instance
        if factory.name == "python" and fill:
            auto_complete(config, name, version, path, in_child=in_process, env=env)
            check_supported(config)  # what the model added is held to the same table

        def create(index: int) -> Backend:
            context = InstanceContext(
                name,
                version,
                model_dir,
                path,
                config,
                devices[index],
                self.settings.intra_op_threads,
                index,
                self.calls,
            )
            if in_process:
                return ProcessInstance(context, self.settings.process_nice, env)
            return factory.create(context)

        instances: list[Backend] = []
        try:
            for index in range(len(devices)):
                instance = create(index)
                instances.append(instance)
                if index == 0:
                    signature = instance.signature()
                    check_signature(states, signature)
                    complete_config(
                        config,
                        _client_signature(signature, config),
                        self.settings.default_max_batch_size,
                        fill,
                    )
        except BaseException:
            for instance in instances:
                instance.close()
            raise
        return instances, create

    def _runner(
        self,
        name: str,
        version: int,
        config: mc.ModelConfig,
        instances: list[Backend],
        create: Callable[[int], Backend],
        stats: ModelStats,
        metrics: ModelMetrics | None,
        states: list[StateTensor],
        gates: list[Gate | None] | None,
        ragged: RaggedBatching | None,
    ) -> ModelRunner:
        observer = _execution_observer(stats, metrics)
        gated = gates or ()
        sequences = config.WhichOneof("scheduling_choice") == "sequence_batching"
        if (sequences or config.model_transaction_policy.decoupled) and (
            TIMEOUT_PARAMETER in config.parameters
        ):
            raise ModelLoadError(
                f"parameter {TIMEOUT_PARAMETER} is implemented for models served by the "
                "dynamic batcher only, not for sequence or decoupled models"
            )
        if sequences and config.model_transaction_policy.decoupled and states:
            raise ModelLoadError(
                "sequence_batching.state (implicit state) is not implemented for decoupled "
                "models: their outputs go to the client, not back to the batcher"
            )
        if sequences:
            check_sequence_config(config, instances[0])
            threads = InstanceThreads(f"{name}_{version}", instances, gated)
            return SequenceRunner(
                name, config, threads, self.settings.max_queue_size, observer, states
            )
        if config.model_transaction_policy.decoupled:
            if config.HasField("dynamic_batching"):
                raise ModelLoadError(
                    "dynamic_batching on a decoupled model is not supported: each request "
                    "runs on its own, one generator step at a time"
                )
            threads = InstanceThreads(f"{name}_{version}", instances, gated)
            return DecoupledRunner(name, threads, self.settings.max_queue_size, observer)
        if ragged is not None and getattr(instances[0], "execute_requests", None) is not None:
            raise ModelLoadError(
                "ragged batching hands the model one merged batch; a Triton Python model takes "
                "the batch's requests one by one, each with its own shapes"
            )
        policy = BatchingPolicy.from_config(config, self.settings.max_queue_size)
        pool = InstancePool[Any](f"{name}_{version}", instances, create, gated)
        timeout = model_timeout(config, self.settings.model_timeout)
        placement = execution(config, self.settings.execution, rate_limited=bool(gates))
        return Scheduler(
            name,
            policy,
            pool,
            observer,
            timeout,
            self.settings.max_queue_wait,
            placement if placement in ("inline", "auto") else "thread",
            self.settings.inline_max_us,
            ragged,
        )


def _ragged(config: mc.ModelConfig) -> RaggedBatching | None:
    """The model's ragged batching, where the runner serving it can do it."""
    ragged = RaggedBatching.from_config(config)
    if ragged is None:
        return None
    if config.HasField("sequence_batching") or config.model_transaction_policy.decoupled:
        raise ModelLoadError(
            "ragged batching (allow_ragged_batch, batch_input, batch_output) is implemented for "
            "the dynamic batcher, not for sequence or decoupled models"
        )
    if config.model_warmup:
        raise ModelLoadError("model_warmup is not implemented for models with ragged batching")
    return ragged


def _check_graph_level(config: mc.ModelConfig, backend: str) -> None:
    if config.optimization.HasField("graph") and backend != "onnxruntime":
        raise ModelLoadError(
            "optimization.graph sets onnxruntime's graph optimization level; the "
            f"{backend} backend has none"
        )


def _client_signature(
    signature: ModelSignature | None, config: mc.ModelConfig
) -> ModelSignature | None:
    """The model file's signature as clients see it: less the sequence batcher's control and
    state inputs, which the batcher supplies, and less the state outputs the config's
    `output` list does not name (a client may read a state only where the config lists it)."""
    batching = config.sequence_batching
    supplied = {c.name for c in batching.control_input} | {s.input_name for s in batching.state}
    supplied |= {name for b in config.batch_input for name in b.target_name}
    listed = {o.name for o in config.output}
    hidden = {s.output_name for s in batching.state} - listed
    # Ragged inputs and scattered outputs are 1-D in the model file; clients see their dims.
    flat = {t.name: len(t.dims) for t in config.input if t.allow_ragged_batch}
    output_ranks = {o.name: len(o.dims) for o in config.output}
    for entry in config.batch_output:
        flat.update((n, output_ranks[n]) for n in entry.target_name if n in output_ranks)
    if signature is None or not (supplied or hidden or flat):
        return signature

    def seen(tensor: TensorSignature) -> TensorSignature:
        if tensor.name not in flat:
            return tensor
        return dataclasses.replace(tensor, shape=(-1,) * (flat[tensor.name] + 1))

    inputs = tuple(seen(t) for t in signature.inputs if t.name not in supplied)
    outputs = tuple(seen(t) for t in signature.outputs if t.name not in hidden)
    return ModelSignature(inputs, outputs)


def _execution_observer(stats: ModelStats, metrics: ModelMetrics | None) -> ExecutionObserver:
    """Each executed batch goes to the statistics and, when on, to the metrics."""
    if metrics is None:
        return stats.record_execution
    record_stats, record_metrics = stats.record_execution, metrics.execution

    def both(rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        record_stats(rows, input_ns, infer_ns, output_ns)
        record_metrics(rows, input_ns, infer_ns, output_ns)

    return both
