"""tritonserver's spellings of the flags tensorgate shares, so that a Triton command line
runs with only the program's name changed.

Most of Triton's flags are tensorgate's under the same name. Switches take Triton's
`--flag=true|false` (tensorgate's own form is `--flag` and `--no-flag`); the flags whose name
or form differ are rewritten into tensorgate's (`_REWRITES`: `--exit-timeout-secs`,
`--allow-http`, `--log-verbose`, `--backend-config`, `--cache-config`, `--trace-config` with
OpenTelemetry's `url` and `resource`, `--model-store`, `--id`, ...), and the gRPC TLS flags
are read together into TLS on the gRPC port alone. A value tensorgate cannot honour, and a
Triton flag it has no counterpart for (`_NO_COUNTERPART`), fail with the flag's name and why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from tensorgate.settings import Settings

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _switch(flag: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"--{flag} takes true or false, got {value!r}")


def _only_true(flag: str, why: str) -> Callable[[str, str], list[str]]:
    def rewrite(_: str, value: str) -> list[str]:
        if not _switch(flag, value):
            raise ValueError(f"--{flag}=false: {why}")
        return []

    return rewrite


def _refused_when_true(flag: str, value: str, why: str) -> list[str]:
    if _switch(flag, value):
        raise ValueError(f"--{flag}=true: {why}")
    return []


def _no_pool(why: str) -> Callable[[str, str], list[str]]:
    """`--flag=0` (or `GPU:0`): no pool, which is what tensorgate has; any size refused."""

    def rewrite(flag: str, value: str) -> list[str]:
        if value.rpartition(":")[2].strip() != "0":
            raise ValueError(f"--{flag}={value}: {why}; only 0 is accepted")
        return []

    return rewrite


def _off_when_false(setting: str) -> Callable[[str, str], list[str]]:
    return lambda flag, value: [] if _switch(flag, value) else [setting, "-1"]


def _level_when_false(level: str) -> Callable[[str, str], list[str]]:
    return lambda flag, value: [] if _switch(flag, value) else ["--log-level", level]


def _backend_config(flag: str, value: str) -> list[str]:
    """`[backend,]key=value`: tensorgate has one backend-wide setting, the default batch."""
    setting = value.split(",", 1)[-1]
    key, _, number = setting.partition("=")
    if key != "default-max-batch-size":
        raise ValueError(
            f"--{flag}={value}: tensorgate's backends take no '{key}' setting "
            "(only default-max-batch-size)"
        )
    return ["--default-max-batch-size", number]


def _cache_config(flag: str, value: str) -> list[str]:
    kind, _, setting = value.partition(",")
    key, _, size = setting.partition("=")
    if kind != "local" or key != "size":
        raise ValueError(f"--{flag}={value}: tensorgate's cache is 'local,size=BYTES'")
    return ["--cache-size", size]


# `--trace-config [MODE,]KEY=VALUE` keys and tensorgate's flag for each.
_TRACE_KEYS = {
    "file": "--trace-file",
    "level": "--trace-level",
    "rate": "--trace-rate",
    "count": "--trace-count",
    "log-frequency": "--trace-log-frequency",
}


def _trace_config(flag: str, value: str) -> list[str]:
    """Triton's trace settings, one `[mode,]key=value` per flag; `mode=opentelemetry`
    exports spans over OTLP, to `opentelemetry,url=` over HTTP (else to
    OTEL_EXPORTER_OTLP_ENDPOINT over gRPC), with `opentelemetry,resource=KEY=VALUE`s."""
    mode, _, setting = value.partition(",") if value.startswith(_MODES) else ("", "", value)
    key, _, setting_value = setting.partition("=")
    if not mode and key == "mode" and setting_value in ("triton", "opentelemetry"):
        return ["--trace-exporter", "otlp"] if setting_value == "opentelemetry" else []
    if mode in ("", "triton") and key in _TRACE_KEYS:
        return [_TRACE_KEYS[key], setting_value]
    if mode == "opentelemetry" and key in ("url", "resource") and setting_value:
        return ["--trace-otlp-url" if key == "url" else "--trace-resource", setting_value]
    raise ValueError(
        f"--{flag}={value}: tensorgate reads mode=triton|opentelemetry, the keys "
        f"{', '.join(_TRACE_KEYS)} and opentelemetry's url and resource (batching from "
        "OTEL_BSP_* variables)"
    )


_MODES = ("triton,", "opentelemetry,")


_REWRITES: dict[str, Callable[[str, str], list[str]]] = {
    "trace-config": _trace_config,
    "exit-timeout-secs": lambda flag, value: ["--exit-timeout", value],
    "allow-http": _off_when_false("--http-port"),
    "allow-metrics": _off_when_false("--metrics-port"),
    "allow-grpc": _only_true("allow-grpc", "tensorgate always serves gRPC"),
    # An integer level, or Triton's true/false for 1/0.
    "log-verbose": lambda flag, value: (
        [] if value.lower() in ("0", "false") else ["--log-level", "DEBUG"]
    ),
    "log-info": _level_when_false("WARNING"),
    "log-warning": _level_when_false("ERROR"),
    "log-error": _only_true("log-error", "errors are always logged"),
    "strict-model-config": lambda flag, value: (
        ["--disable-auto-complete-config"] if _switch(flag, value) else []
    ),
    "backend-config": _backend_config,
    "cache-config": _cache_config,
    "reuse-grpc-port": lambda flag, value: ["--reuse-port"] if _switch(flag, value) else [],
    "reuse-http-port": lambda flag, value: ["--reuse-port"] if _switch(flag, value) else [],
    "model-store": lambda flag, value: ["--model-repository", value],
    "response-cache-byte-size": lambda flag, value: ["--cache-size", value],
    "id": lambda flag, value: ["--server-id", value],
    "model-namespacing": lambda flag, value: _refused_when_true(
        flag, value, "model names are unique across the repositories"
    ),
    # Sizes of pools tensorgate does not keep: only "none" (0) says what it does.
    "pinned-memory-pool-byte-size": _no_pool("tensorgate keeps no pinned-memory pool"),
    "cuda-memory-pool-byte-size": _no_pool(
        "tensorgate keeps no CUDA memory pool (PyTorch and onnxruntime allocate their own)"
    ),
}
# Triton's gRPC TLS flags, read together at the end of the line (see `_grpc_tls`).
_GRPC_TLS = (
    "grpc-use-ssl",
    "grpc-use-ssl-mutual",
    "grpc-server-cert",
    "grpc-server-key",
    "grpc-root-cert",
)
# Triton flags with no counterpart here, and why: refused by name rather than ignored.
_NO_COUNTERPART = {
    "cuda-virtual-address-size": "tensorgate keeps no CUDA memory pool",
    "min-supported-compute-capability": "every GPU CUDA reports is used",
    "http-thread-count": "HTTP is served on the event loop (see --workers)",
    "grpc-infer-allocation-pool-size": "responses are not pooled",
    "buffer-manager-thread-count": "inputs are gathered on the requesting thread",
    "model-load-gpu-limit": "loads are not limited by GPU memory",
    "backend-directory": "tensorgate's backends are built in",
    "repoagent-directory": "repository agents are not supported",
    "cache-directory": "tensorgate's one cache is built in (--cache-config=local,size=N)",
    "host-policy": "host policies are not supported",
    "sagemaker-safe-port-range": "the other ports are whatever their flags say",
    "sagemaker-thread-count": "SageMaker's routes are served on the event loop",
    "vertex-ai-thread-count": "Vertex AI's routes are served on the event loop",
}
# Triton's switches with tensorgate's names, which Triton writes `--flag=true|false`.
_SWITCHES = {
    f.name.replace("_", "-") for f in dataclasses.fields(Settings) if str(f.type) == "bool"
}


def _grpc_tls(given: dict[str, str]) -> list[str]:
    """Triton's gRPC TLS flags as tensorgate's TLS on the gRPC port alone. As in Triton, the
    files are read only when --grpc-use-ssl (or -mutual) is true, and the root certificate
    only for mutual TLS, where clients must present a certificate it signed."""
    mutual = _switch("grpc-use-ssl-mutual", given.get("grpc-use-ssl-mutual", "false"))
    if not (mutual or _switch("grpc-use-ssl", given.get("grpc-use-ssl", "false"))):
        return []
    needed = ["grpc-server-cert", "grpc-server-key", *(["grpc-root-cert"] if mutual else [])]
    missing = [f"--{flag}" for flag in needed if not given.get(flag)]
    if missing:
        flag = "grpc-use-ssl-mutual" if mutual else "grpc-use-ssl"
        raise ValueError(f"--{flag} needs {' and '.join(missing)}")
    out = ["--tls-cert", given["grpc-server-cert"], "--tls-key", given["grpc-server-key"]]
    if mutual:
        out += ["--tls-client-ca", given["grpc-root-cert"]]
    return [*out, "--tls-ports", "grpc"]


def translate(argv: Sequence[str]) -> list[str]:
    """`serve`'s arguments with Triton's spellings rewritten into tensorgate's (ValueError
    for a value tensorgate cannot honour, or a Triton flag it has no counterpart for)."""
    out: list[str] = []
    grpc_tls: dict[str, str] = {}
    items = iter(argv)
    for arg in items:
        name, equals, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--"):
            out.append(arg)
        elif name in _NO_COUNTERPART:
            raise ValueError(f"--{name}: {_NO_COUNTERPART[name]}")
        elif name in _REWRITES or name in _GRPC_TLS:
            if not equals:  # Triton also takes `--flag value`
                value = next(items, "")
            if name in _GRPC_TLS:
                grpc_tls[name] = value
            else:
                out += _REWRITES[name](name, value)
        elif name in _SWITCHES and equals:
            out.append(f"--{name}" if _switch(name, value) else f"--no-{name}")
        else:
            out.append(arg)
    return out + _grpc_tls(grpc_tls)
