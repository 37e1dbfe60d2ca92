"""The benchmark summary, from benchmarks/results/*.json: the goals table (each execution
goal, its target, the measured ratio, whether it is met, the server CPU per request of
tensorgate and Triton, the revision and the command) and one table of every measured ratio.

Each row is one comparison the project is measured by: tensorgate against a peer or a bare
baseline in the same run, on the machine the file names, with the command that produced it.
The docs site's Benchmarks page includes these tables; `python benchmarks/summary.py` prints
them, and `--write` puts them at the top of RESULTS.md.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HEADER = (
    "| benchmark | case | tensorgate | against | ratio | measured |\n|---|---|---|---|---|---|\n"
)


def _load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _row(bench: str, case: str, ours: float, peer: str, theirs: float, date: str) -> str:
    return (
        f"| {bench} | {case} | {ours:,.0f} /s | {peer} {theirs:,.0f} /s "
        f"| **{ours / theirs:.2f}×** | {date} |"
    )


def _peers(doc: dict[str, Any]) -> Iterator[str]:
    rows = {(r["server"], r["model"], r["concurrency"], r["tool"]): r for r in doc["rows"]}
    date = doc.get("date", "")
    for model, conc, tool in (
        ("add_sub", 32, "pa"),
        ("add_sub", 32, "pa-stream"),
        ("mlp", 32, "pa"),
        ("mobilenet_v2", 8, "pa"),
    ):
        ours = rows.get(("tensorgate", model, conc, tool))
        for peer in ("triton", "bare-grpc"):
            theirs = rows.get((peer, model, conc, tool))
            if ours and theirs:
                case = f"{model} gRPC {'streaming' if tool == 'pa-stream' else 'unary'} c={conc}"
                yield _row("peers", case, ours["infer_per_s"], peer, theirs["infer_per_s"], date)
    for peer in ("mlserver", "kserve"):
        ours = rows.get(("tensorgate", "add_sub", 8, "loadgen"))
        theirs = rows.get((peer, "add_sub", 8, "loadgen"))
        if ours and theirs:
            yield _row(
                "peers",
                "add_sub gRPC c=8 (loadgen)",
                ours["infer_per_s"],
                peer,
                theirs["infer_per_s"],
                date,
            )


def _http(doc: dict[str, Any]) -> Iterator[str]:
    rows = {(r["server"], r["concurrency"]): r for r in doc["rows"]}
    for conc in (8, 32):
        ours = rows.get(("tensorgate", conc))
        for peer in ("triton", "bare-asgi"):
            theirs = rows.get((peer, conc))
            if ours and theirs:
                yield _row(
                    "http",
                    f"add_sub HTTP binary c={conc}",
                    ours["infer_per_s"],
                    peer,
                    theirs["infer_per_s"],
                    doc.get("date", ""),
                )


def _observability(doc: dict[str, Any]) -> Iterator[str]:
    rows = {r["config"]: r for r in doc["rows"]}
    if "default" in rows and "off" in rows:
        yield _row(
            "observability",
            "add_sub gRPC c=32, metrics and sampled logs on",
            rows["default"]["infer_per_s"],
            "all off",
            rows["off"]["infer_per_s"],
            doc.get("date", ""),
        )


def _streams(doc: dict[str, Any]) -> Iterator[str]:
    date = doc.get("date", "")
    ensemble = [r for r in doc["rows"] if r["case"] == "ensemble vs three round trips"]
    for conc in sorted({r["concurrency"] for r in ensemble}):
        runs = [r for r in ensemble if r["concurrency"] == conc]
        ours = statistics.median(r["ensemble_per_s"] for r in runs)
        theirs = statistics.median(r["three_trips_per_s"] for r in runs)
        yield _row(
            "streams", f"pipeline ensemble c={conc}", ours, "3 client round trips", theirs, date
        )
    for row in doc["rows"]:
        if row["case"] == "decoupled first vs last response":
            yield (
                f"| streams | decoupled, {row['words']} responses: first / last "
                f"| {row['first_ms']} ms | last {row['last_ms']} ms "
                f"| **{row['first_over_last']:.3f}×** | {date} |"
            )


def _generation(doc: dict[str, Any]) -> Iterator[str]:
    date = doc.get("date", "")
    for row in doc["rows"]:
        if row["case"] == "continuous vs static":
            yield _row(
                "generation",
                f"tokens/s, continuous vs static batching, c={row['concurrency']}",
                row["continuous"]["tokens_per_s"],
                "static",
                row["static"]["tokens_per_s"],
                date,
            )
        elif row["case"].startswith("prefix caching"):
            yield (
                f"| generation | time to first token, 512-token shared prompt "
                f"| {row['ttft_on_ms']} ms cached | {row['ttft_off_ms']} ms uncached "
                f"| **{row['ratio_off_over_on']:.2f}×** | {date} |"
            )


def _workers(doc: dict[str, Any]) -> Iterator[str]:
    median = doc["median_infer_per_s"]
    for tool, label in (("loadgen", "loadgen"), ("pa", "perf_analyzer")):
        one, two = (
            median.get(f"tensorgate --workers 1 {tool}"),
            median.get(f"tensorgate --workers 2 {tool}"),
        )
        if one and two:
            yield _row(
                "workers",
                f"add_sub unary c=32, {label}",
                two,
                "--workers 1",
                one,
                doc.get("date", ""),
            )
        triton = median.get(f"triton {tool}")
        if two and triton:
            yield _row(
                "workers",
                f"add_sub unary c=32 --workers 2, {label}",
                two,
                "triton",
                triton,
                doc.get("date", ""),
            )


def _execution(doc: dict[str, Any]) -> Iterator[str]:
    median = doc["median_infer_per_s"]
    for mode in ("thread", "inline", "auto"):
        ours, bare = median.get(f"tensorgate --execution {mode} pa"), median.get("bare grpc.aio pa")
        if ours and bare:
            yield _row(
                "execution",
                f"add_sub unary c=32, --execution {mode}",
                ours,
                "bare grpc.aio",
                bare,
                doc.get("date", ""),
            )


def _cache(doc: dict[str, Any]) -> Iterator[str]:
    summary, date = doc["summary"], doc.get("date", "")
    yield (
        f"| cache | CNN, time in the server: miss / hit, c=1 | | "
        f"| **{summary['hit_vs_miss_server_time_c1']:.2f}×** | {date} |"
    )
    yield (
        f"| cache | CNN throughput, 0 % hits vs no cache, c=8 | | "
        f"| **{summary['miss_vs_no_cache_throughput_c8']:.2f}×** | {date} |"
    )
    onnx = doc.get("onnx") or {}
    ours, theirs = onnx.get("tensorgate-onnx"), onnx.get("triton")
    if ours and theirs:
        for case in ("hits", "misses"):
            mine, peer = ours["cpu_us_per_request_c8"][case], theirs["cpu_us_per_request_c8"][case]
            yield (  # the ratio as throughput's: above 1 where tensorgate spends less
                f"| cache | CNN (ONNX) c=8 {case}, server CPU per request, Triton's ÷ "
                f"tensorgate's | {mine:.0f} µs | triton {peer:.0f} µs "
                f"| **{peer / mine:.2f}×** | {date} |"
            )


def _triton_rows(rows: list[dict[str, Any]], key: str, mode: str = "process") -> str:
    """tensorgate's (`mode`) and Triton's median `key` over `rows`, in µs; a dash where
    either has none."""
    ours = [r[key] for r in rows if r["execution"] == mode and key in r]
    theirs = [r[key] for r in rows if r["execution"] == "triton" and key in r]
    shown = f"{statistics.median(ours):.0f} µs" if ours else "–"
    return shown + (f", {statistics.median(theirs):.0f} µs" if theirs else ", –")


def _process(doc: dict[str, Any]) -> Iterator[str]:
    date = doc.get("date", "")
    p99 = {
        mode: statistics.median(r["loaded_p99_ms"] for r in doc["rows"] if r["execution"] == mode)
        for mode in ("thread", "process")
    }
    yield (
        f"| process | health-check p99 beside a 20 ms pure-Python model at c=8 (goal 5 ms) "
        f"| {p99['process']:.1f} ms, instance in a process | {p99['thread']:.1f} ms in a thread "
        f"| **{p99['thread'] / p99['process']:.2f}×** | {date} |"
    )
    micro = doc.get("micro", [])
    if micro:
        cpu = {
            mode: statistics.median(
                r["server_cpu_us_per_request"] for r in micro if r["execution"] == mode
            )
            for mode in ("thread", "process")
        }
        yield (
            f"| process | micro Python model c=8, server CPU per request: thread ÷ process "
            f"| {cpu['thread']:.0f} µs in a thread | {cpu['process']:.0f} µs in a process "
            f"| **{cpu['thread'] / cpu['process']:.2f}×** | {date} |"
        )
    if any(r["execution"] == "triton" for r in doc["rows"]):
        triton = statistics.median(
            r["loaded_p99_ms"] for r in doc["rows"] if r["execution"] == "triton"
        )
        yield (
            f"| process | health-check p99 beside a 20 ms pure-Python model at c=8 "
            f"| {p99['process']:.1f} ms, instance in a process | triton {triton:.1f} ms "
            f"| **{triton / p99['process']:.2f}×** | {date} |"
        )
    rates = {
        mode: statistics.median(r["infer_per_s"] for r in micro if r["execution"] == mode)
        for mode in ("process", "triton")
        if any(r["execution"] == mode for r in micro)
    }
    if len(rates) == 2:
        yield _row(
            "process",
            "micro Python model c=8, instance in a process",
            rates["process"],
            "triton",
            rates["triton"],
            date,
        )


def _shm_rate(rows: list[dict[str, Any]], server: str, shm: bool) -> float:
    found = [
        r["infer_per_s"]
        for r in rows
        if r.get("server", "tensorgate") == server and r["shared_memory"] == shm
    ]
    return statistics.median(found) if found else 0.0


def _shm_cpu(rows: list[dict[str, Any]], server: str) -> str:
    found = [
        r["server_cpu_ms_per_request"]
        for r in rows
        if r.get("server", "tensorgate") == server and r["shared_memory"]
    ]
    return f"{statistics.median(found):.1f} ms" if found else "–"


def _shared_memory(doc: dict[str, Any]) -> Iterator[str]:
    rows, date = doc["rows"], doc.get("date", "")
    shm, raw = _shm_rate(rows, "tensorgate", True), _shm_rate(rows, "tensorgate", False)
    yield _row("shared memory", "16 MB FP32 identity, c=4", shm, "raw contents", raw, date)
    for mode, label in ((True, "shared memory"), (False, "raw contents")):
        if theirs := _shm_rate(rows, "triton", mode):
            yield _row(
                "shared memory",
                f"16 MB FP32 identity, c=4, {label}",
                _shm_rate(rows, "tensorgate", mode),
                "triton",
                theirs,
                date,
            )


GOALS_HEADER = (
    "| goal | target | measured | met | beside it, same run "
    "| server CPU / request: tensorgate, Triton | source |\n"
    "|---|---|---|---|---|---|---|\n"
)
# Throughput goals: (tensorgate server, case, peer, target, label, the ceiling's server and
# case, its label). The ceiling is the bare handler of the same stack on the same row,
# divided by the same peer: what a server doing nothing but the arithmetic reaches
# (benchmarks/goals_bench.py). "tensorgate-inline" runs every batch on the event loop.
INLINE_LABEL = "; add_sub on the event loop (`execution: inline`)"
THROUGHPUT_GOALS = (
    (
        "tensorgate",
        "mlp unary c=32",
        "triton",
        1.0,
        "mlp gRPC unary c=32, ÷ Triton",
        ("bare-grpc", "add_sub unary c=32"),
        "bare grpc.aio (add_sub)",
    ),
    (
        "tensorgate",
        "add_sub unary c=32",
        "bare-grpc",
        0.85,
        "add_sub gRPC unary c=32, ÷ bare grpc.aio",
        ("bare-grpc-hop", "add_sub unary c=32"),
        "bare grpc.aio with one thread hop",
    ),
    (
        "tensorgate-inline",
        "add_sub unary c=32",
        "bare-grpc",
        0.85,
        "add_sub gRPC unary c=32, ÷ bare grpc.aio" + INLINE_LABEL,
        ("bare-grpc", "add_sub unary c=32"),
        "bare grpc.aio",
    ),
    (
        "tensorgate",
        "add_sub streaming c=32",
        "triton",
        1.4,
        "add_sub gRPC streaming c=32, ÷ Triton",
        ("bare-grpc", "add_sub streaming c=32"),
        "bare grpc.aio",
    ),
    (
        "tensorgate",
        "add_sub HTTP binary c=8",
        "triton",
        1.6,
        "add_sub HTTP binary c=8, ÷ Triton",
        ("bare-asgi", "add_sub HTTP binary c=8"),
        "bare uvicorn ASGI",
    ),
    (
        "tensorgate-inline",
        "add_sub HTTP binary c=8",
        "triton",
        1.6,
        "add_sub HTTP binary c=8, ÷ Triton" + INLINE_LABEL,
        ("bare-asgi", "add_sub HTTP binary c=8"),
        "bare uvicorn ASGI",
    ),
)


def _goal(
    goal: str, target: str, value: float, met: bool, cpu: str, source: str, ceiling: str = "–"
) -> str:
    met_word = "yes" if met else "no"
    return f"| {goal} | {target} | **{value:.2f}** | {met_word} | {ceiling} | {cpu} | {source} |"


def _cpu(
    medians: dict[str, dict[str, float]], case: str, peer: bool = True, server: str = "tensorgate"
) -> str:
    ours = medians.get(f"{server} {case}", {}).get("server_cpu_us_per_request")
    theirs = medians.get(f"triton {case}", {}).get("server_cpu_us_per_request")
    shown = f"{ours:.0f} µs" if ours else "–"
    if peer:
        shown += f", {theirs:.0f} µs" if theirs else ", –"
    return shown


def _throughput_goals(m: dict[str, dict[str, float]]) -> Iterator[str]:
    def rate(server: str, case: str) -> float:
        return float(m.get(f"{server} {case}", {}).get("infer_per_s", 0.0))

    for server, case, peer, target, label, (bare, bare_case), bare_label in THROUGHPUT_GOALS:
        ours, theirs = rate(server, case), rate(peer, case)
        if ours and not theirs:  # the peer failed on every try: say so, keep the row
            yield (
                f"| {label} | ≥ {target}× | – | not measured | {peer} failed in every round "
                f"(tensorgate {ours:,.0f} /s) | {_cpu(m, case, server=server)} | goals |"
            )
            continue
        if not ours:
            continue
        ratio = ours / theirs
        ceiling = "–"
        if bare_rate := rate(bare, bare_case):
            ceiling = f"{bare_label} {bare_rate / theirs:.2f}×"
            bare_cpu = m[f"{bare} {bare_case}"].get("server_cpu_us_per_request")
            if bare_cpu:
                ceiling += f", {bare_cpu:.0f} µs / request"
        cpu = _cpu(m, case, server=server)
        yield _goal(label, f"≥ {target}×", ratio, ratio >= target, cpu, "goals", ceiling)


def _goals_rows(results: Path) -> Iterator[str]:
    goals = _load(results, "goals")
    if goals is not None:
        m = goals["medians"]
        yield from _throughput_goals(m)
        mlp = m.get("tensorgate mlp unary c=32", {})
        triton = m.get("triton mlp unary c=32", {})
        standalone = goals.get("standalone_mlp_batch1_ms")
        if "batch1_compute_infer_ms" in mlp and standalone:
            inflation = mlp["batch1_compute_infer_ms"] / standalone
            theirs = triton.get("batch1_compute_infer_ms")
            yield _goal(
                "mlp batch-1 compute_infer at c=32 ÷ the same session.run in a thread",
                "≤ 1.5×",
                inflation,
                inflation <= 1.5,
                _cpu(m, "mlp unary c=32"),
                "goals",
                # Triton's includes its Python backend's trip to the stub process and back.
                f"Triton {theirs / standalone:.2f}× ({theirs:.2f} ms)" if theirs else "–",
            )
        if "mean_batch" in mlp:
            theirs = triton.get("mean_batch")
            yield _goal(
                "mlp mean batch at c=32",
                "≥ 8",
                mlp["mean_batch"],
                mlp["mean_batch"] >= 8,
                _cpu(m, "mlp unary c=32"),
                "goals",
                f"Triton {theirs:.1f}" if theirs else "–",
            )
        plain = m.get("tensorgate mobilenet_v2 c=8", {}).get("server_cpu_us_per_request")
        shm = m.get("tensorgate mobilenet_v2 c=8 shared memory", {}).get(
            "server_cpu_us_per_request"
        )
        if plain and shm:
            yield _goal(
                "mobilenet_v2 c=8, server CPU per request: shared memory ÷ raw contents",
                "< 1×",
                shm / plain,
                shm < plain,
                f"{shm:.0f} µs with, {plain:.0f} µs without",
                "goals",
            )
    process = _load(results, "process")
    if process is not None:
        p99 = statistics.median(
            r["loaded_p99_ms"] for r in process["rows"] if r["execution"] == "process"
        )
        triton = [r["loaded_p99_ms"] for r in process["rows"] if r["execution"] == "triton"]
        yield _goal(
            "health-check p99 beside a 20 ms pure-Python model at c=8 (ms)",
            "≤ 5 ms",
            p99,
            p99 <= 5,
            _triton_rows(process["rows"], "server_cpu_us_per_request"),
            "process",
            f"Triton {statistics.median(triton):.2f} ms" if triton else "–",
        )
    shared = _load(results, "shared_memory")
    if shared is not None:
        ratio = float(shared["throughput_ratio"])
        theirs = shared.get("triton_throughput_ratio")
        rows = shared["rows"]
        yield _goal(
            "16 MB FP32 identity c=4, shared memory ÷ raw contents",
            "≥ 3×",
            ratio,
            ratio >= 3,
            f"{_shm_cpu(rows, 'tensorgate')}, {_shm_cpu(rows, 'triton')} (shared memory)",
            "shared_memory",
            f"Triton {theirs:.2f}×" if theirs else "–",
        )
    cache = _load(results, "cache")
    if cache is not None:
        yield from _cache_goals(cache)


def _cache_goals(cache: dict[str, Any]) -> Iterator[str]:
    """The response cache's two goals, with the ONNX form on both servers beside them."""
    summary, onnx = cache["summary"], cache.get("onnx") or {}
    triton = onnx.get("triton")

    def beside(key: str) -> str:
        if not triton:
            return "–"
        ours = onnx["tensorgate-onnx"][key]
        return f"ONNX form: tensorgate {ours:.2f}×, Triton {triton[key]:.2f}×"

    def cpu(case: str) -> str:
        ours = summary.get("cpu_us_per_request_c8", {}).get(case)
        if ours is None:
            return "–"
        if not triton:
            return f"{ours:.0f} µs"
        same = onnx["tensorgate-onnx"]["cpu_us_per_request_c8"][case]
        theirs = triton["cpu_us_per_request_c8"][case]
        return f"{ours:.0f} µs; ONNX form {same:.0f} µs, {theirs:.0f} µs ({case}, c=8)"

    hit = float(summary["hit_vs_miss_server_time_c1"])
    yield _goal(
        "CNN, a cache hit ÷ a miss, time in the server",
        "≥ 10×",
        hit,
        hit >= 10,
        cpu("hits"),
        "cache",
        beside("hit_vs_miss_server_time_c1"),
    )
    kept = float(summary["miss_vs_no_cache_throughput_c8"])
    yield _goal(
        "CNN c=8 throughput, cache on with 0 % hits ÷ no cache",
        "≥ 0.97×",
        kept,
        kept >= 0.97,
        cpu("misses"),
        "cache",
        beside("miss_vs_no_cache_throughput_c8"),
    )


def goals_markdown(results: Path) -> str:
    """The goals table, with the run's revision, machine and command under it."""
    rows = list(_goals_rows(results))
    if not rows:
        return ""
    goals = _load(results, "goals")
    where = (
        f"\nRevision {goals.get('revision', '?')}, {goals.get('date', '')}: "
        f"`{goals.get('command', '')}`; {goals.get('machine', '')}. "
        "Other sources: the summary's list below.\n"
        if goals
        else "\n"
    )
    return GOALS_HEADER + "\n".join(rows) + "\n" + where


def summary_markdown(results: Path) -> str:
    """The summary table and where each row's figures and commands come from."""
    sections = {
        "peers": _peers,
        "http": _http,
        "observability": _observability,
        "streams": _streams,
        "generation": _generation,
        "workers": _workers,
        "execution": _execution,
        "cache": _cache,
        "process": _process,
        "shared_memory": _shared_memory,
    }
    rows: list[str] = []
    sources: list[str] = []
    for name, rows_of in sections.items():
        doc = _load(results, name)
        if doc is None:
            continue
        rows += rows_of(doc)
        sources.append(
            f"- **{name}** (`benchmarks/results/{name}.json`): `{doc.get('command', '')}`; "
            f"{doc.get('machine', '')}"
        )
    return (
        HEADER
        + "\n".join(rows)
        + "\n\nSources, commands and machines:\n\n"
        + "\n".join(sources)
        + "\n"
    )


def _replace(text: str, name: str, content: str) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    return f"{head}{begin}\n{content}{end}{tail}"


def write_summary(results_md: Path, results: Path) -> None:
    """Replace the goals and the summary between RESULTS.md's markers with fresh ones."""
    text = _replace(results_md.read_text(), "goals", goals_markdown(results))
    results_md.write_text(_replace(text, "summary", summary_markdown(results)))


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    if sys.argv[1:] == ["--write"]:
        write_summary(here / "RESULTS.md", here / "results")
    else:
        sys.stdout.write(
            goals_markdown(here / "results") + "\n" + summary_markdown(here / "results")
        )
