"""Misbehaving models fail only their own requests: a hung batch past the model's timeout
(its instance replaced), and outputs of the wrong type, shape or name."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import Server, serving

# Negative input: the batch hangs (bounded, so the abandoned thread ends by itself).
HANGS = """
import threading

class Model:
    def execute(self, inputs):
        if inputs["INPUT"].reshape(-1)[0] < 0:
            threading.Event().wait(20)
        return {"OUTPUT": inputs["INPUT"] * 2}
"""

# What it returns depends on the first element: 1 wrong type, 2 wrong shape, 3 no output.
WRONG_OUTPUTS = """
import numpy as np

class Model:
    def execute(self, inputs):
        x = inputs["INPUT"]
        kind = int(x.reshape(-1)[0])
        if kind == 1:
            return {"OUTPUT": x.astype(np.int64)}
        if kind == 2:
            return {"OUTPUT": np.concatenate([x, x], axis=1)}
        if kind == 3:
            return {"OTHER": x}
        return {"OUTPUT": x}
"""


def _model(root: Path, name: str, code: str, extra: str = "") -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / "model.py").write_text(code)
    (root / name / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 8\n'
        'input [{ name: "INPUT", data_type: TYPE_FP32, dims: [4] }]\n'
        'output [{ name: "OUTPUT", data_type: TYPE_FP32, dims: [4] }]\n' + extra
    )


@pytest.fixture(scope="module")
def misbehaving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("misbehaving")
    _model(
        root, "hangs", HANGS, 'parameters { key: "model_timeout" value { string_value: "0.5" } }\n'
    )
    _model(root, "hangs_two", HANGS, "instance_group [{ count: 2, kind: KIND_CPU }]\n")
    _model(root, "wrong_outputs", WRONG_OUTPUTS)
    # The server's own timeout applies to hangs_two; hangs sets its own.
    with serving(root, tmp_path_factory, "--model-timeout", "0.5") as server:
        yield server


def _input(value: float) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("INPUT", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.full((1, 4), value, dtype=np.float32))
    return [tensor]


def _abandoned(server: Server, model: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    found = re.search(
        rf'tensorgate_instances_abandoned_total\{{model="{model}",version="1"\}} (\S+)', text
    )
    assert found, text
    return float(found.group(1))


def test_a_hung_batch_fails_at_the_timeout_and_a_new_instance_serves(
    misbehaving: Server,
) -> None:
    with grpcclient.InferenceServerClient(misbehaving.url) as client:
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as info:
            client.infer("hangs", _input(-1.0), client_timeout=15)
        assert time.monotonic() - started < 10
        assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert "model 'hangs'" in info.value.message() and "0.5 s timeout" in info.value.message()
        # The replacement comes up (a Python model loads in milliseconds) and serves.
        deadline = time.monotonic() + 30
        while True:
            try:
                result = client.infer("hangs", _input(3.0), client_timeout=10)
                break
            except InferenceServerException as exc:
                assert exc.status() == "StatusCode.UNAVAILABLE", exc
                assert time.monotonic() < deadline, "no replacement instance"
                time.sleep(0.1)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT"), np.full((1, 4), 6.0))
        assert client.is_model_ready("hangs")
    assert _abandoned(misbehaving, "hangs") == 1


def test_with_two_instances_one_hung_the_model_stays_ready_and_serves(
    misbehaving: Server,
) -> None:
    with grpcclient.InferenceServerClient(misbehaving.url) as client:
        failures: list[InferenceServerException] = []

        def hang(result: object, error: InferenceServerException | None) -> None:
            if error is not None:
                failures.append(error)

        client.async_infer("hangs_two", _input(-1.0), hang, client_timeout=15)
        time.sleep(0.2)
        # The other instance keeps serving, and the model stays ready throughout.
        for _ in range(5):
            assert client.is_model_ready("hangs_two")
            result = client.infer("hangs_two", _input(1.0), client_timeout=10)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT"), np.full((1, 4), 2.0))
        deadline = time.monotonic() + 15
        while not failures and time.monotonic() < deadline:
            time.sleep(0.1)
    assert failures and failures[0].status() == "StatusCode.DEADLINE_EXCEEDED"
    assert _abandoned(misbehaving, "hangs_two") == 1


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        (1.0, "output 'OUTPUT' is INT64 but the config declares FP32"),
        (2.0, r"output 'OUTPUT' has shape \[1, 8\] but the config declares \[-1, 4\]"),
        (3.0, "it returned no output 'OUTPUT'"),
    ],
)
def test_wrong_outputs_fail_only_that_request_naming_the_model(
    misbehaving: Server, kind: float, message: str
) -> None:
    with grpcclient.InferenceServerClient(misbehaving.url) as client:
        with pytest.raises(InferenceServerException) as info:
            client.infer("wrong_outputs", _input(kind))
        assert info.value.status() == "StatusCode.INTERNAL"
        assert "model 'wrong_outputs' failed" in info.value.message()
        assert re.search(message, info.value.message()), info.value.message()
        ok = client.infer("wrong_outputs", _input(0.0))
        np.testing.assert_array_equal(ok.as_numpy("OUTPUT"), np.zeros((1, 4)))


def test_a_timeout_parameter_on_a_decoupled_model_fails_its_load(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("timeout_decoupled")
    _model(
        root,
        "streams",
        "class Model:\n    def execute(self, inputs):\n        yield inputs\n",
        "model_transaction_policy { decoupled: true }\n"
        'parameters { key: "model_timeout" value { string_value: "1" } }\n',
    )
    with (
        serving(root, tmp_path_factory, wait_ready=False) as server,
        grpcclient.InferenceServerClient(server.url) as client,
    ):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            index = client.get_model_repository_index(as_json=True).get("models", [])
            states = {m["name"]: m.get("reason", "") for m in index if m.get("state")}
            if states.get("streams"):
                break
            time.sleep(0.1)
        assert (
            "parameter model_timeout is implemented for models served by the dynamic"
            in (states["streams"])
        )
