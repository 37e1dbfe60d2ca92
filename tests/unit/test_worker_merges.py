"""How the answers of several worker processes become one server's: metrics, statistics and
the repository index."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from tensorgate.workers import metrics_merge
from tensorgate.workers.siblings import merge_index, merge_statistics
from tensorgate_protos import grpc_service_pb2 as pb

WORKER = """\
# HELP tensorgate_requests_total Requests.
# TYPE tensorgate_requests_total counter
tensorgate_requests_total{model="m",outcome="success"} {count}
tensorgate_requests_created{model="m",outcome="success"} 1.7e9
# HELP tensorgate_request_duration_seconds Latency.
# TYPE tensorgate_request_duration_seconds histogram
tensorgate_request_duration_seconds_bucket{le="0.1"} {count}
tensorgate_request_duration_seconds_bucket{le="+Inf"} {count}
tensorgate_request_duration_seconds_count {count}
tensorgate_request_duration_seconds_sum 0.5
# HELP tensorgate_model_state State.
# TYPE tensorgate_model_state gauge
tensorgate_model_state{model="m",state="READY"} 1
# HELP nv_inference_request_summary_us Summary.
# TYPE nv_inference_request_summary_us summary
nv_inference_request_summary_us{model="m",quantile="0.5"} {count}
nv_inference_request_summary_us_count{model="m"} {count}
nv_inference_request_summary_us_sum{model="m"} 10
"""


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_counters_and_histograms_add_up_and_gauges_keep_their_worker() -> None:
    merged = metrics_merge.merge(
        [(0, WORKER.replace("{count}", "3")), (1, WORKER.replace("{count}", "4"))]
    )
    samples = _samples(metrics_merge.render(merged))
    success = (("model", "m"), ("outcome", "success"))
    assert samples[("tensorgate_requests_total", success)] == 7
    assert samples[("tensorgate_request_duration_seconds_bucket", (("le", "+Inf"),))] == 7
    assert samples[("tensorgate_request_duration_seconds_sum", ())] == 1.0
    ready = (("model", "m"), ("state", "READY"))
    assert samples[("tensorgate_model_state", (*ready, ("worker", "0")))] == 1
    assert samples[("tensorgate_model_state", (*ready, ("worker", "1")))] == 1
    assert not any(name.endswith("_created") for name, _ in samples)
    # A summary's count and sum add up; its quantiles are each worker's own.
    assert samples[("nv_inference_request_summary_us_count", (("model", "m"),))] == 7
    assert samples[("nv_inference_request_summary_us_sum", (("model", "m"),))] == 20
    p50 = (("model", "m"), ("quantile", "0.5"))
    assert samples[("nv_inference_request_summary_us", (*p50, ("worker", "0")))] == 3
    assert samples[("nv_inference_request_summary_us", (*p50, ("worker", "1")))] == 4


def _stats(success: int, batch_one: int, last: int) -> pb.ModelStatisticsResponse:
    response = pb.ModelStatisticsResponse()
    stats = response.model_stats.add(name="m", version="1", inference_count=success)
    stats.last_inference = last
    stats.inference_stats.success.count = success
    stats.inference_stats.success.ns = success * 1000
    stats.batch_stats.add(batch_size=1).compute_infer.count = batch_one
    return response


def test_statistics_sum_per_model_version_and_batch_size() -> None:
    merged = merge_statistics([_stats(5, 2, 100), _stats(7, 3, 90)])
    (stats,) = merged.model_stats
    assert stats.inference_count == 12
    assert stats.inference_stats.success.count == 12
    assert stats.inference_stats.success.ns == 12_000
    assert stats.batch_stats[0].compute_infer.count == 5
    assert stats.last_inference == 100


def test_the_index_is_ready_only_where_every_worker_is() -> None:
    def index(state: str) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        response.models.add(name="a", version="1", state="READY")
        response.models.add(name="b", version="1", state=state)
        return response

    merged = {m.name: m for m in merge_index([index("READY"), index("UNAVAILABLE")]).models}
    assert merged["a"].state == "READY"
    assert merged["b"].state == "UNAVAILABLE"
    assert "ready in 1 of 2 workers" in merged["b"].reason
