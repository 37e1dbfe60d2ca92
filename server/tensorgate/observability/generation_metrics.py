"""Prometheus families of the generation models: sequences, KV blocks, prefix cache hits,
tokens, time to first token and between tokens.

Read at scrape time from each generation runner's snapshot; the engine thread only bumps
integers. Nothing here imports torch: runners are found by the snapshot method they offer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# (model, version, snapshot) of every loaded generation model.
Snapshots = Callable[[], list[tuple[str, int, Any]]]


class GenerationCollector(Collector):
    """The generation engine's state, per model version."""

    def __init__(self, snapshots: Snapshots) -> None:
        self.snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        sequences = GaugeMetricFamily(
            "tensorgate_generation_sequences",
            "Sequences in the engine now, by state (running, waiting).",
            labels=[*labels, "state"],
        )
        blocks = GaugeMetricFamily(
            "tensorgate_generation_kv_blocks",
            "KV cache blocks now, by state (used, free).",
            labels=[*labels, "state"],
        )
        preemptions = CounterMetricFamily(
            "tensorgate_generation_preemptions",
            "Sequences preempted for lack of KV blocks (recomputed later).",
            labels=labels,
        )
        tokens = CounterMetricFamily(
            "tensorgate_generation_tokens",
            "Tokens by kind: prompt (in) and generated (out).",
            labels=[*labels, "kind"],
        )
        prefix = CounterMetricFamily(
            "tensorgate_generation_prefix_cache_tokens",
            "Prompt tokens looked up in the prefix cache (queried) and found (hit).",
            labels=[*labels, "outcome"],
        )
        ratio = GaugeMetricFamily(
            "tensorgate_generation_prefix_cache_hit_ratio",
            "Share of looked-up prompt tokens found in the prefix cache.",
            labels=labels,
        )
        first = HistogramMetricFamily(
            "tensorgate_generation_time_to_first_token_seconds",
            "From a request's arrival at the engine to its first token.",
            labels=labels,
        )
        between = HistogramMetricFamily(
            "tensorgate_generation_inter_token_seconds",
            "Between consecutive tokens of a sequence.",
            labels=labels,
        )
        for name, version, snap in self.snapshots():
            key = [name, str(version)]
            sequences.add_metric([*key, "running"], snap.running)
            sequences.add_metric([*key, "waiting"], snap.waiting)
            blocks.add_metric([*key, "used"], snap.blocks_used)
            blocks.add_metric([*key, "free"], snap.blocks_free)
            preemptions.add_metric(key, snap.preemptions)
            tokens.add_metric([*key, "prompt"], snap.stats.prompt_tokens)
            tokens.add_metric([*key, "generated"], snap.stats.generated_tokens)
            prefix.add_metric([*key, "queried"], snap.prefix_queried)
            prefix.add_metric([*key, "hit"], snap.prefix_hit)
            ratio.add_metric(
                key, snap.prefix_hit / snap.prefix_queried if snap.prefix_queried else 0
            )
            for family, histogram in (
                (first, snap.stats.first_token),
                (between, snap.stats.inter_token),
            ):
                family.add_metric(
                    key, histogram.cumulative(), sum_value=histogram.total * histogram.scale
                )
        yield from (sequences, blocks, preemptions, tokens, prefix, ratio, first, between)
