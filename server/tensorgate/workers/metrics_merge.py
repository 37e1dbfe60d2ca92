"""Every worker's Prometheus series as one exposition: what the supervisor's /metrics serves.

Counters, histograms and summaries' counts and sums add up across workers, so `rate()` is
right whichever worker served a request. A gauge of one worker is not meaningful summed (a
model's state is 1 in every worker, and process memory is per process), nor is a quantile:
gauges and summary quantiles keep a `worker` label.
`_created` samples (start times) are dropped: their sum means nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from tensorgate.observability.triton_metrics import triton_names

_SUMMED = {"counter", "histogram", "summary", "gaugehistogram"}


def merge(expositions: Iterable[tuple[int, str]]) -> list[Metric]:
    """(worker index, exposition text) pairs, as merged metric families."""
    families: dict[str, Metric] = {}
    totals: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for index, text in expositions:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                totals[family.name] = {}
            summed = family.type in _SUMMED
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                if summed and "quantile" not in sample.labels:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    bucket = totals[family.name]
                    bucket[key] = bucket.get(key, 0.0) + sample.value
                else:
                    labels = {**sample.labels, "worker": str(index)}
                    merged.add_sample(sample.name, labels, sample.value)
    for name, bucket in totals.items():
        for (sample_name, pairs), value in bucket.items():
            families[name].add_sample(sample_name, dict(pairs), value)
    return list(families.values())


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics


def render(metrics: list[Metric]) -> bytes:
    """The families in Prometheus text format 0.0.4."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(metrics))
    return triton_names(generate_latest(registry))
