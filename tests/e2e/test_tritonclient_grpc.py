"""Every RPC through Triton's own Python client, sync and asyncio, against a real server."""

from __future__ import annotations

import asyncio
import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.http as httpclient
from tensorgate.examples.build import CNN_LABELS
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import Server

SAMPLES = {
    "BOOL": np.array([[True, False, True, True]]),
    "UINT8": np.array([[0, 1, 128, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 300, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 70000, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 1, 2**40, 2**64 - 1]], dtype=np.uint64),
    "INT8": np.array([[-128, -1, 0, 127]], dtype=np.int8),
    "INT16": np.array([[-32768, -1, 0, 32767]], dtype=np.int16),
    "INT32": np.array([[-(2**31), -1, 0, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), -1, 0, 2**63 - 1]], dtype=np.int64),
    "FP16": np.array([[-2.5, 0.0, 1.0, 65504.0]], dtype=np.float16),
    "FP32": np.array([[-2.5, 0.0, 1e-30, 3.0e38]], dtype=np.float32),
    "FP64": np.array([[-2.5, 0.0, 1e-300, 1e300]], dtype=np.float64),
    # onnxruntime string tensors are UTF-8; any UTF-8, NUL included, must survive.
    "BYTES": np.array([[b"", b"a", "é".encode(), b"\x00z"]], dtype=np.object_),
    # tritonclient takes BF16 as float32 and keeps the upper 16 bits: use exact values.
    "BF16": np.array([[-2.5, 0.0, 1.0, 2.0**100]], dtype=np.float32),
}


def add_sub_inputs(rows: int = 2) -> tuple[list[grpcclient.InferInput], np.ndarray, np.ndarray]:
    a = np.random.rand(rows, 16).astype(np.float32)
    b = np.random.rand(rows, 16).astype(np.float32)
    inputs = [
        grpcclient.InferInput("INPUT0", [rows, 16], "FP32"),
        grpcclient.InferInput("INPUT1", [rows, 16], "FP32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs, a, b


def test_health_and_server_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata.name == "tensorgate" and "model_repository" in metadata.extensions


def test_model_metadata_and_config_describe_add_sub(
    client: grpcclient.InferenceServerClient,
) -> None:
    assert client.is_model_ready("add_sub") and client.is_model_ready("add_sub", "1")
    assert not client.is_model_ready("add_sub", "2") and not client.is_model_ready("nope")
    metadata = client.get_model_metadata("add_sub")
    assert metadata.platform == "onnxruntime_onnx" and list(metadata.versions) == ["1"]
    assert [(i.name, i.datatype, list(i.shape)) for i in metadata.inputs] == [
        ("INPUT0", "FP32", [-1, 16]),
        ("INPUT1", "FP32", [-1, 16]),
    ]
    config = client.get_model_config("add_sub").config
    assert config.max_batch_size == 32 and config.backend == "onnxruntime"
    assert [o.name for o in config.output] == ["OUTPUT0", "OUTPUT1"]


def test_auto_completed_config_is_reported(client: grpcclient.InferenceServerClient) -> None:
    config = client.get_model_config("identity_fp32", as_json=True)["config"]
    assert config["max_batch_size"] == 4
    assert config["input"][0] == {"name": "INPUT", "data_type": "TYPE_FP32", "dims": ["4"]}
    assert "dynamic_batching" in config


def test_add_sub_numerics_request_id_and_priority_parameter(
    client: grpcclient.InferenceServerClient,
) -> None:
    inputs, a, b = add_sub_inputs(3)
    # tritonclient sends priority as a uint64 parameter.
    result = client.infer("add_sub", inputs, request_id="req-7", priority=1, timeout=10_000)
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
    response = result.get_response()
    assert response.id == "req-7" and response.model_version == "1"


def test_requested_output_subset_returns_only_that_output(
    client: grpcclient.InferenceServerClient,
) -> None:
    inputs, a, b = add_sub_inputs()
    result = client.infer("add_sub", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
    assert result.as_numpy("OUTPUT0") is None


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_every_datatype_round_trips_exactly(
    client: grpcclient.InferenceServerClient, datatype: str
) -> None:
    data = SAMPLES[datatype]
    tensor = grpcclient.InferInput("INPUT", list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    result = client.infer(f"identity_{datatype.lower()}", [tensor])
    out = result.as_numpy("OUTPUT")
    assert result.get_output("OUTPUT").datatype == datatype
    if datatype == "BF16":
        out = out.astype(np.float32)  # tritonclient 2.41 decodes BF16 to float32 (or bfloat16)
    assert out.shape == data.shape
    assert out.tolist() == data.tolist()


def test_python_model_with_bytes(client: grpcclient.InferenceServerClient) -> None:
    text = np.array(["hello", "wörld", ""], dtype=np.object_)
    tensor = grpcclient.InferInput("TEXT", [3], "BYTES")
    tensor.set_data_from_numpy(text)
    result = client.infer("text_stats", [tensor])
    assert result.as_numpy("UPPER").tolist() == [b"HELLO", "WÖRLD".encode(), b""]
    assert result.as_numpy("LENGTH").tolist() == [5, 5, 0]


def test_torchscript_cnn_returns_logits_per_image(client: grpcclient.InferenceServerClient) -> None:
    images = np.random.rand(4, 3, 32, 32).astype(np.float32)
    tensor = grpcclient.InferInput("IMAGE", [4, 3, 32, 32], "FP32")
    tensor.set_data_from_numpy(images)
    logits = client.infer("cnn", [tensor]).as_numpy("LOGITS")
    assert logits.shape == (4, 10) and np.isfinite(logits).all()
    # Each row depends only on its own image.
    single = grpcclient.InferInput("IMAGE", [1, 3, 32, 32], "FP32")
    single.set_data_from_numpy(images[2:3])
    np.testing.assert_allclose(
        client.infer("cnn", [single]).as_numpy("LOGITS")[0], logits[2], rtol=1e-4, atol=1e-5
    )


def test_classification_returns_the_top_classes_with_their_labels(server: Server) -> None:
    images = np.random.rand(3, 3, 32, 32).astype(np.float32)
    with grpcclient.InferenceServerClient(server.url) as client:
        assert "classification" in client.get_server_metadata().extensions
        tensor = grpcclient.InferInput("IMAGE", [3, 3, 32, 32], "FP32")
        tensor.set_data_from_numpy(images)
        logits = client.infer("cnn", [tensor]).as_numpy("LOGITS")
        top = grpcclient.InferRequestedOutput("LOGITS", class_count=3)
        classes = client.infer("cnn", [tensor], outputs=[top]).as_numpy("LOGITS")
    http = httpclient.InferenceServerClient(server.http_url)
    tensor = httpclient.InferInput("IMAGE", [3, 3, 32, 32], "FP32")
    tensor.set_data_from_numpy(images)
    every = httpclient.InferRequestedOutput("LOGITS", class_count=20)
    over_http = http.infer("cnn", [tensor], outputs=[every]).as_numpy("LOGITS")
    http.close()
    assert classes.shape == (3, 3)
    for row, (logit_row, entries) in enumerate(zip(logits, classes, strict=True)):
        expected = np.argsort(-logit_row, kind="stable")[:3]
        parts = [entry.decode().split(":") for entry in entries]
        assert [int(p[1]) for p in parts] == expected.tolist()
        assert [p[2] for p in parts] == [CNN_LABELS[i] for i in expected]
        np.testing.assert_allclose([float(p[0]) for p in parts], logit_row[expected], atol=1e-5)
        # A count beyond the classes returns them all, the same order.
        assert over_http.shape == (3, 10)
        assert [e.decode().split(":")[1] for e in over_http[row][:3]] == [p[1] for p in parts]


def test_classification_of_a_bytes_output_is_invalid(
    client: grpcclient.InferenceServerClient,
) -> None:
    tensor = grpcclient.InferInput("TEXT", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"hello"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as refused:
        client.infer(
            "text_stats",
            [tensor],
            outputs=[grpcclient.InferRequestedOutput("UPPER", class_count=1)],
        )
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "classification ranks integer and 32- or 64-bit float outputs only" in (
        refused.value.message()
    )


def test_torch_export_program_serves(client: grpcclient.InferenceServerClient) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    tensor = grpcclient.InferInput("X", [2, 4], "FP32")
    tensor.set_data_from_numpy(x)
    assert client.infer("exported", [tensor]).as_numpy("Y").tolist() == (x * 2 + 1).tolist()


def test_reshape_serves_the_configs_dims_to_clients_and_the_files_shapes_to_the_model(
    server: Server,
) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    with grpcclient.InferenceServerClient(server.url) as client:
        metadata = client.get_model_metadata("reshaped", as_json=True)
        tensor = grpcclient.InferInput("X", [3, 4], "FP32")
        tensor.set_data_from_numpy(x)
        y = client.infer("reshaped", [tensor]).as_numpy("Y")
        bad = grpcclient.InferInput("X", [3, 2, 2], "FP32")
        bad.set_data_from_numpy(x.reshape(3, 2, 2))
        with pytest.raises(InferenceServerException) as refused:
            client.infer("reshaped", [bad])
    assert metadata["inputs"][0]["shape"] == ["-1", "4"]
    assert metadata["outputs"][0]["shape"] == ["-1", "1"]
    assert y.tolist() == [[6.0], [22.0], [38.0]]
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "has shape [3, 2, 2]" in refused.value.message()
    http = httpclient.InferenceServerClient(server.http_url)
    tensor = httpclient.InferInput("X", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    assert http.infer("reshaped", [tensor]).as_numpy("Y").tolist() == [[4.0]]
    http.close()


def test_versions_are_addressable(client: grpcclient.InferenceServerClient) -> None:
    data = np.array([[1, 2, 3, 4]], dtype=np.int32)
    tensor = grpcclient.InferInput("INPUT", [1, 4], "INT32")
    tensor.set_data_from_numpy(data)
    for version in ("1", "2"):
        result = client.infer("versioned", [tensor], model_version=version)
        assert result.get_response().model_version == version
    assert client.infer("versioned", [tensor]).get_response().model_version == "2"
    assert list(client.get_model_metadata("versioned").versions) == ["1", "2"]


def test_statistics_count_requests_and_batches(client: grpcclient.InferenceServerClient) -> None:
    before = client.get_inference_statistics("add_sub").model_stats[0]
    inputs, _, _ = add_sub_inputs(5)
    for _ in range(3):
        client.infer("add_sub", inputs)
    after = client.get_inference_statistics("add_sub").model_stats[0]
    assert after.inference_count - before.inference_count == 15
    assert after.execution_count - before.execution_count == 3
    stats = after.inference_stats
    assert stats.success.count - before.inference_stats.success.count == 3
    assert stats.compute_infer.ns > 0 and stats.queue.count == stats.success.count
    assert 5 in [b.batch_size for b in after.batch_stats]
    everything = client.get_inference_statistics()
    assert {"add_sub", "cnn", "text_stats"} <= {s.name for s in everything.model_stats}


def test_repository_index_lists_every_model_ready(client: grpcclient.InferenceServerClient) -> None:
    index = client.get_model_repository_index().models
    states = {(m.name, m.version): m.state for m in index}
    assert states[("add_sub", "1")] == "READY"
    assert states[("versioned", "1")] == states[("versioned", "2")] == "READY"


def test_load_and_unload_are_refused_without_explicit_mode(
    client: grpcclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException, match="--model-control-mode explicit"):
        client.unload_model("add_sub")
    assert client.is_model_ready("add_sub")


def test_streaming_infer_answers_every_request_and_reports_errors_in_band(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.url)
    results: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    expected = {}
    for index in range(20):
        inputs, a, b = add_sub_inputs(1)
        expected[f"s{index}"] = a + b
        client.async_stream_infer("add_sub", inputs, request_id=f"s{index}")
    bad = grpcclient.InferInput("INPUT0", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
    client.async_stream_infer("add_sub", [bad], request_id="bad")
    seen, errors = {}, []
    for _ in range(21):
        result, error = results.get(timeout=30)
        if error is not None:
            errors.append(str(error))
        else:
            seen[result.get_response().id] = result.as_numpy("OUTPUT0")  # type: ignore[attr-defined]
    client.stop_stream()
    client.close()
    assert len(errors) == 1 and "shape [1, 3]" in errors[0]
    assert seen.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_allclose(seen[key], value, rtol=1e-6)


def test_asyncio_client_every_rpc_and_concurrent_infers(server: Server) -> None:
    async def scenario() -> None:
        client = aioclient.InferenceServerClient(server.url)
        try:
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready("add_sub")
            assert (await client.get_server_metadata()).name == "tensorgate"
            assert (await client.get_model_metadata("cnn")).inputs[0].name == "IMAGE"
            assert (await client.get_model_config("cnn")).config.max_batch_size == 16
            assert (await client.get_model_repository_index()).models
            jobs = []
            expected = []
            for _ in range(16):
                inputs, a, b = add_sub_inputs(2)
                expected.append(a - b)
                jobs.append(client.infer("add_sub", inputs))
            results = await asyncio.gather(*jobs)
            for result, want in zip(results, expected, strict=True):
                np.testing.assert_allclose(result.as_numpy("OUTPUT1"), want, rtol=1e-6)

            async def requests():  # type: ignore[no-untyped-def]
                for index in range(5):
                    inputs, _, _ = add_sub_inputs(1)
                    yield {"model_name": "add_sub", "inputs": inputs, "request_id": str(index)}

            ids = []
            async for result, error in client.stream_infer(requests()):
                assert error is None
                ids.append(result.get_response().id)
                if len(ids) == 5:
                    break
            assert sorted(ids) == ["0", "1", "2", "3", "4"]
            stats = await client.get_inference_statistics("add_sub")
            assert stats.model_stats[0].inference_count > 0
        finally:
            await client.close()

    asyncio.run(scenario())
