"""Triton's metric families (`nv_inference_*`, `nv_cache_*`, `nv_cpu_*`) beside tensorgate's
own, so dashboards and alerts written for Triton read a tensorgate server unchanged.

The inference counters are read at scrape time from each loaded version's statistics, the
numbers ModelStatistics answers with, so the two always agree; like Triton's, they start
from zero when a model loads and leave the exposition when it unloads. Triton writes its
counters without the `_total` suffix that prometheus_client gives every counter:
`triton_names` takes it off them in the Prometheus text format (OpenMetrics requires it, so
there they keep it). The CPU gauges are the machine's, as Triton reports them: utilization
over the time since the previous scrape, memory from /proc/meminfo.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from tensorgate.dataplane.statistics import ModelStats
    from tensorgate.runners.base import ModelVersion

# Triton's counters: name, help, and how to read it from a version's statistics.
_COUNTERS: tuple[tuple[str, str, Callable[[ModelStats], int]], ...] = (
    (
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        lambda s: s.success.count,
    ),
    (
        "nv_inference_request_failure",
        "Number of failed inference requests, all batch sizes",
        lambda s: s.fail.count,
    ),
    (
        "nv_inference_count",
        "Number of inferences performed (does not include cached requests)",
        lambda s: s.inference_count,
    ),
    (
        "nv_inference_exec_count",
        "Number of model executions performed (does not include cached requests)",
        lambda s: s.execution_count,
    ),
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds (includes cached requests)",
        lambda s: (s.success.ns + s.fail.ns) // 1000,
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds (includes cached requests)",
        lambda s: s.queue.ns // 1000,
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds (does not include cached requests)",
        lambda s: s.compute_input.ns // 1000,
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds (does not include cached requests)",
        lambda s: s.compute_infer.ns // 1000,
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds (does not include "
        "cached requests)",
        lambda s: s.compute_output.ns // 1000,
    ),
)
# Only for models whose responses are cached.
_CACHE_COUNTERS: tuple[tuple[str, str, Callable[[ModelStats], int]], ...] = (
    ("nv_cache_num_hits_per_model", "Number of cache hits per model", lambda s: s.cache_hit.count),
    (
        "nv_cache_num_misses_per_model",
        "Number of cache misses per model",
        lambda s: s.cache_miss.count,
    ),
    (
        "nv_cache_hit_duration_per_model",
        "Total cache hit duration per model, in microseconds",
        lambda s: s.cache_hit.ns // 1000,
    ),
    (
        "nv_cache_miss_duration_per_model",
        "Total cache miss (insert and lookup) duration per model, in microseconds",
        lambda s: s.cache_miss.ns // 1000,
    ),
)
_LABELS = ("model", "version")
_NAMES = re.compile(
    rb"^(# (?:HELP|TYPE) )?("
    + b"|".join(name.encode() for name, _, _ in (*_COUNTERS, *_CACHE_COUNTERS))
    + rb")_total(?=[ {])",
    re.MULTILINE,
)


def triton_names(exposition: bytes) -> bytes:
    """Prometheus text-format output with Triton's counters under Triton's exact names."""
    return _NAMES.sub(rb"\1\2", exposition)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Triton's `--metrics-config KEY=VALUE` settings that tensorgate takes."""

    counter_latencies: bool = True  # the *_duration_us counters
    summary_latencies: bool = False  # the *_summary_us quantiles over the last minute
    quantiles: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99)

    @classmethod
    def parse(cls, items: Sequence[str]) -> MetricsConfig:
        """`counter_latencies=BOOL`, `summary_latencies=BOOL`, `summary_quantiles=Q:E,...`
        (ValueError naming a key or value it cannot take)."""
        values: dict[str, object] = {}
        for item in items:
            key, _, value = item.partition("=")
            if key in ("counter_latencies", "summary_latencies") and value in _BOOLS:
                values[key] = _BOOLS[value]
            elif key == "summary_quantiles" and value:
                values["quantiles"] = _quantiles(value)
            else:
                raise ValueError(
                    f"--metrics-config {item!r}: tensorgate takes counter_latencies=true|false, "
                    "summary_latencies=true|false and summary_quantiles=Q:E,..."
                )
        return cls(**values)  # type: ignore[arg-type]


_BOOLS = {"true": True, "false": False}


def _quantiles(text: str) -> tuple[float, ...]:
    """Triton's `quantile:error` pairs; quantiles here are exact over the window, which meets
    any error bound."""
    try:
        found = tuple(float(pair.split(":", 1)[0]) for pair in text.split(","))
    except ValueError:
        found = ()
    if not found or not all(0.0 <= q <= 1.0 for q in found):
        raise ValueError(
            f"--metrics-config summary_quantiles={text}: expected Q:E,... with Q in 0-1"
        )
    return found


# Triton's summaries, in the order LatencyWindow.quantiles answers the stages.
_SUMMARIES = (
    ("nv_inference_request_summary_us", "Summary of inference request duration in microseconds"),
    ("nv_inference_queue_summary_us", "Summary of inference queuing duration in microseconds"),
    ("nv_inference_compute_input_summary_us", "Summary of compute input duration in microseconds"),
    (
        "nv_inference_compute_infer_summary_us",
        "Summary of compute inference duration in microseconds",
    ),
    (
        "nv_inference_compute_output_summary_us",
        "Summary of compute output duration in microseconds",
    ),
)
# Each summary's count and sum, from the cumulative statistics.
_SUMMARY_TOTALS: tuple[Callable[[ModelStats], tuple[int, int]], ...] = (
    lambda s: (s.success.count, s.success.ns),
    lambda s: (s.queue.count, s.queue.ns),
    lambda s: (s.compute_input.count, s.compute_input.ns),
    lambda s: (s.compute_infer.count, s.compute_infer.ns),
    lambda s: (s.compute_output.count, s.compute_output.ns),
)


class TritonCollector(Collector):
    """Triton's per-model inference metrics and the machine's CPU gauges."""

    def __init__(
        self,
        loaded: Callable[[], list[ModelVersion]],
        cpu: CpuSampler | None = None,
        config: MetricsConfig = MetricsConfig(),
    ) -> None:
        self.loaded = loaded
        self.cpu = cpu
        self.config = config

    def collect(self) -> Iterator[Metric]:
        models = self.loaded()
        for name, documentation, read in _COUNTERS:
            if name.endswith("_duration_us") and not self.config.counter_latencies:
                continue
            yield _counter(name, documentation, [(m, read(m.stats)) for m in models])
        if self.config.summary_latencies:
            yield from self._summaries([m for m in models if m.stats.window is not None])
        cached = [m for m in models if m.cached]
        for name, documentation, read in _CACHE_COUNTERS:
            yield _counter(name, documentation, [(m, read(m.stats)) for m in cached])
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model.",
            labels=_LABELS,
        )
        for model in models:
            pending.add_metric([model.name, str(model.version)], model.runner.status().queued)
        yield pending
        if self.cpu is not None:
            yield from self.cpu.collect()

    def _summaries(self, models: list[ModelVersion]) -> Iterator[Metric]:
        wanted = self.config.quantiles
        families = [Metric(name, documentation, "summary") for name, documentation in _SUMMARIES]
        for model in models:
            assert model.stats.window is not None
            labels = {"model": model.name, "version": str(model.version)}
            stages = model.stats.window.quantiles(wanted)
            for family, values, totals in zip(families, stages, _SUMMARY_TOTALS, strict=True):
                for quantile, value in zip(wanted, values, strict=True):
                    us = value / 1000 if not math.isnan(value) else value
                    family.add_sample(family.name, {**labels, "quantile": str(quantile)}, us)
                count, ns = totals(model.stats)
                family.add_sample(family.name + "_count", labels, count)
                family.add_sample(family.name + "_sum", labels, ns / 1000)
        yield from families


def _counter(name: str, documentation: str, values: list[tuple[ModelVersion, int]]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=_LABELS)
    for model, value in values:
        family.add_metric([model.name, str(model.version)], value)
    return family


class CpuSampler:
    """The machine's CPU utilization and memory, from /proc: utilization over the time
    since the previous scrape, or, with `interval_s` (Triton's --metrics-interval-ms), over
    the last interval, sampled by a thread of its own."""

    def __init__(self, proc: Path = Path("/proc"), interval_s: float = 0.0) -> None:
        self.proc = proc
        self._last = self._times()
        self._utilization = 0.0
        self.interval_s = interval_s
        if interval_s > 0:
            threading.Thread(target=self._sample, name="tg-cpu-sampler", daemon=True).start()

    def _sample(self) -> None:
        while True:
            time.sleep(self.interval_s)
            self._tick()

    def _tick(self) -> None:
        """Utilization since the last tick (a tick within one clock tick keeps the figure)."""
        now = self._times()
        if now is not None and self._last is not None:
            busy, total = now[0] - self._last[0], now[1] - self._last[1]
            if total > 0:
                self._last, self._utilization = now, busy / total

    def _times(self) -> tuple[int, int] | None:
        """(busy, total) jiffies of every CPU since boot; None where /proc has no stat."""
        try:
            fields = (self.proc / "stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return None
        values = [int(v) for v in fields[:8]]  # guest time is counted in user time already
        idle = values[3] + values[4]  # idle and iowait
        return sum(values) - idle, sum(values)

    def _memory(self) -> tuple[int, int] | None:
        """(total, used) bytes: used is what is not available, as `free` counts it."""
        try:
            lines = (self.proc / "meminfo").read_text().splitlines()
        except OSError:
            return None
        kib = {line.split(":")[0]: int(line.split()[1]) for line in lines if ":" in line}
        if "MemTotal" not in kib or "MemAvailable" not in kib:
            return None
        return kib["MemTotal"] * 1024, (kib["MemTotal"] - kib["MemAvailable"]) * 1024

    def collect(self) -> Iterator[Metric]:
        if not self.interval_s:
            self._tick()
        if self._last is not None:
            yield GaugeMetricFamily(
                "nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", value=self._utilization
            )
        memory = self._memory()
        if memory is not None:
            total_bytes, used_bytes = memory
            yield GaugeMetricFamily(
                "nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", value=total_bytes
            )
            yield GaugeMetricFamily(
                "nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", value=used_bytes
            )
