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
        ("--trace-config=opentelemetry,url=x:4318", "OpenTelemetry settings come from OTEL_"),
    ],
)
def test_a_triton_flag_tensorgate_cannot_honour_fails_by_name(flag: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        translate([flag])


def test_the_command_refuses_triton_flags_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    from tensorgate.cli import main

    assert main(["serve", "--allow-grpc=false"]) == 2
    assert "--allow-grpc=false: tensorgate always serves gRPC" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # no counterpart: the parser names it
        main(["serve", "--pinned-memory-pool-byte-size=0"])
    assert refused.value.code == 2
    assert "--pinned-memory-pool-byte-size" in capsys.readouterr().err
