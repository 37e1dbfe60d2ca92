"""Per-model-version inference statistics in the shape of Triton's ModelStatistics."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

# A latency window's reach and size: Triton's summaries cover the last minute.
WINDOW_S = 60.0
WINDOW_SAMPLES = 65536


@dataclass(slots=True)
class Duration:
    """A count and a total in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class BatchStats:
    """Time spent in executions of one batch size."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


class LatencyWindow:
    """The latencies of the requests that completed in the last minute (at most
    WINDOW_SAMPLES of them), for quantiles read at scrape time."""

    __slots__ = ("samples",)

    def __init__(self) -> None:
        # (monotonic ns, request, queue, compute input, compute infer, compute output ns)
        self.samples: deque[tuple[int, int, int, int, int, int]] = deque(maxlen=WINDOW_SAMPLES)

    def quantiles(self, wanted: tuple[float, ...]) -> list[list[float]]:
        """For each stage (request, queue, compute input, infer, output), the `wanted`
        quantiles in nanoseconds over the window (nan with no sample), nearest-rank."""
        horizon = time.monotonic_ns() - int(WINDOW_S * 1e9)
        samples = self.samples
        while samples and samples[0][0] < horizon:
            samples.popleft()
        stages: list[list[float]] = []
        for stage in range(1, 6):
            values = sorted(sample[stage] for sample in samples)
            if not values:
                stages.append([float("nan")] * len(wanted))
                continue
            count = len(values)
            stages.append([float(values[max(0, math.ceil(q * count) - 1)]) for q in wanted])
        return stages


@dataclass(slots=True)
class ModelStats:
    """Counters updated on the event loop only, so they need no lock."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)  # lookups that answered
    cache_miss: Duration = field(default_factory=Duration)  # lookup and insert, when not
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchStats] = field(default_factory=dict)
    # Recent requests' latencies, kept only for Triton's summaries (--metrics-config).
    window: LatencyWindow | None = None

    def record_success(
        self,
        request_ns: int,
        queue_ns: int,
        compute_input_ns: int,
        compute_infer_ns: int,
        compute_output_ns: int,
    ) -> None:
        """One request that completed; compute times are those of the batch it rode in."""
        self.success.add(request_ns)
        self.queue.add(queue_ns)
        self.compute_input.add(compute_input_ns)
        self.compute_infer.add(compute_infer_ns)
        self.compute_output.add(compute_output_ns)
        if self.window is not None:
            self.window.samples.append(
                (
                    time.monotonic_ns(),
                    request_ns,
                    queue_ns,
                    compute_input_ns,
                    compute_infer_ns,
                    compute_output_ns,
                )
            )

    def record_execution(
        self, rows: int, compute_input_ns: int, compute_infer_ns: int, compute_output_ns: int
    ) -> None:
        """One batch of `rows` rows that the model executed."""
        self.inference_count += rows
        self.execution_count += 1
        self.last_inference_ms = time.time_ns() // 1_000_000
        batch = self.batches.get(rows)
        if batch is None:
            batch = self.batches[rows] = BatchStats()
        batch.compute_input.add(compute_input_ns)
        batch.compute_infer.add(compute_infer_ns)
        batch.compute_output.add(compute_output_ns)

    def record_failure(self, request_ns: int) -> None:
        """One request that failed after reaching the model."""
        self.fail.add(request_ns)
        self.last_inference_ms = time.time_ns() // 1_000_000
