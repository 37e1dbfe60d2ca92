"""SageMaker's and Vertex AI's serving contracts, as their platforms and tritonclient's body
helpers use them: health, predictions in JSON and in the binary format whose header length
rides in the content type, errors, and Vertex AI's redirect header."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

from tests.e2e.conftest import Server, free_port, serving
from tests.e2e.models import identity_onnx

SAGEMAKER_BINARY = "application/vnd.sagemaker-triton.binary+json;json-header-size="
VERTEX_BINARY = "application/vnd.vertex-ai-triton.binary+json;json-header-size="


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, str]]:
    """One server with both platforms' ports; its repository holds one model, identity."""
    repo = tmp_path_factory.mktemp("cloud_repo")
    identity_onnx(repo / "identity" / "1" / "model.onnx", "FP32")
    sagemaker_port, vertex_port = free_port(), free_port()
    with pytest.MonkeyPatch.context() as env:  # what each platform sets in the container
        env.setenv("SAGEMAKER_TRITON_DEFAULT_MODEL_NAME", "identity")
        env.setenv("AIP_MODE", "PREDICTION")
        env.setenv("AIP_HTTP_PORT", str(vertex_port))
        env.setenv("AIP_HEALTH_ROUTE", "/health")
        env.setenv("AIP_PREDICT_ROUTE", "/v1/endpoints/e/deployedModels/m:predict")
        with serving(
            repo, tmp_path_factory, "--allow-sagemaker=true", f"--sagemaker-port={sagemaker_port}"
        ) as server:
            yield (
                server,
                f"http://127.0.0.1:{sagemaker_port}",
                f"http://127.0.0.1:{vertex_port}",
            )


def _json_request(values: list[float]) -> dict[str, object]:
    return {"inputs": [{"name": "INPUT", "shape": [1, 4], "datatype": "FP32", "data": values}]}


def _binary_request() -> tuple[bytes, int]:
    tensor = httpclient.InferInput("INPUT", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4), binary_data=True)
    output = httpclient.InferRequestedOutput("OUTPUT", binary_data=True)
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        [tensor], outputs=[output]
    )
    return body, int(header_length or 0)


def _binary_answer(response: requests.Response, prefix: str) -> np.ndarray:
    content_type = response.headers["content-type"]
    assert content_type.startswith(prefix), content_type
    result = httpclient.InferenceServerClient.parse_response_body(
        response.content, header_length=int(content_type[len(prefix) :])
    )
    return result.as_numpy("OUTPUT")  # type: ignore[no-any-return]


def test_sagemaker_pings_and_invokes_its_model_in_json_and_binary(
    cloud: tuple[Server, str, str],
) -> None:
    _, sagemaker, _ = cloud
    assert requests.get(f"{sagemaker}/ping", timeout=10).status_code == 200
    answer = requests.post(f"{sagemaker}/invocations", json=_json_request([1, 2, 3, 4]), timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_name"] == "identity"
    assert answer.json()["outputs"][0]["data"] == [1.0, 2.0, 3.0, 4.0]
    body, header_length = _binary_request()
    binary = requests.post(
        f"{sagemaker}/invocations",
        data=body,
        headers={"content-type": f"{SAGEMAKER_BINARY}{header_length}"},
        timeout=10,
    )
    assert binary.status_code == 200, binary.text
    np.testing.assert_array_equal(
        _binary_answer(binary, SAGEMAKER_BINARY), np.arange(4, dtype=np.float32).reshape(1, 4)
    )


def test_sagemaker_answers_a_failed_invocation_400_with_the_reason(
    cloud: tuple[Server, str, str],
) -> None:
    server, sagemaker, _ = cloud
    wrong = requests.post(f"{sagemaker}/invocations", json=_json_request([1, 2]), timeout=10)
    assert wrong.status_code == 400 and "INPUT" in wrong.json()["error"]
    body, _ = _binary_request()
    bad_length = requests.post(
        f"{sagemaker}/invocations",
        data=body,
        headers={"content-type": f"{SAGEMAKER_BINARY}many"},
        timeout=10,
    )
    assert bad_length.status_code == 400 and "header size" in bad_length.json()["error"]
    assert requests.get(f"{sagemaker}/invocations", timeout=10).status_code == 405
    unknown = requests.post(f"{sagemaker}/models", json={}, timeout=10)
    assert unknown.status_code == 400 and "/invocations" in unknown.json()["error"]
    # The server's own HTTP port is untouched by the platform's framing.
    assert requests.get(f"http://{server.http_url}/v2/health/ready", timeout=10).status_code == 200


def test_vertex_ai_serves_its_routes_from_the_aip_variables(
    cloud: tuple[Server, str, str],
) -> None:
    _, _, vertex = cloud
    predict = f"{vertex}/v1/endpoints/e/deployedModels/m:predict"
    assert requests.get(f"{vertex}/health", timeout=10).status_code == 200
    # The repository's only model takes the predictions.
    answer = requests.post(predict, json=_json_request([4, 3, 2, 1]), timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [4.0, 3.0, 2.0, 1.0]
    body, header_length = _binary_request()
    binary = requests.post(
        predict, data=body, headers={"content-type": f"{VERTEX_BINARY}{header_length}"}, timeout=10
    )
    np.testing.assert_array_equal(
        _binary_answer(binary, VERTEX_BINARY), np.arange(4, dtype=np.float32).reshape(1, 4)
    )
    # The redirect header reaches the other REST endpoints, with the method each takes.
    redirect = "x-vertex-ai-triton-redirect"
    metadata = requests.post(predict, headers={redirect: "v2/models/identity"}, timeout=10)
    assert metadata.status_code == 200 and metadata.json()["name"] == "identity"
    ready = requests.post(predict, headers={redirect: "v2/health/ready"}, timeout=10)
    assert ready.status_code == 200
    index = requests.post(predict, json={}, headers={redirect: "v2/repository/index"}, timeout=10)
    assert index.status_code == 200 and index.json()[0]["name"] == "identity"
    missing = requests.post(
        predict, json=_json_request([1, 2, 3, 4]), headers={redirect: "v2/models/nope/infer"}
    )
    assert missing.status_code == 404  # Vertex AI keeps the REST API's statuses


def test_vertex_ai_without_its_routes_stops_the_server_naming_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIP_PREDICT_ROUTE", raising=False)
    monkeypatch.setenv("AIP_HEALTH_ROUTE", "/health")
    (tmp_path / "repo").mkdir()
    result = subprocess.run(
        [
            *(sys.executable, "-m", "tensorgate", "serve"),
            *("--model-repository", str(tmp_path / "repo"), "--allow-vertex-ai=true"),
            *("--grpc-port=0", "--http-port=-1", "--metrics-port=-1"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--allow-vertex-ai needs AIP_PREDICT_ROUTE" in result.stdout + result.stderr
