"""Repository behaviour a user sees: broken models, start-up errors, explicit load/unload,
and poll mode following the repository on disk."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import ROOT, start_server
from tests.e2e.models import build_broken_repository, identity_onnx, python_model

PEERS = ROOT.parent / "shared" / "peers" / "make_models.py"


def identity_input(client_module: Any = grpcclient) -> Any:
    """INPUT = [[0, 1, 2, 3]] as a tritonclient.grpc (default) or tritonclient.http input."""
    tensor = client_module.InferInput("INPUT", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
    return tensor


def identity_infer(client: grpcclient.InferenceServerClient, model: str) -> list[list[float]]:
    return client.infer(model, [identity_input()]).as_numpy("OUTPUT").tolist()  # type: ignore[no-any-return]


def test_broken_models_fail_with_reasons_while_others_serve(tmp_path: Path) -> None:
    reasons = build_broken_repository(tmp_path / "repo")
    server = start_server(tmp_path / "repo", tmp_path / "log", wait_model="good")
    try:
        client = grpcclient.InferenceServerClient(server.url)
        assert identity_infer(client, "good") == [[0.0, 1.0, 2.0, 3.0]]
        # strict readiness: one failed model means the server reports not ready.
        assert not client.is_server_ready()
        index = {m.name: m for m in client.get_model_repository_index().models}
        for name, reason in reasons.items():
            assert index[name].state == "UNAVAILABLE"
            assert reason in index[name].reason, index[name].reason
            assert any(
                r["event"] == "model is unavailable" and r.get("model") == name
                for r in server.log_records()
            ), server.output()
            with pytest.raises(InferenceServerException, match="is not ready") as info:
                client.get_model_metadata(name)
            assert info.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        assert server.stop() == 0


def serve_until_exit(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `tensorgate serve` expecting it to exit during start-up (bounded by a timeout)."""
    command = [sys.executable, "-m", "tensorgate", "serve", "--model-repository", str(repo)]
    ports = ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
    return subprocess.run(
        [*command, "--host", "127.0.0.1", *ports, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_exit_on_error_makes_start_up_fail(tmp_path: Path) -> None:
    build_broken_repository(tmp_path / "repo")
    result = serve_until_exit(tmp_path / "repo", "--exit-on-error")
    assert result.returncode == 1
    assert "--exit-on-error" in result.stderr and "bad_backend" in result.stderr


def test_missing_repository_is_a_clear_start_up_error(tmp_path: Path) -> None:
    result = serve_until_exit(tmp_path / "absent")
    assert result.returncode == 2
    assert f"model repository {tmp_path / 'absent'} does not exist" in result.stderr


def test_plain_asyncio_loop_serves_grpc_streaming_and_http(tmp_path: Path) -> None:
    import tritonclient.http as httpclient

    identity_onnx(tmp_path / "repo" / "plain" / "1" / "model.onnx", "FP32")
    server = start_server(tmp_path / "repo", tmp_path / "log", "--event-loop", "asyncio")
    try:
        started = next(r for r in server.log_records() if r["event"].startswith("listening"))
        assert started["event_loop"] == "asyncio"
        client = grpcclient.InferenceServerClient(server.url)
        assert identity_infer(client, "plain") == [[0.0, 1.0, 2.0, 3.0]]
        results: list[Any] = []
        client.start_stream(callback=lambda result, error: results.append(error or result))
        client.async_stream_infer("plain", [identity_input()])
        client.stop_stream()
        assert results[0].as_numpy("OUTPUT").tolist() == [[0.0, 1.0, 2.0, 3.0]]
        http = httpclient.InferenceServerClient(server.http_url)
        answer = http.infer("plain", [identity_input(httpclient)])
        assert answer.as_numpy("OUTPUT").tolist() == [[0.0, 1.0, 2.0, 3.0]]
    finally:
        assert server.stop() == 0


def test_models_of_several_repositories_are_served_and_a_name_in_two_fails_by_name(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for root, names in ((first, ("a", "both")), (second, ("b", "both", "later"))):
        for name in names:
            identity_onnx(root / name / "1" / "model.onnx", "FP32")
    server = start_server(
        first,
        tmp_path / "log",
        "--model-repository",
        str(second),
        "--model-control-mode",
        "explicit",
        "--load-model",
        "a",
        "--load-model",
        "b",
    )
    try:
        client = grpcclient.InferenceServerClient(server.url)
        assert identity_infer(client, "a") == identity_infer(client, "b") == [[0.0, 1.0, 2.0, 3.0]]
        states = {m.name: m.state for m in client.get_model_repository_index().models}
        assert states == {"a": "READY", "b": "READY", "both": "", "later": ""}
        client.load_model("later")  # from the second repository, by name alone
        assert identity_infer(client, "later") == [[0.0, 1.0, 2.0, 3.0]]
        with pytest.raises(InferenceServerException, match="in more than one model repository"):
            client.load_model("both")
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["both"].state == "UNAVAILABLE"
        assert str(first) in index["both"].reason and str(second) in index["both"].reason
    finally:
        assert server.stop() == 0


def test_a_tritonserver_command_line_runs_with_only_the_program_changed(tmp_path: Path) -> None:
    identity_onnx(tmp_path / "repo" / "identity" / "1" / "model.onnx", "FP32")
    server = start_server(
        tmp_path / "repo",
        tmp_path / "log",
        "--allow-metrics=false",
        "--backend-config=onnxruntime,default-max-batch-size=8",
        "--strict-readiness=false",
        "--exit-timeout-secs=2",
        "--log-verbose=1",
        f"--trace-config=triton,file={tmp_path / 'trace.json'}",
        "--trace-config",
        "rate=5",
        f"--log-file={tmp_path / 'server.log'}",
        "--log-format",
        "ISO8601",
    )
    try:
        client = grpcclient.InferenceServerClient(server.url)
        assert client.get_model_config("identity").config.max_batch_size == 8
        traces = client.get_trace_settings(as_json=True)["settings"]
        assert traces["trace_file"]["value"] == [str(tmp_path / "trace.json")]
        assert traces["trace_rate"]["value"] == ["5"]
        assert identity_infer(client, "identity") == [[0.0, 1.0, 2.0, 3.0]]
        with pytest.raises(OSError):  # metrics off, though a port was given before the flag
            socket.create_connection(("127.0.0.1", server.metrics_port), timeout=2).close()
        settings = client.get_log_settings(as_json=True)["settings"]
        assert settings["log_verbose_level"]["uint32_param"] == 1  # --log-verbose=1
        assert settings["log_file"]["string_param"] == str(tmp_path / "server.log")
        assert settings["log_format"]["string_param"] == "ISO8601"
    finally:
        assert server.stop() == 0
    # Every line went to the file, in Triton's ISO8601 shape; none to the console.
    lines = (tmp_path / "server.log").read_text().splitlines()
    pid = server.process.pid
    loaded = [line for line in lines if "] model loaded" in line]
    assert loaded and re.fullmatch(
        rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ I {pid} tensorgate.repository.manager\] "
        r'model loaded model="identity" versions=\[1\] seconds=\S+',
        loaded[0],
    ), loaded[0]
    assert "model loaded" not in server.output()


def test_explicit_mode_loads_unloads_and_reloads(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for name in ("first", "second"):
        identity_onnx(repo / name / "1" / "model.onnx", "FP32")
    server = start_server(
        repo, tmp_path / "log", "--model-control-mode", "explicit", "--load-model", "first"
    )
    try:
        client = grpcclient.InferenceServerClient(server.url)
        assert client.is_model_ready("first") and not client.is_model_ready("second")
        states = {m.name: m.state for m in client.get_model_repository_index().models}
        assert states == {"first": "READY", "second": ""}
        client.load_model("second")
        assert identity_infer(client, "second") == [[0.0, 1.0, 2.0, 3.0]]
        client.unload_model("second")
        assert not client.is_model_ready("second")
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert (index["second"].state, index["second"].reason) == ("UNAVAILABLE", "unloaded")
        with pytest.raises(InferenceServerException, match="not ready"):
            identity_infer(client, "second")
        # A new version appears on disk; reloading serves it.
        shutil.copytree(repo / "first" / "1", repo / "first" / "2")
        client.load_model("first")
        assert list(client.get_model_metadata("first").versions) == ["2"]
        with pytest.raises(InferenceServerException, match="not in the repository"):
            client.load_model("third")
        (repo / "broken" / "1").mkdir(parents=True)
        (repo / "broken" / "config.pbtxt").write_text('backend: "nope"')
        with pytest.raises(InferenceServerException, match="unknown backend 'nope'"):
            client.load_model("broken")
        assert identity_infer(client, "first") == [[0.0, 1.0, 2.0, 3.0]]
    finally:
        assert server.stop() == 0


def _eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"never happened: {what}")


def test_poll_mode_loads_reloads_and_unloads_models_as_their_directories_change(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    identity_onnx(repo / "first" / "1" / "model.onnx", "FP32")
    args = ("--model-control-mode", "poll", "--repository-poll-secs", "0.1")
    server = start_server(repo, tmp_path / "log", *args)
    try:
        client = grpcclient.InferenceServerClient(server.url)

        def index() -> dict[str, Any]:
            return {m.name: m for m in client.get_model_repository_index().models}

        assert identity_infer(client, "first") == [[0.0, 1.0, 2.0, 3.0]]
        with pytest.raises(InferenceServerException, match="explicit model load is not allowed"):
            client.load_model("first")
        # A model copied in is loaded.
        identity_onnx(repo / "second" / "1" / "model.onnx", "FP32")
        _eventually(lambda: client.is_model_ready("second"), "the new model loaded")
        assert identity_infer(client, "second") == [[0.0, 1.0, 2.0, 3.0]]
        # A new version directory is loaded in place of the old one.
        shutil.copytree(repo / "first" / "1", repo / "first" / "2")
        _eventually(
            lambda: list(client.get_model_metadata("first").versions) == ["2"],
            "version 2 served",
        )
        # A change that does not load leaves the loaded versions serving, with the reason.
        (repo / "first" / "config.pbtxt").write_text('backend: "nope"')
        _eventually(lambda: "unknown backend 'nope'" in index()["first"].reason, "the reason")
        assert identity_infer(client, "first") == [[0.0, 1.0, 2.0, 3.0]]
        assert index()["first"].state == "READY"
        (repo / "first" / "config.pbtxt").unlink()
        _eventually(lambda: index()["first"].reason == "", "the model fixed")
        # A model whose directory is removed is unloaded and no longer known.
        shutil.rmtree(repo / "second")
        _eventually(lambda: "second" not in index(), "the removed model forgotten")
        with pytest.raises(InferenceServerException, match="unknown model"):
            identity_infer(client, "second")
        assert identity_infer(client, "first") == [[0.0, 1.0, 2.0, 3.0]]
        events = [(r["event"], r.get("model")) for r in server.log_records()]
        assert ("model directory added: loading", "second") in events
        assert ("model directory changed: loading", "first") in events
        assert ("model directory removed: unloading", "second") in events
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_triton_layout_onnx_repository_without_configs_serves_unchanged(tmp_path: Path) -> None:
    if not PEERS.is_file():
        pytest.skip(f"{PEERS} not found (../shared beside the checkout)")
    repo = tmp_path / "models"
    subprocess.run(
        [sys.executable, str(PEERS), str(repo)], check=True, timeout=300, capture_output=True
    )
    shutil.rmtree(tmp_path / "models-torchscript")  # its .pt files need configs; not this test
    assert not list(repo.glob("*/config.pbtxt"))
    server = start_server(repo, tmp_path / "log")
    try:
        client = grpcclient.InferenceServerClient(server.url)
        shapes = {"add_sub": (16,), "mlp": (256,), "mobilenet_v2": (3, 224, 224)}
        outputs = {"add_sub": (16,), "mlp": (10,), "mobilenet_v2": (1000,)}
        for name, shape in shapes.items():
            metadata = client.get_model_metadata(name)
            assert list(metadata.inputs[0].shape) == [-1, *shape]
            inputs = []
            for tensor in metadata.inputs:
                item = grpcclient.InferInput(tensor.name, [2, *shape], "FP32")
                item.set_data_from_numpy(np.random.rand(2, *shape).astype(np.float32))
                inputs.append(item)
            result = client.infer(name, inputs)
            assert result.as_numpy(metadata.outputs[0].name).shape == (2, *outputs[name])
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("flag", ["--grpc-port", "--http-port", "--metrics-port"])
def test_a_busy_port_is_a_clear_start_up_error(tmp_path: Path, flag: str) -> None:
    identity_onnx(tmp_path / "repo" / "m" / "1" / "model.onnx", "FP32")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = serve_until_exit(tmp_path / "repo", flag, str(port))
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


IDENTITY_CONFIG = (
    'max_batch_size: {batch}\ninput [{{ name: "INPUT", data_type: TYPE_FP32, dims: [4] }}]\n'
    'output [{{ name: "OUTPUT", data_type: TYPE_FP32, dims: [4] }}]\n'
)


def test_a_named_config_is_chosen_per_model_and_completion_can_be_turned_off(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    for name in ("named", "default", "bare"):
        identity_onnx(repo / name / "1" / "model.onnx", "FP32")
    (repo / "named" / "config.pbtxt").write_text(IDENTITY_CONFIG.format(batch=4))
    (repo / "named" / "configs").mkdir()
    (repo / "named" / "configs" / "small.pbtxt").write_text(IDENTITY_CONFIG.format(batch=2))
    (repo / "default" / "config.pbtxt").write_text(IDENTITY_CONFIG.format(batch=3))
    args = ("--model-config-name", "small", "--disable-auto-complete-config")
    server = start_server(
        repo, tmp_path / "log", *args, "--no-strict-readiness", wait_model="default"
    )
    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            assert client.is_model_ready("named")
            named = client.get_model_config("named", as_json=True)["config"]
            default = client.get_model_config("default", as_json=True)["config"]
            assert identity_infer(client, "named") == [[0.0, 1.0, 2.0, 3.0]]
            index = {m.name: m for m in client.get_model_repository_index().models}
    finally:
        assert server.stop() == 0
    assert named["max_batch_size"] == 2  # configs/small.pbtxt, not config.pbtxt
    assert default["max_batch_size"] == 3  # no configs/small.pbtxt: its config.pbtxt
    assert index["bare"].state == "UNAVAILABLE"
    assert "--disable-auto-complete-config" in index["bare"].reason


IDENTITY_JSON = {
    "backend": "onnxruntime",
    "max_batch_size": 2,
    "input": [{"name": "INPUT", "data_type": "TYPE_FP32", "dims": [4]}],
    "output": [{"name": "OUTPUT", "data_type": "TYPE_FP32", "dims": [4]}],
}


def test_a_load_can_bring_its_own_config_and_files_and_an_unload_its_dependents(
    tmp_path: Path,
) -> None:
    from tests.e2e.stream_models import build_ensemble_models

    repo = tmp_path / "repo"
    identity_onnx(repo / "first" / "1" / "model.onnx", "FP32")
    build_ensemble_models(repo)
    upload = tmp_path / "upload" / "model.onnx"
    identity_onnx(upload, "FP32")
    files = {"file:1/model.onnx": upload.read_bytes()}
    args = ("--model-control-mode", "explicit", "--load-model", "first", "--load-model", "pipeline")
    server = start_server(repo, tmp_path / "log", *args, wait_model="pipeline")
    try:
        client = grpcclient.InferenceServerClient(server.url)
        client.load_model("first", config=json.dumps(IDENTITY_JSON))
        overridden = client.get_model_config("first", as_json=True)["config"]["max_batch_size"]
        client.load_model("first")  # no parameters: the repository again
        again = client.get_model_config("first", as_json=True)["config"]["max_batch_size"]
        client.load_model("uploaded", config=json.dumps(IDENTITY_JSON), files=files)
        uploaded = identity_infer(client, "uploaded")
        http = httpclient.InferenceServerClient(server.http_url)
        http.load_model("uploaded_http", config=json.dumps(IDENTITY_JSON), files=files)
        over_http = identity_infer(client, "uploaded_http")
        refusals = []
        for kwargs in ({"files": files}, {"config": '{"max_batch_size": "many"}'}):
            with pytest.raises(InferenceServerException) as refused:
                client.load_model("uploaded", **kwargs)
            refusals.append(refused.value)
        client.unload_model("uploaded")
        client.unload_model("pipeline", unload_dependents=True)
        steps_ready = [client.is_model_ready(m) for m in ("preprocess", "add_sub", "postprocess")]
        assert identity_infer(client, "first") == [[0.0, 1.0, 2.0, 3.0]]
    finally:
        assert server.stop() == 0
    assert (overridden, again) == (2, 4)  # the override, then config-less completion's 4
    assert uploaded == over_http == [[0.0, 1.0, 2.0, 3.0]]
    assert refusals[0].status() == "StatusCode.INVALID_ARGUMENT"
    assert "need the model config beside them" in refusals[0].message()
    assert "load parameter 'config' is not a model config" in refusals[1].message()
    assert steps_ready == [False, False, False]


# Triton Python model that records when its load starts and ends in LOG, and, named flaky*,
# fails its first load.
LOAD_WATCH = """
import time
from pathlib import Path

import triton_python_backend_utils as pb_utils

LOG = Path({log!r})


class TritonPythonModel:
    def initialize(self, args):
        name = args["model_name"]
        with LOG.open("a") as log:
            log.write(f"start {{name}} {{time.monotonic()}}\\n")
        tried = LOG.parent / f"{{name}}.tried"
        if name.startswith("flaky") and not tried.exists():
            tried.touch()
            raise RuntimeError("the first load fails")
        time.sleep(0.3)
        with LOG.open("a") as log:
            log.write(f"end {{name}} {{time.monotonic()}}\\n")

    def execute(self, requests):
        outputs = [pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy() for r in requests]
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", o)]) for o in outputs]
"""


def test_tritons_address_id_metrics_and_load_flags_take_effect(tmp_path: Path) -> None:
    repo, loads = tmp_path / "repo", tmp_path / "loads.log"
    identity_onnx(repo / "identity" / "1" / "model.onnx", "FP32")
    for name in ("slow_a", "slow_b", "slow_c", "flaky"):
        python_model(repo, name, LOAD_WATCH.format(log=str(loads)), "FP32")
    server = start_server(
        repo,
        tmp_path / "log",
        "--grpc-address=127.0.0.1",
        "--http-address",
        "127.0.0.2",
        "--metrics-address=127.0.0.3",
        "--id=edge-7",
        "--allow-cpu-metrics=false",
        "--model-load-thread-count=1",
        "--model-load-retry-count=1",
    )
    try:
        client = grpcclient.InferenceServerClient(server.url)
        assert client.get_server_metadata().name == "edge-7"
        # Each port on its own address, and only there.
        http = httpclient.InferenceServerClient(f"127.0.0.2:{server.http_port}")
        assert http.get_server_metadata()["name"] == "edge-7"
        assert identity_infer(client, "identity") == [[0.0, 1.0, 2.0, 3.0]]
        metrics = requests.get(f"http://127.0.0.3:{server.metrics_port}/metrics", timeout=10).text
        assert "nv_inference_request_success{" in metrics
        assert "nv_cpu_utilization" not in metrics  # --allow-cpu-metrics=false
        for port in (server.http_port, server.metrics_port):
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
        # The flaky model's failed first load was tried once more, and it serves.
        assert client.is_model_ready("flaky")
        retried = [
            r for r in server.log_records() if r["event"] == "model load failed; trying again"
        ]
        assert [(r["model"], r["attempt"]) for r in retried] == [("flaky", 1)]
        # One model's files at a time: no load began before the one before it ended.
        spans: dict[str, list[float]] = {}
        for line in loads.read_text().splitlines():
            _, name, stamp = line.split()
            spans.setdefault(name, []).append(float(stamp))
        slow = sorted(spans[name] for name in ("slow_a", "slow_b", "slow_c"))
        assert all(len(span) == 2 for span in slow)
        assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(slow))
    finally:
        assert server.stop() == 0


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="needs IPv6 on the loopback interface (::1)")
def test_a_port_listens_on_an_ipv6_address(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    identity_onnx(repo / "identity" / "1" / "model.onnx", "FP32")
    # HTTP on ::1, and metrics, which follow the HTTP address.
    server = start_server(repo, tmp_path / "log", "--http-address=::1")
    try:
        ready = requests.get(f"http://[::1]:{server.http_port}/v2/health/ready", timeout=10)
        assert ready.status_code == 200
        metrics = requests.get(f"http://[::1]:{server.metrics_port}/metrics", timeout=10)
        assert "nv_inference_request_success" in metrics.text
    finally:
        assert server.stop() == 0
