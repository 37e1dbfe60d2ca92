"""What the data plane records when an inference request ends: metrics and the access log.

Successful requests are access-logged at a sampled rate (`--access-log-rate`); failed ones
always, since those are the lines an operator goes looking for.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from tensorgate.observability.logs import access_log
from tensorgate.observability.metrics import MetricsStore

if TYPE_CHECKING:
    from tensorgate.dataplane.types import InferRequest
    from tensorgate.runners.base import ModelVersion

SUCCESS = "success"


class InferObserver:
    """Counts, times and (sampled) logs each inference request at its end."""

    def __init__(self, metrics: MetricsStore | None, access_log_rate: float) -> None:
        self.metrics = metrics
        self.access_log_rate = access_log_rate

    def finished(
        self,
        request: InferRequest,
        model: ModelVersion | None,
        elapsed_ns: int,
        queue_ns: int = -1,
        error: BaseException | None = None,
    ) -> None:
        """Record one request; `model` is None when it named no loaded model."""
        outcome = SUCCESS if error is None else _outcome(error)
        protocol = request.protocol
        if model is not None and model.metrics is not None:
            model.metrics.request_finished(protocol, outcome, elapsed_ns, queue_ns)
        elif model is None and self.metrics is not None:
            self.metrics.unresolved_request(protocol, outcome)
        rate = self.access_log_rate
        if error is None and (rate <= 0.0 or (rate < 1.0 and random.random() >= rate)):
            return
        fields: dict[str, object] = {
            "protocol": protocol,
            "model": model.name if model is not None else request.model_name,
            "version": str(model.version) if model is not None else request.model_version,
            "outcome": outcome,
            "ms": round(elapsed_ns / 1e6, 3),
        }
        if request.id:
            fields["id"] = request.id
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
    if type(error).__name__ in ("CancelledError", "GeneratorExit"):  # the client left
        return "cancelled"
    return "internal"
