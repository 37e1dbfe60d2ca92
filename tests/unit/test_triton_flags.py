"""A tritonserver command line, rewritten into tensorgate's flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorgate.cli import _parser
from tensorgate.settings import build_settings
from tensorgate.triton_flags import translate


def _settings(*argv: str) -> object:
    args = _parser().parse_args(["serve", *translate(argv)])
    return build_settings({k: v for k, v in vars(args).items() if k != "command"}, {})


def test_a_triton_command_line_sets_what_tritons_flags_set() -> None:
    settings = _settings(
        "--model-repository=/models",
        "--exit-timeout-secs=30",
        "--allow-metrics=false",
        "--allow-http",
        "true",
        "--strict-readiness=false",
        "--exit-on-error=true",
        "--log-verbose=1",
        "--strict-model-config=true",
        "--backend-config=onnxruntime,default-max-batch-size=8",
        "--cache-config=local,size=1048576",
        "--reuse-grpc-port=1",
        "--model-control-mode=explicit",
        "--load-model=a",
    )
    assert settings.model_repository == [Path("/models")]  # type: ignore[attr-defined]
    expected = {
        "exit_timeout": 30.0,
        "metrics_port": -1,
        "http_port": 8000,
        "strict_readiness": False,
        "exit_on_error": True,
        "log_level": "DEBUG",
        "disable_auto_complete_config": True,
        "default_max_batch_size": 8,
        "cache_size": 1048576,
        "reuse_port": True,
        "model_control_mode": "explicit",
        "load_model": ["a"],
    }
    assert {k: getattr(settings, k) for k in expected} == expected


def test_tritons_trace_config_becomes_the_trace_flags() -> None:
    settings = _settings(
        "--trace-config=triton,file=/tmp/trace.json",
        "--trace-config",
        "level=TIMESTAMPS",
        "--trace-config=level=TENSORS",
        "--trace-config=rate=10",
        "--trace-config=count=100",
        "--trace-config=triton,log-frequency=50",
        "--trace-config=mode=triton",
    )
    expected = {
        "trace_file": Path("/tmp/trace.json"),
        "trace_level": ["TIMESTAMPS", "TENSORS"],
        "trace_rate": 10,
        "trace_count": 100,
        "trace_log_frequency": 50,
        "trace_exporter": "none",
    }
    assert {k: getattr(settings, k) for k in expected} == expected
    assert translate(["--trace-config=mode=opentelemetry"]) == ["--trace-exporter", "otlp"]
    otel = _settings(
        "--trace-config=mode=opentelemetry",
        "--trace-config",
        "opentelemetry,url=collector:4318/v1/traces",
        "--trace-config=opentelemetry,resource=service.name=edge",
        "--trace-config=opentelemetry,resource=pod=a=b",
    )
    assert otel.trace_otlp_url == "collector:4318/v1/traces"  # type: ignore[attr-defined]
    assert otel.trace_resource == ["service.name=edge", "pod=a=b"]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="need --trace-exporter otlp"):
        _settings("--trace-config=opentelemetry,url=collector:4318/v1/traces")


def test_tensorgate_s_own_spellings_pass_through_unchanged() -> None:
    argv = ["--exit-timeout", "3", "--no-strict-readiness", "--metrics-port", "-1", "pos"]
    assert translate(argv) == argv


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--allow-grpc=false", "--allow-grpc=false: tensorgate always serves gRPC"),
        ("--backend-config=python,shm-default-byte-size=1", "no 'shm-default-byte-size' setting"),
        ("--cache-config=redis,host=x", "tensorgate's cache is 'local,size=BYTES'"),
        ("--strict-readiness=maybe", "--strict-readiness takes true or false"),
        ("--trace-config=opentelemetry,bsp_max_queue_size=8", "batching from OTEL_BSP_"),
    ],
)
def test_a_triton_flag_tensorgate_cannot_honour_fails_by_name(flag: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        translate([flag])


def test_the_command_refuses_triton_flags_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    from tensorgate.cli import main

    assert main(["serve", "--allow-grpc=false"]) == 2
    assert "--allow-grpc=false: tensorgate always serves gRPC" in capsys.readouterr().err
    # No counterpart: refused with the reason, in both of Triton's forms.
    for argv in (["--pinned-memory-pool-byte-size=268435456"], ["--http-thread-count", "8"]):
        assert main(["serve", *argv]) == 2
        assert f"tensorgate: {argv[0]}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # a flag neither server knows: the parser's
        main(["serve", "--no-such-flag=1"])
    assert refused.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err


def test_tritons_addresses_id_aliases_and_metric_switches_set_their_settings() -> None:
    settings = _settings(
        "--model-store=/models",
        "--http-address=127.0.0.1",
        "--grpc-address",
        "::1",
        "--metrics-address=127.0.0.2",
        "--id=edge-7",
        "--response-cache-byte-size=4096",
        "--allow-cpu-metrics=false",
        "--allow-gpu-metrics=false",
        "--model-namespacing=false",
        "--grpc-infer-response-compression-level=medium",
        "--pinned-memory-pool-byte-size=0",
        "--cuda-memory-pool-byte-size",
        "0:0",
        "--log-verbose=false",
        "--metrics-interval-ms=500",
        "--allow-sagemaker=false",
        "--grpc-restricted-protocol=inference:x-key=1",
        "--http-restricted-api=model-repository,statistics:x-admin=2",
    )
    assert settings.model_repository == [Path("/models")]  # type: ignore[attr-defined]
    expected = {
        "server_id": "edge-7",
        "cache_size": 4096,
        "allow_cpu_metrics": False,
        "allow_gpu_metrics": False,
        "log_level": "INFO",  # --log-verbose=false
        "grpc_infer_response_compression_level": "medium",
        "metrics_interval_ms": 500.0,
        "grpc_restricted_protocol": ["inference:x-key=1"],
        "http_restricted_api": ["model-repository,statistics:x-admin=2"],
    }
    assert {k: getattr(settings, k) for k in expected} == expected
    addresses = {port: settings.address(port) for port in ("grpc", "http", "metrics")}  # type: ignore[attr-defined]
    assert addresses == {"grpc": "::1", "http": "127.0.0.1", "metrics": "127.0.0.2"}
    # Unset, each port takes --host, and metrics the HTTP address, as in Triton.
    settings = _settings("--host=127.0.0.9", "--http-address=127.0.0.3")
    addresses = {port: settings.address(port) for port in ("grpc", "http", "metrics")}  # type: ignore[attr-defined]
    assert addresses == {"grpc": "127.0.0.9", "http": "127.0.0.3", "metrics": "127.0.0.3"}


def test_tritons_grpc_tls_flags_put_tls_on_the_grpc_port_alone(tmp_path: Path) -> None:
    cert, key, ca = (str(tmp_path / name) for name in ("cert.pem", "key.pem", "ca.pem"))
    files = [f"--grpc-server-cert={cert}", "--grpc-server-key", key, f"--grpc-root-cert={ca}"]
    assert translate(["--grpc-use-ssl=true", *files]) == [
        *("--tls-cert", cert, "--tls-key", key, "--tls-ports", "grpc")
    ]
    assert translate([*files, "--grpc-use-ssl-mutual=true"]) == [
        *("--tls-cert", cert, "--tls-key", key, "--tls-client-ca", ca, "--tls-ports", "grpc")
    ]
    assert translate(["--grpc-use-ssl=false", *files]) == []  # Triton reads them only with SSL
    with pytest.raises(ValueError, match="--grpc-use-ssl needs --grpc-server-key"):
        translate(["--grpc-use-ssl=true", f"--grpc-server-cert={cert}"])
    with pytest.raises(ValueError, match="--grpc-use-ssl-mutual needs --grpc-root-cert"):
        translate(
            ["--grpc-use-ssl-mutual=1", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}"]
        )
    with pytest.raises(ValueError, match="--model-namespacing=true: model names are unique"):
        translate(["--model-namespacing=true"])


def test_header_forward_patterns_search_names_case_insensitively_unless_told() -> None:
    from tensorgate.transport.header_forward import HeaderForward

    headers = [("X-Tenant", "acme"), ("x-trace", "1"), ("content-type", "json")]
    assert HeaderForward("^x-t", "--f").matching(headers) == {"X-Tenant": "acme", "x-trace": "1"}
    assert HeaderForward("(?-i)^x-t", "--f").matching(headers) == {"x-trace": "1"}
    parameters: dict[str, object] = {"x-trace": "own"}
    HeaderForward("^x-", "--f").add_to(parameters, headers)  # type: ignore[arg-type]
    assert parameters == {"x-trace": "own", "X-Tenant": "acme"}
    with pytest.raises(ValueError, match="--http-header-forward-pattern"):
        _settings("--http-header-forward-pattern=x-(")
