"""Triton Python-backend model files served unchanged, driven by tritonclient."""

from __future__ import annotations

import queue
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import Server, start_server
from tests.e2e.models import identity_onnx
from tests.e2e.triton_models import AUTO_COMPLETE, check_error_responses_fail_alone, pair

pytestmark = pytest.mark.slow

# A config line that places the model's instances in processes of their own.
IN_PROCESS = 'parameters { key: "execution" value { string_value: "process" } }\n'


def _in_both_placements(repo: Path, names: tuple[str, str], code: str, config: str) -> None:
    """The same model twice: the first name in instance threads, the second in processes."""
    for name, placement in zip(names, ("", IN_PROCESS), strict=True):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(code)
        (repo / name / "config.pbtxt").write_text(config + placement)


@pytest.mark.parametrize("model", ["triton_add_sub", "triton_bls", "triton_bls_async"])
def test_add_sub_directly_and_through_bls(stream_server: Server, model: str) -> None:
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.float32)
    with grpcclient.InferenceServerClient(stream_server.url) as client:
        result = client.infer(model, pair("FP32", a, b))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_a_model_completes_its_own_config_as_in_triton(stream_server: Server) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    with grpcclient.InferenceServerClient(stream_server.url) as client:
        config = client.get_model_config("triton_auto_complete", as_json=True)["config"]
        result = client.infer("triton_auto_complete", pair("FP32", a, a))
        index = client.get_model_repository_index(as_json=True)["models"]
    assert config["max_batch_size"] == 8 and "dynamic_batching" in config
    assert [(t["name"], t["dims"]) for t in config["input"]] == [
        ("INPUT0", ["4"]),
        ("INPUT1", ["4"]),
    ]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)
    conflict = next(m for m in index if m["name"] == "triton_auto_complete_conflict")
    assert conflict["state"] == "UNAVAILABLE"
    assert (
        "configuration specified max_batch_size 2, but in auto-complete-config"
        in (conflict["reason"])
    )


def test_a_kind_model_instance_is_told_its_kind(stream_server: Server) -> None:
    tensor = grpcclient.InferInput("ANY", [1], "INT32")
    tensor.set_data_from_numpy(np.array([0], dtype=np.int32))
    with grpcclient.InferenceServerClient(stream_server.url) as client:
        result = client.infer("triton_kind_model", [tensor])
    assert result.as_numpy("KIND").tolist() == [b"MODEL"]


def test_an_error_response_fails_only_its_own_request(stream_server: Server) -> None:
    check_error_responses_fail_alone(stream_server.url, "triton_add_sub")


def test_string_model_like_the_simple_string_example(stream_server: Server) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    encode = np.vectorize(lambda v: str(v).encode(), otypes=[object])
    with grpcclient.InferenceServerClient(stream_server.url) as client:
        result = client.infer("simple_string", pair("BYTES", encode(a), encode(b)))
    assert [int(v) for v in result.as_numpy("OUTPUT0")[0]] == list((a + b)[0])
    assert [int(v) for v in result.as_numpy("OUTPUT1")[0]] == list((a - b)[0])


def test_int8_model_with_explicit_int_contents(stream_server: Server) -> None:
    # As Triton's explicit int8 content example: typed contents, no raw bytes.
    request = service_pb2.ModelInferRequest(model_name="simple_int8")
    for name, values in (("INPUT0", range(16)), ("INPUT1", [1] * 16)):
        tensor = request.inputs.add(name=name, datatype="INT8", shape=[1, 16])
        tensor.contents.int_contents.extend(values)
    with grpc.insecure_channel(stream_server.url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    outputs = {o.name: i for i, o in enumerate(response.outputs)}
    raw = response.raw_output_contents
    total = np.frombuffer(raw[outputs["OUTPUT0"]], dtype=np.int8)
    difference = np.frombuffer(raw[outputs["OUTPUT1"]], dtype=np.int8)
    assert list(total) == [v + 1 for v in range(16)]
    assert list(difference) == [v - 1 for v in range(16)]


def test_decoupled_model_answers_through_its_response_sender(stream_server: Server) -> None:
    results: queue.Queue[Any] = queue.Queue()
    values = np.arange(10, 16, dtype=np.int32)
    inputs = [
        grpcclient.InferInput("IN", [6], "INT32"),
        grpcclient.InferInput("DELAY", [6], "UINT32"),
        grpcclient.InferInput("WAIT", [1], "UINT32"),
    ]
    inputs[0].set_data_from_numpy(values)
    inputs[1].set_data_from_numpy(np.full(6, 5, dtype=np.uint32))
    inputs[2].set_data_from_numpy(np.zeros(1, dtype=np.uint32))
    with grpcclient.InferenceServerClient(stream_server.url) as client:
        client.start_stream(callback=lambda result, error: results.put(error or result))
        client.async_stream_infer("triton_repeat_int32", inputs, enable_empty_final_response=True)
        received = [results.get(timeout=30) for _ in range(7)]
    outputs = [r.as_numpy("OUT") for r in received]
    assert [int(o[0]) for o in outputs[:-1]] == list(values)
    assert outputs[-1] is None
    assert received[-1].get_response().parameters["triton_final_response"].bool_param


# BLS model loading: the model loads, unloads and checks other models by name.
LOADER = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            op, name = (
                v.decode() for v in pb_utils.get_input_tensor_by_name(request, "OP").as_numpy()
            )
            try:
                if op == "load":
                    pb_utils.load_model(name)
                elif op == "load_small":
                    pb_utils.load_model(name, config=json.dumps({"max_batch_size": 2}))
                elif op == "unload":
                    pb_utils.unload_model(name)
                ready = np.array([pb_utils.is_model_ready(name)])
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("READY", ready)]))
            except pb_utils.TritonModelException as exc:
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(exc.message()))
                )
        return responses
"""
LOADER_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "OP", data_type: TYPE_STRING, dims: [ 2 ] } ]
output [ { name: "READY", data_type: TYPE_BOOL, dims: [ 1 ] } ]
"""


def test_model_code_loads_and_unloads_models_in_threads_and_processes(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    identity_onnx(repo / "target" / "1" / "model.onnx", "FP32")
    _in_both_placements(repo, ("loader", "loader_process"), LOADER, LOADER_CONFIG)
    args = ("--model-control-mode", "explicit", "--load-model", "loader")
    server = start_server(repo, tmp_path / "log", *args, "--load-model", "loader_process")

    def ask(client: grpcclient.InferenceServerClient, loader: str, op: str, name: str) -> bool:
        tensor = grpcclient.InferInput("OP", [2], "BYTES")
        tensor.set_data_from_numpy(np.array([op.encode(), name.encode()], dtype=np.object_))
        return bool(client.infer(loader, [tensor]).as_numpy("READY")[0])

    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            before = ask(client, "loader", "ready", "target")
            loaded = ask(client, "loader", "load", "target")
            seen = client.is_model_ready("target")
            unloaded = ask(client, "loader_process", "unload", "target")
            small = ask(client, "loader_process", "load_small", "target")
            batch = client.get_model_config("target", as_json=True)["config"]["max_batch_size"]
            with pytest.raises(InferenceServerException) as missing:
                ask(client, "loader", "load", "missing")
            # A model asking for its own unload or reload would wait for itself: refused.
            with pytest.raises(InferenceServerException, match="cannot unload itself"):
                ask(client, "loader", "unload", "loader")
            with pytest.raises(InferenceServerException, match="cannot load itself"):
                ask(client, "loader_process", "load", "loader_process")
            assert client.is_model_ready("loader") and client.is_model_ready("loader_process")
    finally:
        assert server.stop() == 0
    assert (before, loaded, seen, unloaded, small, batch) == (False, True, True, False, True, 2)
    assert "not in the repository" in missing.value.message()


# Custom metrics, as Triton's Python backend defines them: made in initialize, updated per
# request; one model name per placement, each in its own label.
METERED = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        where = args["model_name"]
        requests = pb_utils.MetricFamily(
            "custom_requests", "requests seen by model code", pb_utils.MetricFamily.COUNTER
        )
        self.requests = requests.Metric(labels={"model": where})
        self.last = pb_utils.MetricFamily(
            "custom_last_value", "the last X", pb_utils.MetricFamily.GAUGE
        ).Metric(labels={"model": where})
        self.sizes = pb_utils.MetricFamily(
            "custom_x", "X values", pb_utils.MetricFamily.HISTOGRAM
        ).Metric(labels={"model": where}, buckets=[1.0, 10.0])

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            self.requests.increment(1)
            self.last.set(float(x[0]))
            self.sizes.observe(float(x[0]))
            try:
                self.requests.set(0)
                refused = ""
            except pb_utils.TritonModelException as exc:
                refused = exc.message()
            seen = np.array([self.requests.value()], np.float64)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("SEEN", seen),
                     pb_utils.Tensor("REFUSED", np.array([refused.encode()], np.object_))]
                )
            )
        return responses
"""
METERED_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "X", data_type: TYPE_FP32, dims: [ 1 ] } ]
output [ { name: "SEEN", data_type: TYPE_FP64, dims: [ 1 ] },
         { name: "REFUSED", data_type: TYPE_STRING, dims: [ 1 ] } ]
"""


def test_model_code_defines_metrics_served_on_metrics_from_threads_and_processes(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    _in_both_placements(repo, ("metered", "metered_process"), METERED, METERED_CONFIG)
    server = start_server(repo, tmp_path / "log")
    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            answers = {}
            for name in ("metered", "metered_process"):
                for value in (0.5, 5.0, 50.0):
                    tensor = grpcclient.InferInput("X", [1], "FP32")
                    tensor.set_data_from_numpy(np.array([value], np.float32))
                    answers[name] = client.infer(name, [tensor])
        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    finally:
        assert server.stop() == 0
    for name in ("metered", "metered_process"):
        assert answers[name].as_numpy("SEEN")[0] == 3.0  # value() read the server's count
        assert answers[name].as_numpy("REFUSED")[0] == b"set is supported on gauge metrics only"
        samples = {
            (s.name, s.labels.get("le", "")): s.value
            for family in ("custom_requests", "custom_last_value", "custom_x")
            for s in families[family].samples
            if s.labels.get("model") == name
        }
        assert samples == {
            ("custom_requests_total", ""): 3.0,
            ("custom_last_value", ""): 50.0,
            ("custom_x_bucket", "1.0"): 1.0,
            ("custom_x_bucket", "10.0"): 2.0,
            ("custom_x_bucket", "+Inf"): 3.0,
            ("custom_x_count", ""): 3.0,
            ("custom_x_sum", ""): 55.5,
        }
    assert families["custom_requests"].documentation == "requests seen by model code"


# Each import of the model file leaves the importing process's id beside it.
IMPORTS_LOGGED = """
import os
import pathlib

with (pathlib.Path(__file__).parent / "imports.log").open("a") as log:
    log.write(f"{os.getpid()}\\n")
"""


def test_a_model_placed_in_processes_completes_its_config_outside_the_server(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    _in_both_placements(repo, ("in_thread", "in_process"), IMPORTS_LOGGED + AUTO_COMPLETE, "")
    server = start_server(repo, tmp_path / "log")
    a = np.ones((1, 4), dtype=np.float32)
    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            for name in ("in_thread", "in_process"):
                result = client.infer(name, pair("FP32", a, a)).as_numpy("OUTPUT0")
                np.testing.assert_array_equal(result, a + a)
                assert client.get_model_config(name).config.max_batch_size == 8
    finally:
        assert server.stop() == 0

    def importers(name: str) -> list[int]:
        return [int(line) for line in (repo / name / "1" / "imports.log").read_text().split()]

    assert set(importers("in_thread")) == {server.process.pid}  # completed and served here
    in_process = importers("in_process")
    assert len(set(in_process)) == 2 and server.process.pid not in in_process


# Each request of a dynamic batch as Triton hands it: its own id, parameters and requested
# outputs, beside the inputs.
ECHO_REQUEST = """
import json
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.05)  # long enough for the other clients' requests to queue behind it
        responses = []
        for request in requests:
            described = {
                "id": request.request_id(),
                "parameters": json.loads(request.parameters()),
                "wanted": sorted(request.requested_output_names()),
                "batch": len(requests),
            }
            text = np.array([[json.dumps(described).encode()]], np.object_)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("DESCRIBED", text), pb_utils.Tensor("OTHER", text)]
                )
            )
        return responses
"""
ECHO_REQUEST_CONFIG = """
backend: "python"
max_batch_size: 8
input [ { name: "X", data_type: TYPE_INT32, dims: [ 1 ] } ]
output [ { name: "DESCRIBED", data_type: TYPE_STRING, dims: [ 1 ] },
         { name: "OTHER", data_type: TYPE_STRING, dims: [ 1 ] } ]
dynamic_batching { }
"""


def test_each_request_of_a_dynamic_batch_keeps_its_id_parameters_and_outputs(
    tmp_path: Path,
) -> None:
    import json
    from concurrent.futures import ThreadPoolExecutor

    repo = tmp_path / "repo"
    _in_both_placements(repo, ("echo", "echo_process"), ECHO_REQUEST, ECHO_REQUEST_CONFIG)
    server = start_server(repo, tmp_path / "log")

    def ask(model: str, index: int) -> dict[str, Any]:
        tensor = grpcclient.InferInput("X", [1, 1], "INT32")
        tensor.set_data_from_numpy(np.array([[index]], dtype=np.int32))
        with grpcclient.InferenceServerClient(server.url) as client:
            result = client.infer(
                model,
                [tensor],
                request_id=f"r{index}",
                timeout=60_000_000,  # the server's own parameter: the model does not see it
                parameters={"top_k": index, "label": f"n{index}", "greedy": index % 2 == 0},
                outputs=[grpcclient.InferRequestedOutput("DESCRIBED")],
            )
        described: dict[str, Any] = json.loads(result.as_numpy("DESCRIBED")[0, 0])
        return described

    try:
        for model in ("echo", "echo_process"):
            with ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(lambda i, m=model: ask(m, i), range(6)))
            for index, described in enumerate(answers):
                assert described["id"] == f"r{index}", described
                assert described["parameters"] == {
                    "top_k": index,
                    "label": f"n{index}",
                    "greedy": index % 2 == 0,
                }
                assert described["wanted"] == ["DESCRIBED"]
    finally:
        assert server.stop() == 0


# A long computation that stops when its client is gone, as Triton's non-decoupled models
# may: it checks `request.is_cancelled()` and records what it saw in a file beside it.
PATIENT = """
import time
from pathlib import Path
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.record = Path(args["model_repository"]) / "seen.txt"

    def execute(self, requests):
        request = requests[0]
        wait = float(pb_utils.get_input_tensor_by_name(request, "SECONDS").as_numpy()[0, 0])
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not request.is_cancelled():
            time.sleep(0.01)
        with self.record.open("a") as record:
            record.write(f"{request.request_id()} {request.is_cancelled()}\\n")
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("DONE", np.array([[1]], np.int32))])
            for _ in requests
        ]
"""
PATIENT_CONFIG = """
backend: "python"
max_batch_size: 1
input [ { name: "SECONDS", data_type: TYPE_FP32, dims: [ 1 ] } ]
output [ { name: "DONE", data_type: TYPE_INT32, dims: [ 1 ] } ]
"""


def test_model_code_sees_a_request_its_client_gave_up_on_as_cancelled(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _in_both_placements(repo, ("patient", "patient_process"), PATIENT, PATIENT_CONFIG)
    server = start_server(repo, tmp_path / "log")

    def wait(client: Any, model: str, seconds: float, **kw: Any) -> Any:
        tensor = grpcclient.InferInput("SECONDS", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.array([[seconds]], dtype=np.float32))
        return client.infer(model, [tensor], **kw)

    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            for model in ("patient", "patient_process"):
                with pytest.raises(InferenceServerException, match="Deadline"):
                    wait(client, model, 60, request_id="gave-up", client_timeout=0.5)
                # The model stopped at once: the next request is not stuck behind 60 s.
                assert wait(client, model, 0.0, request_id="kept", client_timeout=30).as_numpy(
                    "DONE"
                ).tolist() == [[1]]
                seen = (repo / model / "seen.txt").read_text().split("\n")
                assert seen[:2] == ["gave-up True", "kept False"], seen
    finally:
        assert server.stop() == 0


def test_headers_matching_the_forward_patterns_reach_the_model_as_parameters(
    tmp_path: Path,
) -> None:
    import json

    import requests

    repo = tmp_path / "repo"
    (repo / "echo" / "1").mkdir(parents=True)
    (repo / "echo" / "1" / "model.py").write_text(ECHO_REQUEST)
    (repo / "echo" / "config.pbtxt").write_text(ECHO_REQUEST_CONFIG)
    server = start_server(
        repo,
        tmp_path / "log",
        "--grpc-header-forward-pattern=^x-tenant",
        "--http-header-forward-pattern",
        "TENANT",  # searched in the name, case-insensitively
    )
    tensor = grpcclient.InferInput("X", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[1]], dtype=np.int32))
    headers = {"x-tenant": "acme", "x-tenant-tier": "gold", "x-other": "no"}

    def described(result: Any) -> dict[str, Any]:
        return json.loads(result.as_numpy("DESCRIBED")[0, 0])["parameters"]  # type: ignore[no-any-return]

    try:
        with grpcclient.InferenceServerClient(server.url) as client:
            unary = described(client.infer("echo", [tensor], headers=headers))
            assert unary == {"x-tenant": "acme", "x-tenant-tier": "gold"}
            # A parameter the request sets itself keeps its value.
            own = client.infer("echo", [tensor], headers=headers, parameters={"x-tenant": "own"})
            assert described(own)["x-tenant"] == "own"
            answers: queue.Queue[Any] = queue.Queue()
            client.start_stream(lambda result, error: answers.put(error or result), headers=headers)
            for _ in range(2):  # the stream's metadata goes with each of its requests
                client.async_stream_infer("echo", [tensor])
            streamed = [described(answers.get(timeout=30)) for _ in range(2)]
            client.stop_stream()
            assert streamed == [{"x-tenant": "acme", "x-tenant-tier": "gold"}] * 2
        body = {"inputs": [{"name": "X", "shape": [1, 1], "datatype": "INT32", "data": [1]}]}
        answer = requests.post(
            f"http://{server.http_url}/v2/models/echo/infer",
            json=body,
            headers={"X-Tenant": "acme", "X-Other": "no"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        text = answer.json()["outputs"][0]["data"][0]
        assert json.loads(text)["parameters"] == {"x-tenant": "acme"}
    finally:
        assert server.stop() == 0
