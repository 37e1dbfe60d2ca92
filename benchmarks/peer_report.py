"""Turn benchmarks/results/peers.json into the peer section of RESULTS.md and an SVG plot.

usage: python benchmarks/peer_report.py   (rewrites from the last run's JSON)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"
ORDER = (
    "tensorgate",
    "tensorgate-nobatch",
    "bare-grpc",
    "bare-grpc-hop",
    "triton",
    "mlserver",
    "kserve",
)
COLORS = {
    "tensorgate": "#1f77b4",
    "tensorgate-nobatch": "#9ecae1",
    "bare-grpc": "#7f7f7f",
    "bare-grpc-hop": "#c7c7c7",
    "triton": "#76b900",
    "mlserver": "#d62728",
    "kserve": "#ff7f0e",
}
TOOLS = {
    "loadgen": "tritonclient aio closed loop",
    "pa": "perf_analyzer unary",
    "pa-stream": "perf_analyzer --streaming",
}

Rows = dict[tuple[str, str, int, str], dict[str, Any]]


def _index(result: dict[str, Any]) -> Rows:
    return {(r["server"], r["model"], r["concurrency"], r["tool"]): r for r in result["rows"]}


def _get(rows: Rows, server: str, model: str, conc: int, tool: str) -> float | None:
    row = rows.get((server, model, conc, tool))
    return float(row["infer_per_s"]) if row else None


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "n/a"


def _table(result: dict[str, Any], rows: Rows, model: str, tool: str) -> list[str]:
    peers = [s for s in ORDER if s != "tensorgate"]
    servers = [s for s in ORDER if any(k[0] == s and k[1] == model and k[3] == tool for k in rows)]
    if not servers:
        return []
    lines = [
        f"**{model}**, {TOOLS[tool]}",
        "",
        "| server | c | infer/s | p50 ms | p99 ms | tensorgate ÷ this |",
        "|---|---|---|---|---|---|",
    ]
    for server in servers:
        for conc in (1, 8, 32):
            row = rows.get((server, model, conc, tool))
            if row is None:
                continue
            ours = _get(rows, "tensorgate", model, conc, tool)
            ratio = _ratio(ours, row["infer_per_s"]) if server in peers else ""
            lines.append(
                f"| {server} | {conc} | {row['infer_per_s']:,.0f} | {row['p50_ms']:.2f} | "
                f"{row['p99_ms']:.2f} | {ratio} |"
            )
    return [*lines, ""]


def _targets(result: dict[str, Any], rows: Rows) -> list[str]:
    tg = "tensorgate"
    unary = _get(rows, tg, "add_sub", 32, "pa")
    bare_unary = _get(rows, "bare-grpc", "add_sub", 32, "pa")
    hop_unary = _get(rows, "bare-grpc-hop", "add_sub", 32, "pa")
    lg = _get(rows, tg, "add_sub", 32, "loadgen")
    stream = _get(rows, tg, "add_sub", 32, "pa-stream")
    triton_stream = _get(rows, "triton", "add_sub", 32, "pa-stream")
    bare_stream = _get(rows, "bare-grpc", "add_sub", 32, "pa-stream")
    c1 = rows.get((tg, "add_sub", 1, "pa"))
    mobile = rows.get((tg, "mobilenet_v2", 8, "pa"))
    raw_mobile = max(result["raw"].get("mobilenet_v2", {0: 0.0}).values())
    best_batch = max(result["raw"].get("mobilenet_v2", {"0": 0.0}).items(), key=lambda kv: kv[1])[0]
    mlp = _get(rows, tg, "mlp", 32, "pa")
    mlp_off = _get(rows, "tensorgate-nobatch", "mlp", 32, "pa")

    def check(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "**missed**")

    def ge(a: float | None, b: float | None, k: float) -> bool | None:
        return None if not a or not b else a >= k * b

    lines = [
        "| target | measured | status |",
        "|---|---|---|",
        f"| unary add_sub c=32 ≥ 0.9× bare grpc.aio (perf_analyzer) | {_ratio(unary, bare_unary)} "
        f"(bare with a thread hop: {_ratio(hop_unary, bare_unary)}; tensorgate ÷ that: "
        f"{_ratio(unary, hop_unary)}) | {check(ge(unary, bare_unary, 0.9))} |",
    ]
    for peer, k in (("mlserver", 2.5), ("kserve", 1.6)):
        theirs = _get(rows, peer, "add_sub", 32, "loadgen")
        lines.append(
            f"| unary add_sub c=32 ≥ {k}× {peer} (loadgen) | {_ratio(lg, theirs)} "
            f"| {check(ge(lg, theirs, k))} |"
        )
    lines += [
        f"| streaming add_sub c=32 ≥ 1.25× Triton streaming | {_ratio(stream, triton_stream)} "
        f"(bare streaming: {_ratio(bare_stream, triton_stream)}) "
        f"| {check(ge(stream, triton_stream, 1.25))} |",
        f"| add_sub c=1 unary p50 ≤ 1.0 ms (perf_analyzer) | "
        f"{c1['p50_ms']:.2f} ms | {check(c1['p50_ms'] <= 1.0)} |"
        if c1
        else "| add_sub c=1 unary p50 ≤ 1.0 ms | n/a | n/a |",
        f"| mobilenet_v2 c=8 ≥ 0.9× raw onnxruntime at its best batch ({best_batch}) "
        f"| {_ratio(mobile['infer_per_s'] if mobile else None, raw_mobile)} "
        f"| {check(ge(mobile['infer_per_s'] if mobile else None, raw_mobile, 0.9))} |",
        f"| mlp c=32 with batching ≥ 1.2× without (perf_analyzer) | {_ratio(mlp, mlp_off)} "
        f"| {check(ge(mlp, mlp_off, 1.2))} |",
        "",
    ]
    return lines


def _svg(result: dict[str, Any], rows: Rows, path: Path) -> None:
    """Grouped bars of loadgen infer/s: one panel per model, one group per concurrency."""
    width, panel_h, top, left = 900, 220, 40, 70
    servers = [s for s in ORDER if any(k[0] == s and k[3] == "loadgen" for k in rows)]
    models = ("add_sub", "mlp", "mobilenet_v2")
    height = top + len(models) * (panel_h + 40) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{left}" y="22" font-size="15">infer/s under the tritonclient aio closed loop '
        f"({result['date']}, {result['machine'].split(';')[0]})</text>",
    ]
    for i, server in enumerate(servers):
        x = left + i * 135
        parts.append(
            f'<rect x="{x}" y="{height - 22}" width="12" height="12" fill="{COLORS[server]}"/>'
            f'<text x="{x + 16}" y="{height - 12}">{server}</text>'
        )
    for m, model in enumerate(models):
        y0 = top + m * (panel_h + 40)
        values = [_get(rows, s, model, c, "loadgen") or 0.0 for s in servers for c in (1, 8, 32)]
        peak = max(values) or 1.0
        parts.append(f'<text x="{left}" y="{y0 + 14}" font-size="13">{model}</text>')
        base = y0 + panel_h
        parts.append(
            f'<line x1="{left}" y1="{base}" x2="{width - 20}" y2="{base}" stroke="black"/>'
        )
        group_w = (width - left - 40) / 3
        bar_w = (group_w - 30) / max(len(servers), 1)
        for g, conc in enumerate((1, 8, 32)):
            gx = left + g * group_w + 15
            parts.append(f'<text x="{gx}" y="{base + 16}">concurrency {conc}</text>')
            for s, server in enumerate(servers):
                value = _get(rows, server, model, conc, "loadgen") or 0.0
                h = (panel_h - 30) * value / peak
                x = gx + s * bar_w
                parts.append(
                    f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{bar_w - 3:.1f}" '
                    f'height="{h:.1f}" fill="{COLORS[server]}"><title>{server} {model} '
                    f"c={conc}: {value:.0f} infer/s</title></rect>"
                )
                if value:
                    parts.append(
                        f'<text x="{x:.1f}" y="{base - h - 3:.1f}" font-size="9">{value:.0f}</text>'
                    )
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def render(result: dict[str, Any]) -> str:
    rows = _index(result)
    lines = [
        BEGIN,
        f"## Side by side with the peers (issue #3) — {result['date']}",
        "",
        f"Machine: {result['machine']}. Every server runs one model instance with one",
        "onnxruntime intra-op thread, alone on the machine while it is measured; tensorgate",
        "serves the peers' own ONNX files (`benchmarks/peer_repository.py`).",
        "",
        f"Command: `{result['command']}` (about 20 minutes). Rows come from",
        "`../shared/peers/pa.sh URL MODEL C grpc [--streaming]` (perf_analyzer, 4 s windows)",
        "and `$PEERS_DIR/venv-load/bin/python ../shared/peers/loadgen.py URL MODEL C SECONDS`;",
        f"raw onnxruntime: `{result['raw_command']}`. Plot: `benchmarks/results/peers.svg`.",
        "",
        "### Targets",
        "",
        *_targets(result, rows),
        *[f"- {note}" for note in result.get("notes", [])],
        "",
        "### Raw in-process onnxruntime (1 thread), rows/s",
        "",
        "| model | batch 1 | batch 8 | batch 32 |",
        "|---|---|---|---|",
    ]
    for model, by_batch in result["raw"].items():
        cells = " | ".join(f"{by_batch.get(str(b), by_batch.get(b, 0)):,.0f}" for b in (1, 8, 32))
        lines.append(f"| {model} | {cells} |")
    lines.append("")
    for tool in ("pa", "pa-stream", "loadgen"):
        lines.append(f"### {TOOLS[tool]}")
        lines.append("")
        for model in ("add_sub", "mlp", "mobilenet_v2"):
            lines += _table(result, rows, model, tool)
    lines.append(END)
    return "\n".join(lines)


def write_report(result: dict[str, Any], results_md: Path, svg: Path) -> None:
    rows = _index(result)
    _svg(result, rows, svg)
    section = render(result)
    text = results_md.read_text() if results_md.exists() else "# Benchmark results\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    results_md.write_text(text)
    print(f"wrote {results_md} and {svg}")


if __name__ == "__main__":
    data = json.loads((ROOT / "benchmarks" / "results" / "peers.json").read_text())
    write_report(
        data, ROOT / "benchmarks" / "RESULTS.md", ROOT / "benchmarks" / "results" / "peers.svg"
    )
