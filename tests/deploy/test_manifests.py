"""The Docker images and the Kubernetes / KServe manifests, checked offline (run by
`make test-deploy` in .venv-deploy, which holds hadolint, kubernetes-validate and the kserve
SDK, kept apart from the server's own environment):

- both Dockerfiles pass hadolint, and the images' one install step installs a working server
  into a fresh virtual environment;
- core kinds pass `kubernetes-validate --strict`; KServe's kinds deserialize strictly into the
  kserve SDK's generated model classes (KServe's own API definitions), so an unknown or
  mistyped field fails;
- every flag, port and probe service a manifest names exists in the server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVER_PYTHON = ROOT / ".venv" / "bin" / "python"
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").rglob("*.yaml")) + sorted(
    (DEPLOY / "kserve").glob("*.yaml")
)
CORE = {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ConfigMap"}
KSERVE = {
    "InferenceService": "V1beta1InferenceService",
    "ClusterServingRuntime": "V1alpha1ClusterServingRuntime",
    "ServingRuntime": "V1alpha1ServingRuntime",
    "InferenceGraph": "V1alpha1InferenceGraph",
}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in MANIFESTS:
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found.append((f"{path.relative_to(ROOT)}:{document['kind']}", document))
    return found


DOCUMENTS = _documents()


def test_every_manifest_kind_is_validated_somewhere() -> None:
    kinds = {d["kind"] for _, d in DOCUMENTS}
    assert kinds <= CORE | set(KSERVE) | {"ServiceMonitor"}, kinds


@pytest.mark.parametrize(
    "document", [d for _, d in DOCUMENTS if d["kind"] in CORE], ids=lambda d: d["kind"]
)
def test_core_kinds_pass_kubernetes_validate_strict(document: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(document, "1.33.0", strict=True)


def _strict(data: Any, kind: str, where: str) -> None:
    """Deserialize `data` as the generated type `kind`, refusing unknown fields and wrong
    types anywhere below (the SDK's own deserializer would drop unknown fields)."""
    from kserve import models as kserve_models
    from kubernetes.client import models as k8s_models

    # The generators write containers both ways: list[X] / List[X], dict(str, X) / Dict[str, X].
    if listed := re.fullmatch(r"[lL]ist\[(.*)\]", kind):
        assert isinstance(data, list), f"{where}: a list expected"
        for index, item in enumerate(data):
            _strict(item, listed.group(1), f"{where}[{index}]")
        return
    if mapped := re.fullmatch(r"dict\(str, (.*)\)|Dict\[str, (.*)\]", kind):
        assert isinstance(data, dict), f"{where}: a mapping expected"
        for key, item in data.items():
            _strict(item, mapped.group(1) or mapped.group(2), f"{where}.{key}")
        return
    primitive = {
        "str": str,
        "int": int,
        "bool": bool,
        "float": (int, float),
        "object": object,
        "datetime": str,
    }
    if kind in primitive:
        assert isinstance(data, primitive[kind]), f"{where}: {kind} expected, got {data!r}"
        return
    cls = getattr(kserve_models, kind, None) or getattr(k8s_models, kind)
    assert isinstance(data, dict), f"{where}: an object ({kind}) expected"
    by_key = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    for key, value in data.items():
        assert key in by_key, f"{where}: unknown field '{key}' in {kind}"
        _strict(value, cls.openapi_types[by_key[key]], f"{where}.{key}")


@pytest.mark.parametrize(
    ("where", "document"),
    [(w, d) for w, d in DOCUMENTS if d["kind"] in KSERVE],
    ids=[w for w, d in DOCUMENTS if d["kind"] in KSERVE],
)
def test_kserve_kinds_deserialize_strictly_into_kserve_api_types(
    where: str, document: dict[str, Any]
) -> None:
    _strict(document, KSERVE[document["kind"]], where)


def test_the_strict_check_catches_a_mistyped_field() -> None:
    runtime = next(d for _, d in DOCUMENTS if d["kind"] == "ClusterServingRuntime")
    broken = json.loads(json.dumps(runtime))
    broken["spec"]["protocolVersion"] = broken["spec"].pop("protocolVersions")
    with pytest.raises(AssertionError, match="unknown field 'protocolVersion'"):
        _strict(broken, "V1alpha1ClusterServingRuntime", "broken")


def _server_facts() -> dict[str, Any]:
    """Flags, default ports and health service names, asked of the server itself."""
    code = (
        "import json, dataclasses\n"
        "from tensorgate.settings import Settings\n"
        "from tensorgate.transport.grpc.server import HEALTH_SERVICES\n"
        "s = Settings()\n"
        "print(json.dumps({'flags': ['--' + f.name.replace('_', '-') "
        "for f in dataclasses.fields(Settings)], 'health': list(HEALTH_SERVICES), "
        "'ports': {'http': s.http_port, 'grpc': s.grpc_port, 'metrics': s.metrics_port}}))\n"
    )
    out = subprocess.run(
        [str(SERVER_PYTHON), "-c", code], capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout))


def _containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    spec = document.get("spec", {})
    if document["kind"] == "Deployment":
        return list(spec["template"]["spec"]["containers"])
    if document["kind"] in ("ClusterServingRuntime", "ServingRuntime"):
        return list(spec["containers"])
    return []


@pytest.mark.skipif(not SERVER_PYTHON.exists(), reason="needs the server's venv (make venv)")
def test_manifests_name_only_flags_ports_and_probe_services_the_server_has() -> None:
    facts = _server_facts()
    checked = 0
    for where, document in DOCUMENTS:
        for container in _containers(document):
            args = container.get("args", [])
            flags = {a.split("=", 1)[0] for a in args if a.startswith("--")}
            assert flags <= set(facts["flags"]), (where, flags - set(facts["flags"]))
            ports = dict(facts["ports"])
            for arg in args:
                found = re.match(r"--(http|grpc|metrics)-port=(\d+)$", arg)
                if found:
                    ports[found.group(1)] = int(found.group(2))
            served = set(ports.values())
            for port in container.get("ports", []):
                assert port["containerPort"] in served, (where, port)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                grpc_probe = container.get(probe, {}).get("grpc")
                if grpc_probe:
                    assert grpc_probe["port"] == ports["grpc"], (where, probe)
                    assert grpc_probe.get("service", "") in facts["health"], (where, probe)
            checked += 1
    assert checked >= 2
    # The gRPC InferenceService names the port the runtime's gRPC listens on.
    grpc_service = next(d for w, d in DOCUMENTS if "grpc" in w and d["kind"] == "InferenceService")
    assert grpc_service["spec"]["predictor"]["model"]["ports"][0]["containerPort"] == 9000


def test_the_service_monitor_and_autoscaler_name_what_exists() -> None:
    by_kind = {d["kind"]: d for _, d in DOCUMENTS}
    service_ports = {p["name"] for p in by_kind["Service"]["spec"]["ports"]}
    assert by_kind["ServiceMonitor"]["spec"]["endpoints"][0]["port"] in service_ports
    metric = by_kind["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
    rules = yaml.safe_load(by_kind["ConfigMap"]["data"]["rules.yaml"])["rules"]
    assert metric in {r["name"]["as"] for r in rules}
    metrics_source = (ROOT / "server" / "tensorgate" / "observability" / "metrics.py").read_text()
    assert f'"{metric}"' in metrics_source


def _hadolint() -> str:
    return str(Path(sys.executable).parent / "hadolint")


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    result = subprocess.run(
        [_hadolint(), str(ROOT / dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_install_step_installs_a_working_server(tmp_path: Path) -> None:
    venv = tmp_path / "image"
    env = dict(os.environ, TORCH_INDEX="")  # torch from pip's own index here
    result = subprocess.run(
        ["bash", str(DEPLOY / "docker" / "install.sh"), str(venv), "cpu"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    help_text = subprocess.run(
        [str(venv / "bin" / "tensorgate"), "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--workers" in help_text
    check = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "tensorgate.healthcheck", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 1 and "UNAVAILABLE" in check.stderr
