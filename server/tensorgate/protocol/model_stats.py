"""Encode per-model statistics as Triton's ModelStatistics message."""

from __future__ import annotations

from tensorgate_protos import grpc_service_pb2 as pb

from tensorgate.dataplane.statistics import Duration, ModelStats


def _duration(target: pb.StatisticDuration, source: Duration) -> None:
    target.count = source.count
    target.ns = source.ns


# The durations of ModelStatistics.inference_stats, each a count and nanoseconds.
INFERENCE_DURATIONS = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)


def encode_model_statistics(
    target: pb.ModelStatistics, name: str, version: int, stats: ModelStats
) -> None:
    """Fill one ModelStatistics entry."""
    target.name = name
    target.version = str(version)
    target.last_inference = stats.last_inference_ms
    target.inference_count = stats.inference_count
    target.execution_count = stats.execution_count
    inference = target.inference_stats
    for field in INFERENCE_DURATIONS:
        _duration(getattr(inference, field), getattr(stats, field))
    for size in sorted(stats.batches):
        batch = stats.batches[size]
        entry = target.batch_stats.add(batch_size=size)
        _duration(entry.compute_input, batch.compute_input)
        _duration(entry.compute_infer, batch.compute_infer)
        _duration(entry.compute_output, batch.compute_output)
