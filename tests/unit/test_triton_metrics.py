"""Triton's metric families: exact names in the text format, the machine's CPU gauges read
from /proc, and Triton's GPU gauges from NVML."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
from tensorgate.dataplane.statistics import ModelStats
from tensorgate.observability.metrics import GpuCollector
from tensorgate.observability.triton_metrics import CpuSampler, TritonCollector, triton_names

MEMINFO = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n"


def _version(name: str, cached: bool = False) -> Any:
    stats = ModelStats()
    stats.record_success(3_000_000, 1_000_000, 10_000, 900_000, 20_000)
    stats.record_execution(2, 10_000, 900_000, 20_000)
    stats.record_failure(5_000_000)
    status = SimpleNamespace(queued=7)
    runner = SimpleNamespace(status=lambda: status)
    return SimpleNamespace(name=name, version=1, stats=stats, runner=runner, cached=cached)


def test_tritons_counters_keep_their_exact_names_in_the_text_format_only() -> None:
    registry = CollectorRegistry()
    registry.register(TritonCollector(lambda: [_version("m")]))
    text = triton_names(generate_latest(registry)).decode()
    assert "# TYPE nv_inference_request_success counter\n" in text
    assert 'nv_inference_request_success{model="m",version="1"} 1.0\n' in text
    assert 'nv_inference_request_failure{model="m",version="1"} 1.0\n' in text
    assert 'nv_inference_count{model="m",version="1"} 2.0\n' in text
    assert 'nv_inference_request_duration_us{model="m",version="1"} 8000.0\n' in text
    assert 'nv_inference_compute_infer_duration_us{model="m",version="1"} 900.0\n' in text
    assert 'nv_inference_pending_request_count{model="m",version="1"} 7.0\n' in text
    assert "_total" not in text and "nv_cache_num_hits_per_model{" not in text
    assert 'nv_inference_count_total{model="m",version="1"} 2.0' in openmetrics(registry).decode()


def test_cache_counters_appear_for_models_whose_responses_are_cached() -> None:
    registry = CollectorRegistry()
    registry.register(TritonCollector(lambda: [_version("m", cached=True)]))
    text = triton_names(generate_latest(registry)).decode()
    assert 'nv_cache_num_misses_per_model{model="m",version="1"} 0.0\n' in text


def test_cpu_utilization_is_the_busy_share_between_scrapes_and_memory_the_unavailable(
    tmp_path: Path,
) -> None:
    (tmp_path / "meminfo").write_text(MEMINFO)
    (tmp_path / "stat").write_text("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3\n")
    sampler = CpuSampler(tmp_path)
    # 300 jiffies later: 150 busy (user 100, system 50), 150 idle or waiting.
    (tmp_path / "stat").write_text("cpu  200 0 150 800 150 0 0 0 0 0\n")
    readings = {m.name: m.samples[0].value for m in sampler.collect()}
    assert readings == {
        "nv_cpu_utilization": 0.5,
        "nv_cpu_memory_total_bytes": 1000 * 1024,
        "nv_cpu_memory_used_bytes": 750 * 1024,
    }
    # A scrape within the same tick keeps the last window's figure.
    assert next(iter(sampler.collect())).samples[0].value == 0.5


def test_with_an_interval_cpu_utilization_is_sampled_over_it_not_over_scrapes(
    tmp_path: Path,
) -> None:
    import time

    (tmp_path / "meminfo").write_text(MEMINFO)
    (tmp_path / "stat").write_text("cpu  100 0 100 700 100 0 0 0 0 0\n")
    sampler = CpuSampler(tmp_path, interval_s=0.02)
    (tmp_path / "stat").write_text("cpu  130 0 100 770 100 0 0 0 0 0\n")  # 30 of 100 busy

    def utilization() -> float:
        return float(next(iter(sampler.collect())).samples[0].value)

    deadline = time.monotonic() + 10
    while utilization() != 0.3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert utilization() == 0.3
    # Scrapes read the last interval's figure; they start no window of their own.
    (tmp_path / "stat").write_text("cpu  130 0 100 770 100 0 0 0 0 0\n")
    time.sleep(0.1)
    assert utilization() == 0.3


def test_tritons_gpu_gauges_come_from_nvml_and_skip_what_a_gpu_does_not_report() -> None:
    def unsupported(handle: object) -> float:
        raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")

    nvml = SimpleNamespace(
        nvmlDeviceGetUUID=lambda h: "GPU-1",
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(used=2, total=8),
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=25),
        nvmlDeviceGetPowerUsage=lambda h: 70_000,
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 300_000,
        nvmlDeviceGetTotalEnergyConsumption=unsupported,
    )
    families = {m.name: m.samples for m in GpuCollector(nvml, [object()]).collect()}
    assert families["nv_gpu_utilization"][0].value == 0.25
    assert families["nv_gpu_memory_used_bytes"][0].labels == {"gpu_uuid": "GPU-1"}
    assert families["nv_gpu_power_usage"][0].value == 70.0
    assert families["nv_gpu_power_limit"][0].value == 300.0
    assert families["nv_energy_consumption"] == []


def test_tritons_summaries_give_the_last_minutes_quantiles_and_counters_can_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tensorgate.dataplane import statistics
    from tensorgate.dataplane.statistics import LatencyWindow
    from tensorgate.observability.triton_metrics import MetricsConfig

    stats = ModelStats(window=LatencyWindow())
    clock = [10**12]
    monkeypatch.setattr(statistics.time, "monotonic_ns", lambda: clock[0])
    stats.record_success(999_000_000, 0, 0, 0, 0)  # a minute and more before the others
    clock[0] += 61 * 10**9
    for ms in range(1, 101):  # 1 ms .. 100 ms
        stats.record_success(ms * 1_000_000, ms * 1000, 0, ms * 500_000, 0)
    version = SimpleNamespace(name="m", version=1, stats=stats, cached=False)
    version.runner = SimpleNamespace(status=lambda: SimpleNamespace(queued=0))
    config = MetricsConfig.parse(
        [
            "summary_latencies=true",
            "counter_latencies=false",
            "summary_quantiles=0.5:0.05,0.99:0.001",
        ]
    )
    registry = CollectorRegistry()
    registry.register(TritonCollector(lambda: [version], None, config))
    text = triton_names(generate_latest(registry)).decode()
    assert "# TYPE nv_inference_request_summary_us summary\n" in text
    assert 'nv_inference_request_summary_us{model="m",quantile="0.5",version="1"} 50000.0\n' in text
    assert (
        'nv_inference_request_summary_us{model="m",quantile="0.99",version="1"} 99000.0\n' in text
    )
    assert 'nv_inference_queue_summary_us{model="m",quantile="0.5",version="1"} 50.0\n' in text
    assert (
        'nv_inference_compute_infer_summary_us{model="m",quantile="0.99",version="1"} 49500.0\n'
        in text
    )
    # Count and sum are the totals since load, the expired request included.
    assert 'nv_inference_request_summary_us_count{model="m",version="1"} 101.0\n' in text
    assert "_duration_us" not in text  # counter_latencies=false
    assert "nv_inference_request_success{" in text


def test_metrics_config_refuses_what_it_does_not_take_by_name() -> None:
    from tensorgate.observability.triton_metrics import MetricsConfig

    assert MetricsConfig.parse([]) == MetricsConfig()
    for item in ("histogram_latencies=true", "summary_latencies=yes", "summary_quantiles=2:0.1"):
        with pytest.raises(ValueError, match="--metrics-config"):
            MetricsConfig.parse([item])
