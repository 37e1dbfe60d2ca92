"""Command line: `tensorgate serve --model-repository DIR ...`, also `python -m tensorgate`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from tensorgate import __version__
from tensorgate.settings import Settings, build_settings

_HELP = {
    "model_repository": "directory laid out like a Triton model repository",
    "model_control_mode": "none: load every model at start; explicit: load/unload by RPC",
    "load_model": "explicit mode: model to load at start (repeatable; '*' loads all)",
    "exit_on_error": "exit non-zero if any model fails to load at start",
    "strict_readiness": "ready only when every model loaded (default true)",
    "http_port": "port of the REST shim and browser page; -1 disables HTTP",
    "http_max_body_bytes": "largest HTTP request body accepted (413 beyond)",
    "http_max_connections": "concurrent HTTP connections and requests before 503",
    "cors_allow_origins": "origin allowed to call the REST API from a browser (repeatable; '*')",
    "metrics_port": "port of Prometheus /metrics; -1 disables metrics",
    "dev": "human-readable console logs instead of JSON lines",
    "access_log_rate": "share (0-1) of successful inferences access-logged; failures always are",
    "trace_exporter": "OpenTelemetry span exporter: none, console or otlp (OTEL_EXPORTER_OTLP_*)",
    "trace_rate": "share (0-1) of requests traced when no sampled traceparent arrives",
    "log_level": "DEBUG, INFO, WARNING or ERROR; changeable at run time via /v2/logging",
    "tls_cert": "PEM certificate: serve gRPC and HTTP over TLS (with --tls-key)",
    "tls_key": "PEM private key of --tls-cert",
    "tls_client_ca": "PEM CA bundle: require client certificates signed by it (mutual TLS)",
    "config": "TOML file of settings (keys as the flags, with underscores)",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tensorgate", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model repository")
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        help_text = _HELP.get(f.name, "") + f" (env TENSORGATE_{f.name.upper()})"
        if "bool" in kind:
            serve.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif "list" in kind:
            serve.add_argument(flag, action="append", default=None, help=help_text)
        else:
            convert = {"int": int, "float": float}.get(kind, str)
            serve.add_argument(flag, type=convert, default=None, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tensorgate` command."""
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = build_settings(overrides)
    except (ValueError, OSError) as exc:
        print(f"tensorgate: {exc}", file=sys.stderr)
        return 2
    from tensorgate.app import run  # grpc and the backends load only when serving

    return run(settings)
