"""Instances in processes of their own (`execution: process`): tensors, BYTES included, cross
through shared memory; a child that dies fails only its batch and the next batch runs on a
new one; nothing is left in /dev/shm after shutdown."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import instance_children, kill_children_and_await_failure, serving
from tests.e2e.stream_models import cancel_after_two_responses, repeat_inputs, stream_client
from tests.e2e.triton_models import (
    ADD_SUB,
    BLS,
    BLS_ASYNC,
    EXAMPLES,
    check_error_responses_fail_alone,
    pair,
    python_config,
)

MODEL = """
import os
import numpy as np

class Model:
    def execute(self, inputs):
        x = inputs["INPUT"]
        words = np.array([[str(os.getpid()).encode()]] * x.shape[0], dtype=object)
        return {"OUTPUT": x * 2, "PID": words}
"""
CONFIG = """
backend: "python"
max_batch_size: 8
input [{ name: "INPUT", data_type: TYPE_FP32, dims: [-1] }]
output [{ name: "OUTPUT", data_type: TYPE_FP32, dims: [-1] },
        { name: "PID", data_type: TYPE_STRING, dims: [1] }]
parameters { key: "execution" value { string_value: "process" } }
"""


def _infer(client: grpcclient.InferenceServerClient, width: int) -> tuple[np.ndarray, int]:
    tensor = grpcclient.InferInput("INPUT", [1, width], "FP32")
    tensor.set_data_from_numpy(np.arange(width, dtype=np.float32).reshape(1, width))
    result = client.infer("separate", [tensor])
    return result.as_numpy("OUTPUT"), int(result.as_numpy("PID")[0, 0])


def _shm_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").iterdir() if p.name.startswith("psm_")}


def test_a_process_instance_serves_heals_and_cleans_up(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("process_instances")
    (root / "separate" / "1").mkdir(parents=True)
    (root / "separate" / "1" / "model.py").write_text(MODEL)
    (root / "separate" / "config.pbtxt").write_text(CONFIG)
    before = _shm_segments()
    with (
        serving(root, tmp_path_factory) as server,
        grpcclient.InferenceServerClient(server.url) as client,
    ):
        small, pid = _infer(client, 4)
        np.testing.assert_array_equal(small, [[0, 2, 4, 6]])
        assert pid not in (os.getpid(), server.process.pid)  # another process ran it
        # Behind the server's event loop for a shared core (--process-nice, 10 by default).
        behind = min(19, os.getpriority(os.PRIO_PROCESS, server.process.pid) + 10)
        assert os.getpriority(os.PRIO_PROCESS, pid) == behind
        # Bigger than the first slabs: they grow, and the answer is still right.
        big, same_pid = _infer(client, 600_000)
        assert same_pid == pid and big[0, -1] == 2 * 599_999
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        with pytest.raises(InferenceServerException, match=r"process instance .* died") as info:
            _infer(client, 4)
        assert info.value.status() == "StatusCode.INTERNAL"
        again, new_pid = _infer(client, 4)
        assert new_pid != pid and os.getpriority(os.PRIO_PROCESS, new_pid) == behind
        np.testing.assert_array_equal(again, small)
    assert _shm_segments() <= before
    assert re.search(r"restarting process instance", server.output())


def test_inline_execution_serves_an_onnx_model_and_is_refused_for_python_code(
    test_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import shutil

    root = tmp_path_factory.mktemp("inline")
    shutil.copytree(test_repository / "add_sub", root / "add_sub")
    config = root / "add_sub" / "config.pbtxt"
    config.write_text(
        config.read_text() + 'parameters { key: "execution" value { string_value: "inline" } }\n'
    )
    (root / "python_inline" / "1").mkdir(parents=True)
    (root / "python_inline" / "1" / "model.py").write_text(MODEL)
    (root / "python_inline" / "config.pbtxt").write_text(CONFIG.replace('"process"', '"inline"'))
    with (
        serving(root, tmp_path_factory, wait_model="add_sub") as server,
        grpcclient.InferenceServerClient(server.url) as client,
    ):
        inputs = []
        for name in ("INPUT0", "INPUT1"):
            tensor = grpcclient.InferInput(name, [1, 16], "FP32")
            tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
            inputs.append(tensor)
        result = client.infer("add_sub", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 16), 2.0))
        deadline = time.monotonic() + 30
        reason = ""
        while time.monotonic() < deadline and not reason:
            index = client.get_model_repository_index(as_json=True)["models"]
            reason = next((m.get("reason", "") for m in index if m["name"] == "python_inline"), "")
            time.sleep(0.1)
        assert "execution: inline is not possible" in reason
        assert "Python model code would hold the event loop" in reason


# BLS to a decoupled model: the sum of every OUT that repeat_int32 streams back for IN.
STREAM_BLS = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy().reshape(-1)
            call = pb_utils.InferenceRequest(
                model_name="repeat_int32",
                requested_output_names=["OUT"],
                inputs=[
                    pb_utils.Tensor("IN", values.astype(np.int32)),
                    pb_utils.Tensor("DELAY", np.zeros(len(values), np.uint32)),
                    pb_utils.Tensor("WAIT", np.zeros(1, np.uint32)),
                ],
            )
            total, count = 0, 0
            for answer in call.exec(decoupled=True):
                if answer.has_error():
                    raise pb_utils.TritonModelException(answer.error().message())
                out = pb_utils.get_output_tensor_by_name(answer, "OUT")
                if out is not None:
                    total += int(out.as_numpy()[0])
                    count += 1
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("SUM", np.array([total], np.int32)),
                pb_utils.Tensor("COUNT", np.array([count], np.int32)),
            ]))
        return responses
"""
STREAM_BLS_CONFIG = """
backend: "python"
max_batch_size: 0
input [{ name: "IN", data_type: TYPE_INT32, dims: [-1] }]
output [{ name: "SUM", data_type: TYPE_INT32, dims: [1] },
        { name: "COUNT", data_type: TYPE_INT32, dims: [1] }]
parameters { key: "execution" value { string_value: "process" } }
"""
# BLS to a model that does not exist: the error comes back as an error response.
MISSING_BLS = BLS.replace('model_name="add_sub"', 'model_name="no_such_model"')


def _triton_repository(root: Path, test_repository: Path) -> None:
    import shutil

    process = '\nparameters { key: "execution" value { string_value: "process" } }\n'
    shutil.copytree(test_repository / "add_sub", root / "add_sub")
    shutil.copytree(EXAMPLES / "repeat_int32", root / "repeat_int32")
    models = {
        "bls_in_process": (python_config("FP32") + process, BLS),
        "bls_async_in_process": (python_config("FP32") + process, BLS_ASYNC),
        "add_sub_in_process": (
            python_config("FP32", extra="dynamic_batching { }") + process,
            ADD_SUB,
        ),
        "missing_bls_in_process": (python_config("FP32") + process, MISSING_BLS),
        "stream_bls_in_process": (STREAM_BLS_CONFIG, STREAM_BLS),
    }
    for name, (config, code) in models.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(config)
        (root / name / "1" / "model.py").write_text(code)


def test_python_backend_models_in_processes_call_models_through_the_server(
    test_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("process_bls")
    _triton_repository(root, test_repository)
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.float32)
    with (
        serving(root, tmp_path_factory) as server,
        grpcclient.InferenceServerClient(server.url) as client,
    ):
        for model in ("bls_in_process", "bls_async_in_process"):
            result = client.infer(model, pair("FP32", a, b))
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        # The calls went through the data plane: counted as add_sub's own requests.
        stats = client.get_inference_statistics("add_sub", as_json=True)["model_stats"][0]
        assert int(stats["inference_count"]) == 3  # one call, then two at once

        values = np.array([3, 5, 7, 11], np.int32)
        tensor = grpcclient.InferInput("IN", [4], "INT32")
        tensor.set_data_from_numpy(values)
        streamed = client.infer("stream_bls_in_process", [tensor])
        assert int(streamed.as_numpy("SUM")[0]) == int(values.sum())
        assert int(streamed.as_numpy("COUNT")[0]) == len(values)

        with pytest.raises(InferenceServerException, match="no_such_model"):
            client.infer("missing_bls_in_process", pair("FP32", a, b))
        # Still serving after a failed call.
        again = client.infer("bls_in_process", pair("FP32", a, b))
        np.testing.assert_array_equal(again.as_numpy("OUTPUT0"), a + b)


def test_an_error_response_in_a_process_instance_fails_only_its_own_request(
    test_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("process_errors")
    _triton_repository(root, test_repository)
    with serving(root, tmp_path_factory) as server:
        check_error_responses_fail_alone(server.url, "add_sub_in_process")


PROCESS = '\nparameters { key: "execution" value { string_value: "process" } }\n'


def _decoupled_repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A repository of two decoupled models in process instances, and the file where the
    generator model counts its steps and closes."""
    from tests.e2e.stream_models import REPEAT_CONFIG, REPEAT_MODEL

    root = tmp_path_factory.mktemp("process_decoupled")
    counter = root / "counter.log"
    counter.write_text("")
    (root / "generator_in_process" / "1").mkdir(parents=True)
    (root / "generator_in_process" / "1" / "model.py").write_text(REPEAT_MODEL)
    (root / "generator_in_process" / "config.pbtxt").write_text(
        REPEAT_CONFIG.format(counter=counter) + PROCESS
    )
    (root / "sender_in_process" / "1").mkdir(parents=True)
    (root / "sender_in_process" / "1" / "model.py").write_text(
        (EXAMPLES / "repeat_int32" / "1" / "model.py").read_text()
    )
    (root / "sender_in_process" / "config.pbtxt").write_text(
        (EXAMPLES / "repeat_int32" / "config.pbtxt")
        .read_text()
        .replace('name: "repeat_int32"', 'name: "sender_in_process"')
        + PROCESS
    )
    return root, counter


def _streamed(url: str, model: str, values: list[int], delay_ms: int) -> list[int]:
    """OUT of every response of one streamed request, in order (the final one ends it)."""
    client, results = stream_client(url)
    with client:
        client.async_stream_infer(
            model, repeat_inputs(values, delay_ms, 0), enable_empty_final_response=True
        )
        outs: list[int] = []
        while True:
            item = results.get(timeout=60)
            if isinstance(item, InferenceServerException):
                raise item
            response = item.get_response()  # type: ignore[attr-defined]
            if response.parameters["triton_final_response"].bool_param:
                return outs
            outs.append(int(item.as_numpy("OUT")[0]))  # type: ignore[attr-defined]


def test_decoupled_models_stream_from_process_instances(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    root, _ = _decoupled_repository(tmp_path_factory)
    with serving(root, tmp_path_factory) as server:
        for model in ("generator_in_process", "sender_in_process"):
            assert _streamed(server.url, model, list(range(20)), 0) == list(range(20))
            # Several streams at once, interleaved by their delays: each gets its own, in order.
            asks = [list(range(base, base + 8)) for base in (100, 200, 300, 400)]
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda v, m=model: _streamed(server.url, m, v, 5), asks))
            assert answers == asks


def test_a_cancelled_stream_stops_its_generator_in_the_child(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root, counter = _decoupled_repository(tmp_path_factory)
    with serving(root, tmp_path_factory) as server:
        lines = cancel_after_two_responses(server.url, "generator_in_process", counter)
        assert lines.count("closed") == 1
        # The window lets the child run a few steps ahead of the reader, never the rest.
        assert 2 <= lines.count("step") < 12, lines
        # And the instance serves the next stream.
        assert _streamed(server.url, "generator_in_process", [1, 2, 3], 0) == [1, 2, 3]


def test_a_child_that_dies_mid_stream_fails_that_stream_and_is_replaced(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root, _ = _decoupled_repository(tmp_path_factory)
    with serving(root, tmp_path_factory) as server:
        before = set(instance_children(server.process.pid))
        client, results = stream_client(server.url)
        with client:
            client.async_stream_infer("sender_in_process", repeat_inputs(list(range(100)), 50, 0))
            assert not isinstance(results.get(timeout=30), InferenceServerException)
            assert "died" in kill_children_and_await_failure(server, results)
            client.stop_stream()
        assert _streamed(server.url, "sender_in_process", [4, 5], 0) == [4, 5]
        assert not before & set(instance_children(server.process.pid))
