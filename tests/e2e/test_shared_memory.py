"""System shared memory with tritonclient's own utilities, over gRPC and HTTP: inputs read
from a registered region, outputs written into one, precise errors for bad placements, and
perf_analyzer --shared-memory system."""

from __future__ import annotations

import queue
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import Server
from tests.e2e.test_tools import perf_analyzer

shm = pytest.importorskip("tritonclient.utils.shared_memory")

BYTES = 16 * 4  # one [1, 16] FP32 tensor


@pytest.fixture
def regions() -> Iterator[dict[str, object]]:
    """Two input tensors in one region, the two outputs in another."""
    suffix = uuid.uuid4().hex[:8]
    inputs = shm.create_shared_memory_region(f"in-{suffix}", f"/tg-in-{suffix}", 2 * BYTES)
    outputs = shm.create_shared_memory_region(f"out-{suffix}", f"/tg-out-{suffix}", 2 * BYTES)
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    b = np.ones((1, 16), np.float32)
    shm.set_shared_memory_region(inputs, [a, b])
    yield {"suffix": suffix, "in": inputs, "out": outputs, "a": a, "b": b}
    shm.destroy_shared_memory_region(inputs)
    shm.destroy_shared_memory_region(outputs)


def _check(region: object, a: np.ndarray, b: np.ndarray) -> None:
    first = shm.get_contents_as_numpy(region, np.float32, [1, 16], offset=0)
    second = shm.get_contents_as_numpy(region, np.float32, [1, 16], offset=BYTES)
    np.testing.assert_array_equal(first, a + b)
    np.testing.assert_array_equal(second, a - b)


def test_inputs_and_outputs_in_shared_memory_over_grpc(
    server: Server, regions: dict[str, object]
) -> None:
    suffix = regions["suffix"]
    with grpcclient.InferenceServerClient(server.url) as client:
        client.unregister_system_shared_memory()
        client.register_system_shared_memory(f"in-{suffix}", f"/tg-in-{suffix}", 2 * BYTES)
        client.register_system_shared_memory(f"out-{suffix}", f"/tg-out-{suffix}", 2 * BYTES)
        status = client.get_system_shared_memory_status(as_json=True)["regions"]
        assert status[f"in-{suffix}"]["byte_size"] in (str(2 * BYTES), 2 * BYTES)
        inputs = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        inputs[0].set_shared_memory(f"in-{suffix}", BYTES)
        inputs[1].set_shared_memory(f"in-{suffix}", BYTES, offset=BYTES)
        outputs = [grpcclient.InferRequestedOutput(n) for n in ("OUTPUT0", "OUTPUT1")]
        outputs[0].set_shared_memory(f"out-{suffix}", BYTES)
        outputs[1].set_shared_memory(f"out-{suffix}", BYTES, offset=BYTES)
        result = client.infer("add_sub", inputs, outputs=outputs)
        assert list(result.get_output("OUTPUT0").shape) == [1, 16]
        _check(regions["out"], regions["a"], regions["b"])
        # A placement past the region's end, and an unknown region: precise errors.
        inputs[1].set_shared_memory(f"in-{suffix}", BYTES, offset=BYTES + 4)
        with pytest.raises(InferenceServerException, match="do not fit in region") as info:
            client.infer("add_sub", inputs)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        inputs[1].set_shared_memory("nope", BYTES)
        with pytest.raises(InferenceServerException, match="no shared-memory region 'nope'"):
            client.infer("add_sub", inputs)
        with pytest.raises(InferenceServerException, match="not a POSIX shared-memory key"):
            client.register_system_shared_memory("evil", "/../etc/passwd", 4)
        client.unregister_system_shared_memory(f"in-{suffix}")
        assert f"in-{suffix}" not in client.get_system_shared_memory_status(as_json=True).get(
            "regions", {}
        )
        client.unregister_system_shared_memory()


def test_an_output_in_shared_memory_beside_a_raw_one_over_a_grpc_stream(
    server: Server, regions: dict[str, object]
) -> None:
    suffix = regions["suffix"]
    answers: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(server.url) as client:
        client.register_system_shared_memory(f"out-{suffix}", f"/tg-out-{suffix}", 2 * BYTES)
        inputs = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        inputs[0].set_data_from_numpy(regions["a"])
        inputs[1].set_data_from_numpy(regions["b"])
        outputs = [grpcclient.InferRequestedOutput(n) for n in ("OUTPUT0", "OUTPUT1")]
        outputs[0].set_shared_memory(f"out-{suffix}", BYTES)
        client.start_stream(lambda result, error: answers.put(error or result))
        client.async_stream_infer("add_sub", inputs, outputs=outputs)
        answer = answers.get(timeout=30)
        client.stop_stream()
        client.unregister_system_shared_memory()
    assert not isinstance(answer, Exception), answer
    placed = answer.get_output("OUTPUT0").parameters
    assert placed["shared_memory_region"].string_param == f"out-{suffix}"
    first = shm.get_contents_as_numpy(regions["out"], np.float32, [1, 16], offset=0)
    np.testing.assert_array_equal(first, regions["a"] + regions["b"])
    np.testing.assert_array_equal(answer.as_numpy("OUTPUT1"), regions["a"] - regions["b"])


def test_inputs_and_outputs_in_shared_memory_over_http(
    server: Server, regions: dict[str, object]
) -> None:
    suffix = regions["suffix"]
    with httpclient.InferenceServerClient(server.http_url) as client:
        client.register_system_shared_memory(f"in-{suffix}", f"/tg-in-{suffix}", 2 * BYTES)
        client.register_system_shared_memory(f"out-{suffix}", f"/tg-out-{suffix}", 2 * BYTES)
        inputs = [httpclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        inputs[0].set_shared_memory(f"in-{suffix}", BYTES)
        inputs[1].set_shared_memory(f"in-{suffix}", BYTES, offset=BYTES)
        outputs = [httpclient.InferRequestedOutput(n) for n in ("OUTPUT0", "OUTPUT1")]
        outputs[0].set_shared_memory(f"out-{suffix}", BYTES)
        outputs[1].set_shared_memory(f"out-{suffix}", BYTES, offset=BYTES)
        result = client.infer("add_sub", inputs, outputs=outputs)
        assert result.get_output("OUTPUT0")["shape"] == [1, 16]
        _check(regions["out"], regions["a"], regions["b"])
        client.unregister_system_shared_memory()


def test_perf_analyzer_sends_through_system_shared_memory(server: Server) -> None:
    perf_analyzer(server, "add_sub", "--shared-memory", "system")
