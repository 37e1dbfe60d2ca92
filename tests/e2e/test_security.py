"""Access control and TLS against real clients: tritonclient (gRPC and HTTP), grpcurl, the
openai client, requests; tokens rotated and certificates replaced while the server runs."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import ROOT, Server, doc_block, serving

GRPCURL = shutil.which("grpcurl") or str(ROOT / ".venv" / "bin" / "grpcurl")
ADMIN_KEY = "x-admin-key"


def _inputs() -> list[grpcclient.InferInput]:
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = grpcclient.InferInput(name, [1, 16], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 16), dtype=np.float32))
        inputs.append(tensor)
    return inputs


def _grpc_status(call: Callable[[], Any]) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status())


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _until(condition: Callable[[], bool], seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("auth")
    names = {"all": secrets.token_urlsafe(24), "infer": secrets.token_urlsafe(24)}
    path = folder / "tokens.txt"
    path.write_text(f"# operators\n{names['all']}\n{names['infer']} inference,health\n")
    return {"path": path, "admin": secrets.token_urlsafe(12), **names}


@pytest.fixture(scope="module")
def guarded(
    test_repository: Path, tmp_path_factory: pytest.TempPathFactory, tokens: dict[str, Any]
) -> Iterator[Server]:
    with serving(
        test_repository,
        tmp_path_factory,
        "--auth-token-file",
        str(tokens["path"]),
        "--restrict",
        f"model-config:{ADMIN_KEY}={tokens['admin']}",
    ) as server:
        yield server


def test_tokens_and_restricted_groups_guard_grpc(guarded: Server, tokens: dict[str, Any]) -> None:
    everything, infer_only = _bearer(tokens["all"]), _bearer(tokens["infer"])
    with grpcclient.InferenceServerClient(guarded.url) as client:
        assert client.is_server_ready()  # health is public: probes need no token
        result = client.infer("add_sub", _inputs(), headers=everything)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 16), 2.0))
        client.infer("add_sub", _inputs(), headers=infer_only)
        refused = {
            "none": _grpc_status(lambda: client.infer("add_sub", _inputs())),
            "wrong": _grpc_status(lambda: client.infer("add_sub", _inputs(), headers=_bearer("x"))),
            "scheme": _grpc_status(
                lambda: client.infer("add_sub", _inputs(), headers={"authorization": tokens["all"]})
            ),
        }
        assert set(refused.values()) == {"StatusCode.UNAUTHENTICATED"}
        assert _grpc_status(lambda: client.get_model_metadata("add_sub", headers=infer_only)) == (
            "StatusCode.PERMISSION_DENIED"
        )
        assert client.get_model_metadata("add_sub", headers=everything).name == "add_sub"
        # model-config is restricted by a header as well as by the token.
        assert (
            _grpc_status(lambda: client.get_model_config("add_sub", headers=everything))
            == "StatusCode.UNAUTHENTICATED"
        )
        with_key = {**everything, ADMIN_KEY: tokens["admin"]}
        assert client.get_model_config("add_sub", headers=with_key).config.name == "add_sub"


@pytest.mark.skipif(not Path(GRPCURL).exists(), reason="needs grpcurl (make test installs it)")
def test_grpcurl_with_and_without_a_token(guarded: Server, tokens: dict[str, Any]) -> None:
    def grpcurl(method: str, *headers: str) -> subprocess.CompletedProcess[str]:
        command = [GRPCURL, "-plaintext", *headers, guarded.url, method]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert "SERVING" in grpcurl("grpc.health.v1.Health/Check").stdout
    metadata = "inference.GRPCInferenceService/ServerMetadata"
    refused = grpcurl(metadata)
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
    allowed = grpcurl(metadata, "-H", f"authorization: Bearer {tokens['all']}")
    assert allowed.returncode == 0 and '"name": "tensorgate"' in allowed.stdout


def test_tokens_guard_http_openai_and_metrics(guarded: Server, tokens: dict[str, Any]) -> None:
    base = f"http://{guarded.http_url}"
    assert requests.get(f"{base}/v2/health/ready", timeout=10).status_code == 200
    assert requests.get(f"{base}/", timeout=10).status_code == 200  # the page is public
    missing = requests.get(f"{base}/v2/models/add_sub", timeout=10)
    wrong = requests.get(f"{base}/v2/models/add_sub", headers=_bearer("nope"), timeout=10)
    assert missing.status_code == wrong.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="tensorgate"'
    assert missing.json() == wrong.json()  # no hint of which part was wrong
    denied = requests.get(f"{base}/v2/models/add_sub", headers=_bearer(tokens["infer"]), timeout=10)
    assert denied.status_code == 403
    ok = requests.get(f"{base}/v2/models/add_sub", headers=_bearer(tokens["all"]), timeout=10)
    assert ok.status_code == 200 and ok.json()["name"] == "add_sub"
    with httpclient.InferenceServerClient(guarded.http_url) as client:
        inputs = []
        for name in ("INPUT0", "INPUT1"):
            tensor = httpclient.InferInput(name, [1, 16], "FP32")
            tensor.set_data_from_numpy(np.ones((1, 16), dtype=np.float32))
            inputs.append(tensor)
        result = client.infer("add_sub", inputs, headers=_bearer(tokens["infer"]))
        assert result.as_numpy("OUTPUT0")[0, 0] == 2.0
        with pytest.raises(InferenceServerException, match="credentials"):
            client.infer("add_sub", inputs)

    openai = pytest.importorskip("openai")
    good = openai.OpenAI(base_url=f"{base}/v1", api_key=tokens["all"], max_retries=0)
    assert good.models.list().object == "list"
    bad = openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()

    assert requests.get(guarded.metrics_url, timeout=10).status_code == 401
    scrape = requests.get(guarded.metrics_url, headers=_bearer(tokens["all"]), timeout=10)
    assert scrape.status_code == 200
    counted = re.search(
        r'tensorgate_access_refused_total\{group="metadata",reason="unauthenticated"\} (\S+)',
        scrape.text,
    )
    assert counted and float(counted.group(1)) >= 2
    assert 'group="statistics",reason="unauthenticated"' in scrape.text
    # Refusals are logged, and no credential ever is.
    output = guarded.output()
    assert "access refused" in output
    for secret in (tokens["all"], tokens["infer"], tokens["admin"]):
        assert secret not in output


def test_a_rotated_token_file_takes_effect_without_a_restart(
    test_repository: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    old, new = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    path = tmp_path / "tokens.txt"
    path.write_text(old + "\n")
    with serving(test_repository, tmp_path_factory, "--auth-token-file", str(path)) as server:
        url = f"http://{server.http_url}/v2"

        def status(token: str) -> int:
            return requests.get(url, headers=_bearer(token), timeout=10).status_code

        assert status(old) == 200 and status(new) == 401
        staged = tmp_path / "tokens.next"
        staged.write_text(f"{new}\n")
        os.replace(staged, path)
        assert _until(lambda: status(new) == 200)
        assert status(old) == 401


def test_log_settings_are_read_only_unless_the_server_allows_changes(server: Server) -> None:
    url = f"http://{server.http_url}/v2/logging"
    assert "log_verbose_level" in requests.get(url, timeout=10).json()
    change = requests.post(url, json={"log_verbose_level": 1}, timeout=10)
    assert change.status_code == 403 and "--allow-log-updates" in change.json()["error"]
    with grpcclient.InferenceServerClient(server.url) as client:
        status = _grpc_status(lambda: client.update_log_settings({"log_verbose_level": 1}))
        assert status == "StatusCode.PERMISSION_DENIED"


# TLS ---------------------------------------------------------------------------------------


def _certificates(folder: Path) -> dict[str, Path]:
    """The security page's openssl commands, run in `folder`."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command (Debian package openssl)")
    folder.mkdir(parents=True, exist_ok=True)
    script = doc_block("docs/pages/security.md", "tls-certificates")
    subprocess.run(["bash", "-c", script], cwd=folder, check=True, capture_output=True)
    return {p.name: p for p in folder.iterdir()}


def _client_files(certs: dict[str, Path]) -> dict[str, str]:
    """tritonclient.grpc's options for presenting the client certificate."""
    return {
        "private_key": str(certs["client.key"]),
        "certificate_chain": str(certs["client.pem"]),
    }


def _grpc_tls(server: Server, ca: Path, client: dict[str, Path] | None = None) -> bool:
    """A fresh gRPC connection's handshake and one call succeed."""
    extra = _client_files(client) if client is not None else {}
    try:
        with grpcclient.InferenceServerClient(
            server.url.replace("127.0.0.1", "localhost"),
            ssl=True,
            root_certificates=str(ca),
            **extra,
        ) as c:
            return bool(c.is_server_live(client_timeout=5))
    except InferenceServerException:
        return False


def _https(url: str, ca: Path, **kwargs: Any) -> bool:
    try:
        return requests.get(url, verify=str(ca), timeout=10, **kwargs).status_code == 200
    except requests.exceptions.SSLError:
        return False


def test_tls_on_every_port_and_a_replaced_certificate_is_served_without_a_restart(
    test_repository: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    first = _certificates(tmp_path / "first")
    other = _certificates(tmp_path / "other")  # another CA and a server certificate it signed
    served = tmp_path / "served"
    served.mkdir()
    for name in ("server.pem", "server.key"):
        shutil.copy(first[name], served / name)
    ca = str(first["ca.pem"])
    with serving(
        test_repository,
        tmp_path_factory,
        "--tls-cert",
        str(served / "server.pem"),
        "--tls-key",
        str(served / "server.key"),
        client_options={"ssl": True, "root_certificates": ca},
    ) as server:
        http = f"https://localhost:{server.http_port}"
        metrics = f"https://localhost:{server.metrics_port}/metrics"
        assert _grpc_tls(server, first["ca.pem"])
        with grpcclient.InferenceServerClient(server.url, ssl=True, root_certificates=ca) as client:
            client.infer("add_sub", _inputs())
        with httpclient.InferenceServerClient(
            f"localhost:{server.http_port}", ssl=True, ssl_options={"ca_certs": ca}
        ) as client:
            assert client.is_server_ready()
        assert _https(f"{http}/v2/health/ready", first["ca.pem"])
        assert _https(metrics, first["ca.pem"])
        if Path(GRPCURL).exists():
            listed = subprocess.run(
                [GRPCURL, "-cacert", ca, f"localhost:{server.port}", "list"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert "inference.GRPCInferenceService" in listed.stdout, listed.stderr
            wrong = subprocess.run(
                [GRPCURL, "-cacert", str(other["ca.pem"]), f"localhost:{server.port}", "list"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert wrong.returncode != 0
        # A client that trusts another CA fails on every port.
        assert not _grpc_tls(server, other["ca.pem"])
        assert not _https(f"{http}/v2/health/ready", other["ca.pem"])
        assert not _https(metrics, other["ca.pem"])
        # Replace the pair (each file renamed over the old one): new connections get it.
        for name in ("server.key", "server.pem"):
            shutil.copy(other[name], served / f"{name}.next")
            os.replace(served / f"{name}.next", served / name)
        assert _until(lambda: _grpc_tls(server, other["ca.pem"]))
        assert _until(lambda: _https(f"{http}/v2/health/ready", other["ca.pem"]))
        assert _until(lambda: _https(metrics, other["ca.pem"]))
        assert not _https(f"{http}/v2/health/ready", first["ca.pem"])


def test_mutual_tls_refuses_a_client_without_a_certificate(
    test_repository: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    certs = _certificates(tmp_path / "certs")
    ca = str(certs["ca.pem"])
    client_files = _client_files(certs)
    with serving(
        test_repository,
        tmp_path_factory,
        "--tls-cert",
        str(certs["server.pem"]),
        "--tls-key",
        str(certs["server.key"]),
        "--tls-client-ca",
        ca,
        client_options={"ssl": True, "root_certificates": ca, **client_files},
    ) as server:
        assert _grpc_tls(server, certs["ca.pem"], certs)
        assert not _grpc_tls(server, certs["ca.pem"])
        pair = (str(certs["client.pem"]), str(certs["client.key"]))
        ready = f"https://localhost:{server.http_port}/v2/health/ready"
        assert _https(ready, certs["ca.pem"], cert=pair)
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(ready, verify=ca, timeout=10)
        metrics = f"https://localhost:{server.metrics_port}/metrics"
        assert _https(metrics, certs["ca.pem"], cert=pair)
        with httpclient.InferenceServerClient(
            f"localhost:{server.http_port}",
            ssl=True,
            ssl_options={"ca_certs": ca, "certfile": pair[0], "keyfile": pair[1]},
        ) as client:
            assert client.is_server_ready()


def test_tritons_restricted_protocol_and_api_flags_each_guard_their_transport(
    test_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    grpc_key, http_key = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    with (
        serving(
            test_repository,
            tmp_path_factory,
            f"--grpc-restricted-protocol=inference,model-repository:x-grpc-key={grpc_key}",
            "--http-restricted-api",
            f"inference:x-http-key={http_key}",
        ) as server,
        grpcclient.InferenceServerClient(server.url) as client,
    ):
        assert _grpc_status(lambda: client.infer("add_sub", _inputs())) == (
            "StatusCode.UNAUTHENTICATED"
        )
        assert _grpc_status(
            lambda: client.infer("add_sub", _inputs(), headers={"x-http-key": http_key})
        ) == ("StatusCode.UNAUTHENTICATED")
        client.infer("add_sub", _inputs(), headers={"x-grpc-key": grpc_key})
        assert _grpc_status(client.get_model_repository_index) == "StatusCode.UNAUTHENTICATED"
        base = f"http://{server.http_url}"
        infer = f"{base}/v2/models/add_sub/infer"
        body = {
            "inputs": [
                {"name": n, "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}
                for n in ("INPUT0", "INPUT1")
            ]
        }
        assert requests.post(infer, json=body, timeout=10).status_code == 401
        wrong = requests.post(infer, json=body, headers={"x-grpc-key": grpc_key}, timeout=10)
        assert wrong.status_code == 401
        answered = requests.post(infer, json=body, headers={"x-http-key": http_key}, timeout=10)
        assert answered.status_code == 200, answered.text
        # The repository group is restricted over gRPC only.
        index = requests.post(f"{base}/v2/repository/index", json={}, timeout=10)
        assert index.status_code == 200 and "add_sub" in index.text


def test_tritons_grpc_ssl_flags_put_mutual_tls_on_grpc_and_leave_http_plain(
    test_repository: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    certs = _certificates(tmp_path / "certs")
    ca = str(certs["ca.pem"])
    client_files = _client_files(certs)
    with serving(
        test_repository,
        tmp_path_factory,
        "--grpc-use-ssl-mutual=true",
        f"--grpc-server-cert={certs['server.pem']}",
        "--grpc-server-key",
        str(certs["server.key"]),
        f"--grpc-root-cert={ca}",
        client_options={"ssl": True, "root_certificates": ca, **client_files},
    ) as server:
        assert _grpc_tls(server, certs["ca.pem"], certs)
        assert not _grpc_tls(server, certs["ca.pem"])  # no client certificate
        plain = grpcclient.InferenceServerClient(server.url)  # no TLS at all
        with plain, pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=5)
        # As in Triton, HTTP and metrics stay plain.
        with httpclient.InferenceServerClient(server.http_url) as client:
            assert client.is_server_ready()
        assert requests.get(server.metrics_url, timeout=10).status_code == 200
