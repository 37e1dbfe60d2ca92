"""The results page's goals table, generated from the JSON the benchmarks write."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
DASH, TIMES = "\u2013", "\u00d7"  # what the table writes for "none" and ratios


def _summary() -> ModuleType:
    spec = importlib.util.spec_from_file_location("summary", BENCHMARKS / "summary.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(results: Path, name: str, content: dict[str, Any]) -> None:
    (results / f"{name}.json").write_text(json.dumps({"date": "2026-12-04", **content}))


def _process_rows(triton: bool) -> list[dict[str, Any]]:
    rows = [
        {"execution": "thread", "loaded_p99_ms": 30.0, "server_cpu_us_per_request": 20300.0},
        {"execution": "process", "loaded_p99_ms": 4.5, "server_cpu_us_per_request": 21900.0},
    ]
    if triton:
        rows.append(
            {"execution": "triton", "loaded_p99_ms": 2.25, "server_cpu_us_per_request": 20900.0}
        )
    return rows


def _cache_summary(hit: float, cpu_hits: float) -> dict[str, Any]:
    return {
        "hit_vs_miss_server_time_c1": hit,
        "miss_vs_no_cache_throughput_c8": 1.02,
        "cpu_us_per_request_c8": {"hits": cpu_hits, "misses": 2 * cpu_hits, "no cache": 0.0},
    }


def _goal_row(table: str, goal: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {goal}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_the_goals_table_puts_triton_beside_the_process_shared_memory_and_cache_goals(
    tmp_path: Path,
) -> None:
    _write(tmp_path, "process", {"rows": _process_rows(triton=True)})
    shm_rows = [
        {
            "server": server,
            "shared_memory": shm,
            "infer_per_s": rate,
            "server_cpu_ms_per_request": cpu,
        }
        for server, shm, rate, cpu in (
            ("tensorgate", True, 270.0, 5.9),
            ("tensorgate", False, 37.0, 33.0),
            ("triton", True, 150.0, 6.8),
            ("triton", False, 46.0, 22.0),
        )
    ]
    _write(
        tmp_path,
        "shared_memory",
        {"rows": shm_rows, "throughput_ratio": 7.3, "triton_throughput_ratio": 3.26},
    )
    _write(
        tmp_path,
        "cache",
        {
            "summary": _cache_summary(10.2, 381.0),
            "onnx": {
                "tensorgate-onnx": _cache_summary(6.6, 390.0),
                "triton": _cache_summary(13.7, 113.0),
            },
        },
    )
    table = _summary().goals_markdown(tmp_path)

    # goal, target, measured, met, beside it, CPU per request (tensorgate, Triton), source
    health = _goal_row(table, "health-check p99")
    assert health[2:5] == ["**4.50**", "yes", "Triton 2.25 ms"]
    assert health[5] == "21900 µs, 20900 µs"
    shm = _goal_row(table, "16 MB FP32 identity")
    assert shm[4] == f"Triton 3.26{TIMES}"
    assert shm[5] == "5.9 ms, 6.8 ms (shared memory)"
    hits = _goal_row(table, "CNN, a cache hit")
    assert hits[4] == f"ONNX form: tensorgate 6.60{TIMES}, Triton 13.70{TIMES}"
    assert hits[5] == "381 µs; ONNX form 390 µs, 113 µs (hits, c=8)"
    misses = _goal_row(table, "CNN c=8 throughput")
    assert misses[5] == "762 µs; ONNX form 780 µs, 226 µs (misses, c=8)"


def test_without_triton_the_goals_keep_tensorgates_figures_and_say_none_beside(
    tmp_path: Path,
) -> None:
    _write(tmp_path, "process", {"rows": _process_rows(triton=False)})
    shm_rows = [  # a file written before the rows named their server
        {"shared_memory": True, "infer_per_s": 284.0, "server_cpu_ms_per_request": 5.4},
        {"shared_memory": False, "infer_per_s": 28.0, "server_cpu_ms_per_request": 42.0},
    ]
    _write(tmp_path, "shared_memory", {"rows": shm_rows, "throughput_ratio": 10.1})
    _write(tmp_path, "cache", {"summary": _cache_summary(10.6, 350.0)})
    summary = _summary()
    table = summary.goals_markdown(tmp_path)

    assert _goal_row(table, "health-check p99")[4:6] == [DASH, f"21900 µs, {DASH}"]
    assert _goal_row(table, "16 MB FP32 identity")[4:6] == [DASH, f"5.4 ms, {DASH} (shared memory)"]
    assert _goal_row(table, "CNN, a cache hit")[4:6] == [DASH, "350 µs"]
    listed = summary.summary_markdown(tmp_path)
    assert "triton" not in listed
    assert "| shared memory | 16 MB FP32 identity, c=4 | 284 /s | raw contents 28 /s" in listed
