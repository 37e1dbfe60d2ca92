"""Metrics that model code defines (Triton's `pb_utils.MetricFamily`), served on /metrics.

A family is a name, a description and a kind (counter, gauge or histogram); its metrics are
the family's series, one per label set. Model code addresses them by family name and labels
only, never by object, so the same operations arrive from an instance thread (directly) and
from a process instance (over its channel): `apply(operation, arguments)`.

Values outlive the model objects that made them: a reloaded model that creates the same
family again continues its series, as a Prometheus counter should. Counters are exposed with
Prometheus's `_total` suffix, which prometheus_client adds to every counter.
"""

from __future__ import annotations

import bisect
import math
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from tensorgate.errors import InvalidArgument

COUNTER, GAUGE, HISTOGRAM = 0, 1, 2
KINDS = {COUNTER: "counter", GAUGE: "gauge", HISTOGRAM: "histogram"}
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Labels = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class _Series:
    value: float = 0.0  # a counter's or gauge's value; a histogram's sum
    buckets: tuple[float, ...] = ()  # a histogram's upper bounds
    counts: list[int] = field(default_factory=list)  # observations per bucket, and above all
    count: int = 0


@dataclass(slots=True)
class _Family:
    description: str
    kind: int
    series: dict[Labels, _Series] = field(default_factory=dict)


class ModelCodeMetrics(Collector):
    """The families model code created, and a Prometheus collector of them. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, _Family] = {}

    def apply(self, operation: str, arguments: Sequence[Any]) -> Any:
        """One operation: family, metric, increment, set, observe or value."""
        with self._lock:
            if operation == "family":
                return self._family(*arguments)
            if operation == "metric":
                return self._metric(*arguments)
            name, labels, *rest = arguments
            family = self._families.get(name)
            series = family.series.get(labels) if family is not None else None
            if family is None or series is None:
                raise InvalidArgument(f"metric family '{name}' has no metric labelled {labels}")
            if operation == "value":
                if family.kind == HISTOGRAM:
                    raise InvalidArgument("a histogram metric has no single value")
                return series.value
            (value,) = rest
            _check_update(operation, family.kind, value)
            if operation == "observe":
                series.counts[bisect.bisect_left(series.buckets, value)] += 1
                series.count += 1
                series.value += value
            elif operation == "increment":
                series.value += value
            else:
                series.value = value
            return None

    def _family(self, name: str, description: str, kind: int) -> None:
        if not _NAME.fullmatch(name):
            raise InvalidArgument(f"metric family name {name!r} is not a Prometheus name")
        if kind not in KINDS:
            raise InvalidArgument(f"metric family kind {kind!r} is not COUNTER, GAUGE or HISTOGRAM")
        known = self._families.get(name)
        if known is None:
            self._families[name] = _Family(description, kind)
        elif known.kind != kind:
            raise InvalidArgument(f"metric family '{name}' exists already as a {KINDS[known.kind]}")

    def _metric(self, name: str, labels: Labels, buckets: Sequence[float] | None) -> None:
        family = self._families.get(name)
        if family is None:
            raise InvalidArgument(f"metric family '{name}' does not exist")
        for key, value in labels:
            if not _LABEL.fullmatch(key) or key.startswith("__"):
                raise InvalidArgument(f"metric label name {key!r} is not a Prometheus label")
            if not isinstance(value, str):
                raise InvalidArgument(f"metric label '{key}' must be a string")
        bounds: tuple[float, ...] = ()
        if family.kind == HISTOGRAM:
            if buckets is None:
                raise InvalidArgument("a histogram metric needs its buckets")
            bounds = tuple(float(b) for b in buckets)
            if list(bounds) != sorted(set(bounds)):
                raise InvalidArgument("histogram buckets must be in increasing order")
        elif buckets is not None:
            raise InvalidArgument(f"buckets are for histograms, not a {KINDS[family.kind]}")
        known = family.series.get(labels)
        if known is None:
            family.series[labels] = _Series(buckets=bounds, counts=[0] * (len(bounds) + 1))
        elif known.buckets != bounds:
            raise InvalidArgument(f"metric {labels} of '{name}' exists with other buckets")

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # a snapshot: model threads keep updating while it is written out
            families = [
                (name, f.description, f.kind, {k: _copy(v) for k, v in f.series.items()})
                for name, f in self._families.items()
            ]
        for name, description, kind, series in families:
            counted = kind == COUNTER and name.endswith("_total")  # the suffix comes once
            metric = Metric(name[:-6] if counted else name, description, KINDS[kind])
            for labels, (value, bounds, counts, count) in series.items():
                tags = dict(labels)
                if kind == COUNTER:
                    metric.add_sample(metric.name + "_total", tags, value)
                elif kind == GAUGE:
                    metric.add_sample(name, tags, value)
                else:
                    running = 0
                    for bound, observed in zip([*bounds, math.inf], counts, strict=True):
                        running += observed
                        le = "+Inf" if bound == math.inf else str(bound)
                        metric.add_sample(name + "_bucket", {**tags, "le": le}, running)
                    metric.add_sample(name + "_count", tags, count)
                    metric.add_sample(name + "_sum", tags, value)
            yield metric


def _copy(series: _Series) -> tuple[float, tuple[float, ...], list[int], int]:
    return series.value, series.buckets, list(series.counts), series.count


def _check_update(operation: str, kind: int, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(f"a metric's {operation} takes a number, got {type(value).__name__}")
    allowed = {COUNTER: ("increment",), GAUGE: ("increment", "set"), HISTOGRAM: ("observe",)}
    if operation not in allowed[kind]:
        raise InvalidArgument(f"{operation} is not supported on a {KINDS[kind]} metric")
    if kind == COUNTER and value < 0:
        raise InvalidArgument("a counter's increment must not be negative")
