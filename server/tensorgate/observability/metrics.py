"""Prometheus metrics: cheap recorders on the request path, read by a collector at scrape time.

The request path only increments plain ints and bisects into bucket arrays, on the event loop
(the one thread that touches them, so no locks). prometheus_client's own metric objects would
take a lock and a label lookup per observation; here the cost moves to the scrape, which a
collector does once every few seconds from the same counters.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# Seconds; resolves 100 µs (a small model on a warm instance) up to 10 s (a stuck queue).
LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
# Rows per execution.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
COMPUTE_PHASES = ("input", "infer", "output")
MODEL_STATES = ("READY", "LOADING", "UNLOADING", "UNAVAILABLE")


class Histogram:
    """Buckets for values recorded in integer units (ns or rows), exported in `scale` units."""

    __slots__ = ("_bounds", "buckets_le", "counts", "scale", "total")

    def __init__(self, bounds: Iterable[float], scale: float = 1.0) -> None:
        self.buckets_le = tuple(bounds)
        self.scale = scale
        self._bounds = [round(b / scale) for b in self.buckets_le]
        self.counts = [0] * (len(self._bounds) + 1)  # the last slot is +Inf
        self.total = 0

    def observe(self, value: int) -> None:
        # bisect_left: the first bound >= value, which is Prometheus' `le` (less or equal).
        self.counts[bisect_left(self._bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        running, out = 0, []  # type: tuple[int, list[tuple[str, float]]]
        for le, count in zip((*map(_le, self.buckets_le), "+Inf"), self.counts, strict=True):
            running += count
            out.append((le, running))
        return out


def _le(bound: float) -> str:
    return repr(float(bound))


def latency_histogram() -> Histogram:
    """A histogram of durations in nanoseconds over the latency buckets."""
    return Histogram(LATENCY_BUCKETS_S, scale=1e-9)


class ModelMetrics:
    """What one model version recorded since the process started (survives reloads)."""

    __slots__ = ("compute", "in_flight", "queue", "request", "requests", "rows")

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}  # (protocol, outcome) -> count
        self.request = latency_histogram()
        self.queue = latency_histogram()
        self.compute = {phase: latency_histogram() for phase in COMPUTE_PHASES}
        self.rows = Histogram(BATCH_BUCKETS)
        self.in_flight = 0

    def request_finished(self, protocol: str, outcome: str, elapsed_ns: int, queue_ns: int) -> None:
        key = (protocol, outcome)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.request.observe(elapsed_ns)
        if queue_ns >= 0:
            self.queue.observe(queue_ns)

    def execution(self, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        compute = self.compute
        compute["input"].observe(input_ns)
        compute["infer"].observe(infer_ns)
        compute["output"].observe(output_ns)
        self.rows.observe(rows)


class MetricsStore:
    """Every model version's metrics, plus requests that named no loaded model."""

    def __init__(self) -> None:
        self.models: dict[tuple[str, int], ModelMetrics] = {}
        # Models load in worker threads; the lock keeps a scrape from seeing the dict grow.
        self._lock = threading.Lock()
        # Requests for unknown or unavailable models; their names are not labels, so a client
        # cannot grow the series count by inventing names.
        self.unresolved: dict[tuple[str, str], int] = {}

    def model(self, name: str, version: int) -> ModelMetrics:
        with self._lock:
            return self.models.setdefault((name, version), ModelMetrics())

    def snapshot(self) -> list[tuple[tuple[str, int], ModelMetrics]]:
        with self._lock:
            return sorted(self.models.items(), key=lambda item: item[0])

    def unresolved_request(self, protocol: str, outcome: str) -> None:
        key = (protocol, outcome)
        self.unresolved[key] = self.unresolved.get(key, 0) + 1


ModelState = tuple[str, str, float, dict[str, int]]  # name, state, load seconds, loads by outcome
# name, version, queued requests, executing batches, instances abandoned since the load
LiveVersion = tuple[str, int, int, int, int]


class TensorgateCollector(Collector):
    """Turns the recorders and the live scheduler state into metric families at scrape time."""

    def __init__(
        self,
        store: MetricsStore,
        model_states: Callable[[], list[ModelState]],
        live_versions: Callable[[], list[LiveVersion]],
        ready: Callable[[], bool],
        version: str,
    ) -> None:
        self.store = store
        self.model_states = model_states
        self.live_versions = live_versions
        self.ready = ready
        self.version = version

    def collect(self) -> Iterator[Metric]:
        yield from self._requests()
        yield from self._histograms()
        yield from self._live()
        yield from self._models()
        info = GaugeMetricFamily(
            "tensorgate_build_info", "Always 1; the server version.", labels=["version"]
        )
        info.add_metric([self.version], 1)
        yield info
        yield GaugeMetricFamily(
            "tensorgate_server_ready",
            "1 when the server is ready for inference (v2 /ready and gRPC health agree).",
            value=1 if self.ready() else 0,
        )

    def _requests(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "tensorgate_requests",
            "Inference requests by outcome (success or the error kind) and protocol; model and "
            "version are empty for requests that named no loaded model.",
            labels=["model", "version", "protocol", "outcome"],
        )
        for (name, version), metrics in self.store.snapshot():
            for (protocol, outcome), count in sorted(metrics.requests.items()):
                family.add_metric([name, str(version), protocol, outcome], count)
        for (protocol, outcome), count in sorted(self.store.unresolved.items()):
            family.add_metric(["", "", protocol, outcome], count)
        yield family

    def _histograms(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        request = HistogramMetricFamily(
            "tensorgate_request_duration_seconds",
            "Time from the data plane receiving a request to its outputs being ready.",
            labels=labels,
        )
        queue = HistogramMetricFamily(
            "tensorgate_queue_duration_seconds",
            "Time a request waited in the model's queue before its batch started.",
            labels=labels,
        )
        compute = HistogramMetricFamily(
            "tensorgate_compute_duration_seconds",
            "Time per executed batch, by phase: input (merge rows), infer (the backend), "
            "output (split and hand back).",
            labels=[*labels, "phase"],
        )
        rows = HistogramMetricFamily(
            "tensorgate_batch_size",
            "Rows (of the batch dimension) per executed batch.",
            labels=labels,
        )
        for (name, version), m in self.store.snapshot():
            key = [name, str(version)]
            _add(request, key, m.request)
            _add(queue, key, m.queue)
            for phase, histogram in m.compute.items():
                _add(compute, [*key, phase], histogram)
            _add(rows, key, m.rows)
        yield from (request, queue, compute, rows)

    def _live(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        queued = GaugeMetricFamily(
            "tensorgate_queue_depth", "Requests waiting in the model's queue now.", labels=labels
        )
        executing = GaugeMetricFamily(
            "tensorgate_executing_batches", "Batches executing now.", labels=labels
        )
        in_flight = GaugeMetricFamily(
            "tensorgate_inflight_requests",
            "Requests inside the data plane now (queued, executing or being answered).",
            labels=labels,
        )
        abandoned = CounterMetricFamily(
            "tensorgate_instances_abandoned",
            "Model instances given up on since the load: a batch ran past the model's "
            "timeout (each is replaced by a new instance).",
            labels=labels,
        )
        for name, version, depth, running, given_up in self.live_versions():
            key = [name, str(version)]
            queued.add_metric(key, depth)
            executing.add_metric(key, running)
            abandoned.add_metric(key, given_up)
            metrics = self.store.models.get((name, version))
            in_flight.add_metric(key, metrics.in_flight if metrics else 0)
        yield from (queued, executing, in_flight, abandoned)

    def _models(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "tensorgate_model_state",
            "1 for the model's current state, 0 for the others.",
            labels=["model", "state"],
        )
        load = GaugeMetricFamily(
            "tensorgate_model_load_duration_seconds",
            "How long the model's last load took.",
            labels=["model"],
        )
        loads = CounterMetricFamily(
            "tensorgate_model_loads", "Model loads by outcome.", labels=["model", "outcome"]
        )
        for name, current, seconds, outcomes in self.model_states():
            for candidate in MODEL_STATES:
                state.add_metric([name, candidate], 1 if current == candidate else 0)
            if seconds:
                load.add_metric([name], seconds)
            for outcome, count in sorted(outcomes.items()):
                loads.add_metric([name, outcome], count)
        yield from (state, load, loads)


def _add(family: HistogramMetricFamily, labels: list[str], histogram: Histogram) -> None:
    family.add_metric(labels, histogram.cumulative(), histogram.total * histogram.scale)


class GpuCollector(Collector):
    """Memory and utilization per GPU through NVML; registered only where NVML answers."""

    def __init__(self, nvml: Any, handles: list[Any]) -> None:
        self.nvml = nvml
        self.handles = handles

    @classmethod
    def create(cls) -> GpuCollector | None:
        try:
            import pynvml  # type: ignore[import-untyped]  # nvidia-ml-py, an optional extra

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except Exception as exc:  # no module, no driver or no device: simply no GPU metrics
            log.debug("GPU metrics off: %s", exc)
            return None
        if not count:
            return None
        return cls(pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)])

    def collect(self) -> Iterator[Metric]:
        labels = ["gpu", "uuid"]
        used = GaugeMetricFamily(
            "tensorgate_gpu_memory_used_bytes", "GPU memory used.", labels=labels
        )
        total = GaugeMetricFamily(
            "tensorgate_gpu_memory_total_bytes", "GPU memory installed.", labels=labels
        )
        util = GaugeMetricFamily(
            "tensorgate_gpu_utilization_ratio",
            "Fraction of the last sample period in which a kernel ran (NVML).",
            labels=labels,
        )
        # Triton's names for the same readings and its power gauges, labelled by UUID.
        triton = {
            name: GaugeMetricFamily(name, text, labels=["gpu_uuid"])
            for name, text in (
                ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)"),
                ("nv_gpu_memory_total_bytes", "GPU total memory, in bytes"),
                ("nv_gpu_memory_used_bytes", "GPU used memory, in bytes"),
                ("nv_gpu_power_usage", "GPU power usage in watts"),
                ("nv_gpu_power_limit", "GPU power management limit in watts"),
                ("nv_energy_consumption", "GPU energy used in joules since its driver loaded"),
            )
        }
        nvml = self.nvml
        for index, handle in enumerate(self.handles):
            uuid = str(nvml.nvmlDeviceGetUUID(handle))
            key = [str(index), uuid]
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            utilization = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100
            used.add_metric(key, memory.used)
            total.add_metric(key, memory.total)
            util.add_metric(key, utilization)
            readings = {
                "nv_gpu_utilization": utilization,
                "nv_gpu_memory_total_bytes": memory.total,
                "nv_gpu_memory_used_bytes": memory.used,
            }
            for name, read, scale in (
                ("nv_gpu_power_usage", nvml.nvmlDeviceGetPowerUsage, 1e-3),  # mW
                ("nv_gpu_power_limit", nvml.nvmlDeviceGetEnforcedPowerLimit, 1e-3),
                ("nv_energy_consumption", nvml.nvmlDeviceGetTotalEnergyConsumption, 1e-3),  # mJ
            ):
                try:
                    readings[name] = read(handle) * scale
                except Exception:  # not every GPU reports power (NVML: not supported)
                    continue
            for name, value in readings.items():
                triton[name].add_metric([uuid], value)
        yield from (used, total, util, *triton.values())


def build_registry(
    collector: TensorgateCollector, *more: Collector, gpu: bool = True
) -> CollectorRegistry:
    """Our collectors plus process CPU/RSS, Python GC and platform, and GPUs where present
    unless `gpu` is off."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    for extra in more:
        registry.register(extra)
    for standard in (PROCESS_COLLECTOR, GC_COLLECTOR, PLATFORM_COLLECTOR):
        registry.register(standard)
    gpus = GpuCollector.create() if gpu else None
    if gpus is not None:
        registry.register(gpus)
    return registry
