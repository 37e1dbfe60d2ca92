"""Triton's trace extension with Triton's own clients: trace settings over HTTP and gRPC,
Triton's JSON trace file, and perf_analyzer's trace options."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import Server, serving
from tests.e2e.stream_models import stream_client
from tests.e2e.test_observability import grpc_input, http_input, write_repository
from tests.e2e.test_tools import perf_analyzer

CLEAR = dict.fromkeys(("trace_level", "trace_rate", "trace_count", "log_frequency"))
# The timestamps of a request that ran in a batch, between what its transport adds.
SERVED = [
    "REQUEST_START",
    "QUEUE_START",
    "COMPUTE_START",
    "COMPUTE_INPUT_END",
    "COMPUTE_OUTPUT_START",
    "COMPUTE_END",
    "REQUEST_END",
]


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("traces") / "trace.json"


def _two_steps(first: str) -> str:
    """An ensemble of `first`, then `plain` (OUTPUT = INPUT * 2) on its output."""
    return f"""
platform: "ensemble"
max_batch_size: 8
input [{{ name: "INPUT", data_type: TYPE_FP32, dims: [4] }}]
output [{{ name: "OUTPUT", data_type: TYPE_FP32, dims: [4] }}]
ensemble_scheduling {{ step [
  {{ model_name: "{first}", model_version: -1,
    input_map {{ key: "INPUT" value: "INPUT" }} output_map {{ key: "OUTPUT" value: "MID" }} }},
  {{ model_name: "plain", model_version: -1,
    input_map {{ key: "INPUT" value: "MID" }} output_map {{ key: "OUTPUT" value: "OUTPUT" }} }}
] }}
"""


# Two steps of `plain`, one after the other.
TWICE = _two_steps("plain")
# A decoupled ensemble: pair_stream's two responses, each through plain.
PAIR_THEN_PLAIN = _two_steps("pair_stream")


# A Triton Python model that calls `plain` (BLS) under its own request's trace.
CALLER = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            call = pb_utils.InferenceRequest(
                model_name="plain",
                inputs=[pb_utils.get_input_tensor_by_name(request, "INPUT")],
                requested_output_names=["OUTPUT"],
                trace=request.trace(),
            )
            answer = call.exec()
            if answer.has_error():
                raise pb_utils.TritonModelException(answer.error().message())
            responses.append(
                pb_utils.InferenceResponse([pb_utils.get_output_tensor_by_name(answer, "OUTPUT")])
            )
        return responses
"""
CALLER_CONFIG = """
backend: "python"
max_batch_size: 8
input [{ name: "INPUT", data_type: TYPE_FP32, dims: [4] }]
output [{ name: "OUTPUT", data_type: TYPE_FP32, dims: [4] }]
"""
IN_PROCESS = 'parameters { key: "execution" value { string_value: "process" } }\n'
DECOUPLED = "model_transaction_policy { decoupled: true }\n"
# A decoupled model: INPUT, then INPUT * 2, then the final flag.
PAIR_STREAM = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            sender = request.get_response_sender()
            for factor in (1, 2):
                out = pb_utils.Tensor("OUTPUT", value * factor)
                sender.send(pb_utils.InferenceResponse([out]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""
# Calls pair_stream (a decoupled BLS call) under its own request's trace; answers the sum.
STREAM_CALLER = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            call = pb_utils.InferenceRequest(
                model_name="pair_stream",
                inputs=[pb_utils.get_input_tensor_by_name(request, "INPUT")],
                requested_output_names=["OUTPUT"],
                trace=request.trace(),
            )
            total = sum(
                pb_utils.get_output_tensor_by_name(answer, "OUTPUT").as_numpy()
                for answer in call.exec(decoupled=True)
                if pb_utils.get_output_tensor_by_name(answer, "OUTPUT") is not None
            )
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", total)]))
        return responses
"""

# A decoupled model that calls `plain` (BLS) under its request's trace and answers with it.
DECOUPLED_CALLER = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            call = pb_utils.InferenceRequest(
                model_name="plain",
                inputs=[pb_utils.get_input_tensor_by_name(request, "INPUT")],
                requested_output_names=["OUTPUT"],
                trace=request.trace(),
            )
            answer = call.exec()
            sender = request.get_response_sender()
            out = pb_utils.get_output_tensor_by_name(answer, "OUTPUT")
            sender.send(
                pb_utils.InferenceResponse([out]),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
        return None
"""


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, trace_file: Path) -> Iterator[Server]:
    repo = write_repository(tmp_path_factory.mktemp("trace_repo"), ["plain"])
    (repo / "twice" / "1").mkdir(parents=True)
    (repo / "twice" / "config.pbtxt").write_text(TWICE)
    models = {
        "caller": (CALLER, CALLER_CONFIG),
        "caller_process": (CALLER, CALLER_CONFIG + IN_PROCESS),
        "stream_caller": (STREAM_CALLER, CALLER_CONFIG),
        "stream_caller_process": (STREAM_CALLER, CALLER_CONFIG + IN_PROCESS),
        "pair_stream": (PAIR_STREAM, CALLER_CONFIG + DECOUPLED),
        "decoupled_caller": (DECOUPLED_CALLER, CALLER_CONFIG + DECOUPLED),
        "decoupled_caller_process": (DECOUPLED_CALLER, CALLER_CONFIG + DECOUPLED + IN_PROCESS),
    }
    for name, (code, config) in models.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(code)
        (repo / name / "config.pbtxt").write_text(config)
    (repo / "pair_then_plain" / "1").mkdir(parents=True)
    (repo / "pair_then_plain" / "config.pbtxt").write_text(PAIR_THEN_PLAIN)
    with serving(repo, tmp_path_factory, "--trace-file", str(trace_file)) as server:
        yield server


def _triton_defaults(trace_file: Path) -> dict[str, Any]:
    return {
        "trace_file": str(trace_file),
        "trace_level": ["TIMESTAMPS"],
        "trace_rate": "1",
        "trace_count": "-1",
        "log_frequency": "0",
    }


def _wait_for(path: Path) -> list[dict[str, Any]]:
    """The entries of a trace file the server's writer thread is about to write."""
    for _ in range(100):
        if path.exists():
            return list(json.loads(path.read_bytes()))
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written")


def test_settings_are_read_changed_and_cleared_as_on_triton_over_http(
    traced: Server, trace_file: Path
) -> None:
    client = httpclient.InferenceServerClient(traced.http_url)
    defaults = _triton_defaults(trace_file)
    assert client.get_trace_settings() == defaults
    assert client.get_trace_settings(model_name="plain") == defaults
    try:
        own = client.update_trace_settings("plain", {"trace_rate": "12", "log_frequency": "34"})
        assert own == {**defaults, "trace_rate": "12", "log_frequency": "34"}
        server_wide = client.update_trace_settings(
            settings={"trace_rate": "56", "trace_count": "78", "trace_level": ["OFF"]}
        )
        assert server_wide == {
            **defaults,
            "trace_rate": "56",
            "trace_count": "78",
            "trace_level": ["OFF"],
        }
        # The model keeps what it set and follows the server in the rest.
        assert client.get_trace_settings(model_name="plain") == {
            **defaults,
            "trace_rate": "12",
            "log_frequency": "34",
            "trace_count": "78",
            "trace_level": ["OFF"],
        }
        # Cleared settings fall back: the server's to its start, the model's to the server's.
        cleared = client.update_trace_settings(settings={"trace_rate": None, "trace_count": None})
        assert cleared == {**defaults, "trace_level": ["OFF"]}
        model = client.update_trace_settings("plain", {"trace_rate": None, "trace_level": None})
        assert model == {**defaults, "trace_level": ["OFF"], "log_frequency": "34"}
    finally:
        client.update_trace_settings("plain", CLEAR)
        client.update_trace_settings(settings=CLEAR)
    assert client.get_trace_settings(model_name="plain") == defaults

    with pytest.raises(InferenceServerException, match="unknown model: 'nope'"):
        client.get_trace_settings(model_name="nope")
    with pytest.raises(InferenceServerException, match="unknown trace level 'LOUD'") as bad:
        client.update_trace_settings(settings={"trace_level": ["LOUD"]})
    assert bad.value.status() == "400"
    with pytest.raises(InferenceServerException, match="trace_file is fixed"):
        client.update_trace_settings(settings={"trace_file": "/tmp/elsewhere.json"})
    assert client.get_trace_settings() == defaults


def test_settings_over_grpc_are_lists_of_strings_and_errors_are_precise(
    traced: Server, trace_file: Path
) -> None:
    client = grpcclient.InferenceServerClient(traced.url)
    expected = grpcclient.service_pb2.TraceSettingResponse()
    json_format.ParseDict(
        {
            "settings": {
                k: {"value": v if isinstance(v, list) else [v]}
                for k, v in _triton_defaults(trace_file).items()
            }
        },
        expected,
    )
    assert client.get_trace_settings() == expected
    try:
        updated = client.update_trace_settings(
            "plain", {"trace_level": ["TIMESTAMPS", "TENSORS"]}, as_json=True
        )
        assert updated["settings"]["trace_level"]["value"] == ["TIMESTAMPS", "TENSORS"]
    finally:
        client.update_trace_settings("plain", CLEAR)
    stub_error = None
    try:
        client.update_trace_settings("nope", {"trace_rate": "2"})
    except InferenceServerException as exc:
        stub_error = exc
    assert stub_error is not None and stub_error.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="'trace_rate' must be a whole number"):
        client.update_trace_settings(settings={"trace_rate": "0"})


def test_traced_requests_are_written_in_tritons_trace_format_with_their_tensors(
    traced: Server, trace_file: Path
) -> None:
    http_client = httpclient.InferenceServerClient(traced.http_url)
    grpc_client = grpcclient.InferenceServerClient(traced.url)
    http_client.update_trace_settings(
        "plain", {"log_frequency": "1", "trace_level": ["TIMESTAMPS", "TENSORS"]}
    )
    try:
        http_client.infer("plain", [http_input()], headers={"x-request-id": "over-http"})
        first = _wait_for(trace_file.with_name("trace.json.0"))
        grpc_client.infer("plain", [grpc_input(sign=0.5)], request_id="over-grpc")
        second = _wait_for(trace_file.with_name("trace.json.1"))
    finally:
        http_client.update_trace_settings("plain", CLEAR)

    for entries, transport, request_id, value in (
        (first, "HTTP", "over-http", 1.0),
        (second, "GRPC", "over-grpc", 0.5),
    ):
        header, stamps, *tensors = entries
        trace_id = header["id"]
        assert header == {
            "id": trace_id,
            "model_name": "plain",
            "model_version": 1,
            "request_id": request_id,
        }
        names = [s["name"] for s in stamps["timestamps"]]
        received = "GRPC_WAITREAD_END" if transport == "GRPC" else "HTTP_RECV_END"
        assert names == [
            received,
            *SERVED,
            f"{transport}_SEND_START",
            f"{transport}_SEND_END",
        ]
        ns = [s["ns"] for s in stamps["timestamps"]]
        assert ns == sorted(ns) and ns[-1] - ns[0] < 10**10
        assert tensors == [
            {
                "id": trace_id,
                "activity": "TENSOR_QUEUE_INPUT",
                "tensor": {
                    "name": "INPUT",
                    "data": ",".join([str(value)] * 4),
                    "shape": "1,4",
                    "dtype": "FP32",
                },
            },
            {
                "id": trace_id,
                "activity": "TENSOR_BACKEND_OUTPUT",
                "tensor": {
                    "name": "OUTPUT",
                    "data": ",".join([str(value * 2)] * 4),
                    "shape": "1,4",
                    "dtype": "FP32",
                },
            },
        ]


def _traced_alone(
    traced: Server, trace_file: Path, model: str, via: str = "infer"
) -> list[dict[str, Any]]:
    """The entries of the trace file one request to `model` writes (log_frequency 1), sent
    to HTTP /infer, over a gRPC stream ("stream") or to a generate route ("generate",
    "generate_stream")."""
    http_client = httpclient.InferenceServerClient(traced.http_url)
    http_client.update_trace_settings(model, {"log_frequency": "1"})
    before = set(trace_file.parent.glob("trace.json.*"))
    try:
        if via == "stream":
            _stream_once(traced, model)
        elif via.startswith("generate"):
            _generate_once(traced, model, via)
        else:
            http_client.infer(model, [http_input()], headers={"x-request-id": model})
        for _ in range(100):
            written = set(trace_file.parent.glob("trace.json.*")) - before
            if written:
                break
            time.sleep(0.05)
    finally:
        http_client.update_trace_settings(model, CLEAR)
    (path,) = written
    entries: list[dict[str, Any]] = json.loads(path.read_bytes())
    return entries


def _stream_once(traced: Server, model: str) -> None:
    """One request to a decoupled model over a gRPC stream, read to its final response."""
    tensor = grpcclient.InferInput("INPUT", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    client, results = stream_client(traced.url)
    with client:
        client.async_stream_infer(
            model, [tensor], request_id=model, enable_empty_final_response=True
        )
        while True:
            item = results.get(timeout=30)
            assert not isinstance(item, InferenceServerException), item
            if item.get_response().parameters["triton_final_response"].bool_param:
                break
        client.stop_stream()


def _generate_once(traced: Server, model: str, route: str) -> None:
    request = urllib.request.Request(
        f"http://{traced.http_url}/v2/models/{model}/{route}",
        data=json.dumps({"INPUT": [1.0, 2.0, 3.0, 4.0]}).encode(),
        headers={"Content-Type": "application/json", "x-request-id": model},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200 and b"OUTPUT" in response.read()


def _calls_under(
    entries: list[dict[str, Any]],
    model: str,
    called: int,
    callee: str = "plain",
    stamped: list[str] = SERVED,
) -> None:
    """`model`'s trace heads the file, with `called` traces of `callee` under it, each with
    the timestamps `stamped` (by default those of a request served in a batch)."""
    headers = {e["id"]: e for e in entries if "model_name" in e}
    (parent,) = [h for h in headers.values() if h["model_name"] == model]
    steps = [h for h in headers.values() if h["model_name"] == callee]
    assert len(steps) == called and "parent_id" not in parent
    assert all(h["parent_id"] == parent["id"] and h["request_id"] == model for h in steps)
    stamps = {e["id"]: [s["name"] for s in e["timestamps"]] for e in entries if "timestamps" in e}
    for step in steps:
        assert stamps[step["id"]] == stamped


def test_an_ensemble_s_steps_are_traced_under_its_trace(traced: Server, trace_file: Path) -> None:
    _calls_under(_traced_alone(traced, trace_file, "twice"), "twice", 2)


@pytest.mark.parametrize("model", ["caller", "caller_process"])
def test_a_bls_call_is_traced_under_the_request_that_made_it(
    traced: Server, trace_file: Path, model: str
) -> None:
    _calls_under(_traced_alone(traced, trace_file, model), model, 1)


@pytest.mark.parametrize("model", ["stream_caller", "stream_caller_process"])
def test_a_decoupled_bls_call_is_traced_under_the_request_that_made_it(
    traced: Server, trace_file: Path, model: str
) -> None:
    entries = _traced_alone(traced, trace_file, model)
    _calls_under(entries, model, 1, "pair_stream", ["REQUEST_START", "REQUEST_END"])


@pytest.mark.parametrize("model", ["decoupled_caller", "decoupled_caller_process"])
def test_a_bls_call_from_a_decoupled_model_is_traced_under_the_request_that_made_it(
    traced: Server, trace_file: Path, model: str
) -> None:
    _calls_under(_traced_alone(traced, trace_file, model, via="stream"), model, 1)


def test_a_decoupled_ensemble_traces_its_decoupled_step_and_each_run_after_it(
    traced: Server, trace_file: Path
) -> None:
    entries = _traced_alone(traced, trace_file, "pair_then_plain", via="stream")
    _calls_under(entries, "pair_then_plain", 1, "pair_stream", ["REQUEST_START", "REQUEST_END"])
    _calls_under(entries, "pair_then_plain", 2)  # plain, once per response of pair_stream


@pytest.mark.parametrize(
    ("model", "route", "stamped"),
    [
        ("plain", "generate", ["HTTP_RECV_END", *SERVED]),
        ("pair_stream", "generate_stream", ["HTTP_RECV_END", "REQUEST_START", "REQUEST_END"]),
    ],
)
def test_the_generate_routes_trace_their_requests(
    traced: Server, trace_file: Path, model: str, route: str, stamped: list[str]
) -> None:
    entries = _traced_alone(traced, trace_file, model, via=route)
    (header,) = [e for e in entries if "model_name" in e]
    (stamps,) = [[s["name"] for s in e["timestamps"]] for e in entries if "timestamps" in e]
    assert header["model_name"] == model and header["request_id"] == model
    assert stamps == stamped


def test_a_decoupled_request_is_traced_from_its_read_to_its_last_response(
    traced: Server, trace_file: Path
) -> None:
    entries = _traced_alone(traced, trace_file, "pair_stream", via="stream")
    (header,) = [e for e in entries if "model_name" in e]
    (stamps,) = [[s["name"] for s in e["timestamps"]] for e in entries if "timestamps" in e]
    assert header["model_name"] == "pair_stream" and header["request_id"] == "pair_stream"
    assert stamps == [
        "GRPC_WAITREAD_END",
        "REQUEST_START",
        "REQUEST_END",
        "GRPC_SEND_START",
        "GRPC_SEND_END",
    ]


def test_perf_analyzer_trace_options_are_obeyed_and_unwritten_traces_are_written_at_exit(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    trace_file = tmp_path_factory.mktemp("pa_traces") / "trace.json"
    repo = write_repository(tmp_path_factory.mktemp("pa_trace_repo"), ["plain", "batched"])
    with serving(repo, tmp_path_factory, "--trace-file", str(trace_file)) as server:
        perf_analyzer(
            server,
            "plain",
            "--input-data",
            "zero",
            "--trace-level",
            "TIMESTAMPS",
            "--trace-rate",
            "5",
            "--trace-count",
            "4",
            "--log-frequency",
            "2",
        )
        client = httpclient.InferenceServerClient(server.http_url)
        # perf_analyzer changes the server's settings, as on Triton, and spends the count.
        assert client.get_trace_settings() == {
            **_triton_defaults(trace_file),
            "trace_rate": "5",
            "trace_count": "0",
            "log_frequency": "2",
        }
        numbered = _wait_for(trace_file.with_name("trace.json.0")) + _wait_for(
            trace_file.with_name("trace.json.1")
        )
        # Three requests with the start settings again (log_frequency 0): kept until exit.
        client.update_trace_settings(settings=CLEAR)

        def infer(_: int) -> None:  # a client each: tritonclient's HTTP client is per thread
            httpclient.InferenceServerClient(server.http_url).infer("batched", [http_input()])

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(infer, range(3)))
        assert not trace_file.exists()
    headers = [e for e in numbered if "model_name" in e]
    assert len(headers) == 4 and {h["model_name"] for h in headers} == {"plain"}
    assert not trace_file.with_name("trace.json.2").exists()
    at_exit = json.loads(trace_file.read_bytes())
    assert [e["model_name"] for e in at_exit if "model_name" in e] == ["batched"] * 3
