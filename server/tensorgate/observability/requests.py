"""What the data plane records when an inference request ends: metrics and the access log.

Successful requests are access-logged at a sampled rate (`--access-log-rate`); failed ones
always, since those are the lines an operator goes looking for.
"""

from __future__ import annotations

import random

from tensorgate.observability.logs import access_log
from tensorgate.observability.metrics import MetricsStore, ModelMetrics

SUCCESS = "success"


class InferObserver:
    """Counts, times and (sampled) logs each inference request at its end."""

    def __init__(self, metrics: MetricsStore | None, access_log_rate: float) -> None:
        self.metrics = metrics
        self.access_log_rate = access_log_rate

    def finished(
        self,
        model_metrics: ModelMetrics | None,
        protocol: str,
        model: str,
        version: str,
        request_id: str,
        elapsed_ns: int,
        queue_ns: int = -1,
        error: BaseException | None = None,
    ) -> None:
        """Record one request; `model_metrics` is None when it named no loaded model."""
        outcome = SUCCESS if error is None else _outcome(error)
        if model_metrics is not None:
            model_metrics.request_finished(protocol, outcome, elapsed_ns, queue_ns)
        elif self.metrics is not None:
            self.metrics.unresolved_request(protocol, outcome)
        rate = self.access_log_rate
        if error is None and (rate <= 0.0 or (rate < 1.0 and random.random() >= rate)):
            return
        fields: dict[str, object] = {
            "protocol": protocol,
            "model": model,
            "version": version,
            "outcome": outcome,
            "ms": round(elapsed_ns / 1e6, 3),
        }
        if request_id:
            fields["id"] = request_id
        if queue_ns >= 0:
            fields["queue_ms"] = round(queue_ns / 1e6, 3)
        if error is None:
            access_log.logger.info("infer", **fields)
        else:
            fields["error"] = getattr(error, "message", None) or type(error).__name__
            access_log.logger.warning("infer failed", **fields)


def _outcome(error: BaseException) -> str:
    kind = getattr(error, "kind", None)
    if kind is not None:
        return str(kind.grpc_status_name).lower()
    if type(error).__name__ == "CancelledError":
        return "cancelled"
    return "internal"
