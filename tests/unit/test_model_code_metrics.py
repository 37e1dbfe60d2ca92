"""Metrics model code defines: families, series by labels, and their Prometheus exposition."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from tensorgate.errors import InvalidArgument
from tensorgate.observability.model_code_metrics import (
    COUNTER,
    GAUGE,
    HISTOGRAM,
    ModelCodeMetrics,
)


def _exposition(metrics: ModelCodeMetrics) -> str:
    registry = CollectorRegistry()
    registry.register(metrics)
    return generate_latest(registry).decode()


def test_a_family_made_again_continues_its_series_and_counters_get_one_total() -> None:
    metrics = ModelCodeMetrics()
    for _ in range(2):  # a model loaded twice makes its families twice
        metrics.apply("family", ("hits_total", "hits", COUNTER))
        metrics.apply("metric", ("hits_total", (("model", "a"),), None))
        metrics.apply("increment", ("hits_total", (("model", "a"),), 2.0))
    assert metrics.apply("value", ("hits_total", (("model", "a"),))) == 4.0
    text = _exposition(metrics)
    assert "# TYPE hits_total counter" in text
    assert 'hits_total{model="a"} 4.0' in text


@pytest.mark.parametrize(
    ("operation", "arguments", "message"),
    [
        ("family", ("g", "d", COUNTER), "exists already as a gauge"),
        ("family", ("bad-name", "d", GAUGE), "not a Prometheus name"),
        ("family", ("k", "d", 7), "not COUNTER, GAUGE or HISTOGRAM"),
        ("metric", ("h", (), None), "needs its buckets"),
        ("metric", ("h", (), [2.0, 1.0]), "increasing order"),
        ("metric", ("g", (), [1.0]), "buckets are for histograms"),
        ("metric", ("g", (("__x", "1"),), None), "not a Prometheus label"),
        ("metric", ("nope", (), None), "'nope' does not exist"),
        ("set", ("g", (("m", "other"),), 1.0), "has no metric labelled"),
        ("observe", ("g", (), 1.0), "observe is not supported on a gauge"),
        ("value", ("h", (), None), "no single value"),
    ],
)
def test_misuse_is_refused_with_the_reason(
    operation: str, arguments: tuple[object, ...], message: str
) -> None:
    metrics = ModelCodeMetrics()
    metrics.apply("family", ("g", "gauge", GAUGE))
    metrics.apply("metric", ("g", (), None))
    metrics.apply("family", ("h", "histogram", HISTOGRAM))
    with pytest.raises(InvalidArgument, match=message):
        if operation == "value" and arguments[0] == "h":
            metrics.apply("metric", ("h", (), [1.0]))
            metrics.apply("value", ("h", ()))
        else:
            metrics.apply(operation, arguments)
