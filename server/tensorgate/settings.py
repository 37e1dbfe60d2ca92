"""One settings object, filled from defaults, a TOML file, TENSORGATE_* variables and flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tensorgate.errors import TensorgateError

if TYPE_CHECKING:
    from tensorgate.observability.trace_settings import TraceSettings

ENV_PREFIX = "TENSORGATE_"
# A list setting's separator in a variable, where its items may hold commas themselves.
_LIST_SEPARATORS = {
    "restrict": ";",
    "grpc_restricted_protocol": ";",
    "http_restricted_api": ";",
    "model_repository": os.pathsep,
}
# The ports TLS may cover.
TLS_PORTS = ("grpc", "http", "metrics")

# What each setting does, for `--help` and the generated settings reference.
HELP = {
    "model_repository": "directory laid out like a Triton model repository (repeatable, "
    "model names unique across them; in the variable, ':' between directories); missing: "
    "exit 2",
    "host": "address every port listens on, unless its own address is given",
    "grpc_address": "address the gRPC port listens on (default: --host)",
    "http_address": "address the HTTP port listens on (default: --host)",
    "metrics_address": "address the metrics port listens on (default: --http-address)",
    "server_id": "the server's name in its metadata (ServerMetadata, GET /v2)",
    "grpc_port": "port of the gRPC inference service, health and reflection",
    "model_control_mode": "none: load every model at start; explicit: load/unload by RPC; "
    "poll: load every model at start, then load, reload and unload them as their directories "
    "appear, change and disappear",
    "repository_poll_secs": "poll mode: seconds between two looks at the repository",
    "load_model": "explicit mode: model to load at start (repeatable; '*' loads all)",
    "exit_on_error": "exit non-zero if any model fails to load at start",
    "model_load_thread_count": "models whose files load at the same time",
    "model_load_retry_count": "times a model's failed load is tried again before the model "
    "is unavailable",
    "model_config_name": "read each model's configs/NAME.pbtxt where it has one, else its "
    "config.pbtxt (one repository, configs per deployment)",
    "disable_auto_complete_config": "take configs as written: inputs, outputs and batching "
    "are not completed from model files or TritonPythonModel.auto_complete_config",
    "strict_readiness": "ready only when every model loaded (default true)",
    "http_port": "port of the REST shim and browser page; -1 disables HTTP",
    "http_max_body_bytes": "largest HTTP request body accepted (413 beyond)",
    "http_header_timeout": "seconds a client has to send a request's head, from connecting or "
    "from its first byte; then 408 and the connection closes",
    "http_max_connections": "concurrent HTTP connections and requests before 503",
    "cors_allow_origins": "origin allowed to call the REST API from a browser (repeatable; '*')",
    "metrics_port": "port of Prometheus /metrics; -1 disables metrics",
    "allow_sagemaker": "serve SageMaker's /ping and /invocations (the model: "
    "SAGEMAKER_TRITON_DEFAULT_MODEL_NAME) on --sagemaker-port",
    "sagemaker_port": "port of SageMaker's routes",
    "allow_vertex_ai": "serve Vertex AI's AIP_HEALTH_ROUTE and AIP_PREDICT_ROUTE on "
    "--vertex-ai-port (default: on when AIP_MODE is PREDICTION)",
    "vertex_ai_port": "port of Vertex AI's routes (default: AIP_HTTP_PORT, else 8080)",
    "vertex_ai_default_model": "the model Vertex AI's predictions go to (default: the only "
    "model loaded)",
    "metrics_config": "Triton's metrics settings, KEY=VALUE (repeatable): "
    "summary_latencies=true adds nv_inference_*_summary_us quantiles over the last minute "
    "(summary_quantiles=Q:E,...); counter_latencies=false drops the *_duration_us counters",
    "allow_cpu_metrics": "export the machine's CPU and memory gauges (nv_cpu_*)",
    "metrics_interval_ms": "ms between the samples nv_cpu_utilization is measured over; 0: "
    "over the time since the previous scrape",
    "allow_gpu_metrics": "export GPU gauges through NVML where a GPU answers",
    "dev": "human-readable console logs instead of JSON lines",
    "access_log_rate": "share (0-1) of successful inferences access-logged; failures always are",
    "trace_exporter": "OpenTelemetry span exporter: none, console or otlp (OTEL_EXPORTER_OTLP_*)",
    "trace_otlp_url": "otlp: send spans over OTLP/HTTP to this URL (host:port/path is http://) "
    "instead of OTLP/gRPC",
    "trace_resource": "KEY=VALUE attribute of the traced service, such as service.name "
    "(repeatable)",
    "trace_file": "write traces to this file in Triton's JSON trace format (instead of "
    "--trace-exporter)",
    "trace_level": "OFF, TIMESTAMPS or TENSORS (the trace file only; repeatable); changeable at "
    "run time, also per model, via /v2/trace/setting",
    "trace_rate": "trace every N-th request (a client's traceparent decides for its own)",
    "trace_count": "traces to collect before tracing stops; -1: no limit",
    "trace_log_frequency": "write the trace file every N traces, to FILE.0, FILE.1, ...; 0: "
    "append to FILE as traces finish",
    "log_level": "DEBUG, INFO, WARNING or ERROR; changeable at run time via /v2/logging",
    "log_format": "json (JSON lines), console, or Triton's text lines: default "
    "(LMMDD hh:mm:ss.ffffff) or ISO8601; changeable at run time via /v2/logging",
    "log_file": "append log lines to this file instead of standard error",
    "tls_cert": "PEM certificate: serve the --tls-ports over TLS (with --tls-key)",
    "tls_key": "PEM private key of --tls-cert",
    "tls_client_ca": "PEM CA bundle: require client certificates signed by it (mutual TLS)",
    "tls_ports": "ports served over TLS when --tls-cert is given: grpc, http, metrics "
    "(repeatable; default all three)",
    "restrict": "GROUP[,GROUP]:HEADER=VALUE: calls of those endpoint groups must carry the "
    "header with that value (repeatable; in the variable, ';' between restrictions)",
    "grpc_restricted_protocol": "as --restrict, for gRPC calls only (Triton's flag)",
    "grpc_header_forward_pattern": "regular expression: gRPC metadata whose names it finds "
    "reaches the model as string request parameters (case-insensitive unless it starts (?-i))",
    "http_header_forward_pattern": "regular expression: HTTP headers whose names it finds "
    "reach the model as string request parameters (names in lower case)",
    "http_restricted_api": "as --restrict, for HTTP calls only (Triton's flag)",
    "auth_token_file": "file of bearer tokens, one per line, each optionally followed by the "
    "endpoint groups it grants; every group but --auth-public then needs one; re-read on change",
    "auth_public": "endpoint groups that need no token when --auth-token-file is set",
    "rate_limit": "off, or execution_count: an instance runs model code only while it holds "
    "the resources its instance_group's rate_limiter names",
    "rate_limit_resource": "NAME:COUNT[:DEVICE]: how much of a rate-limiter resource there is, "
    "on every device or on GPU DEVICE (repeatable; default: the largest need of any instance)",
    "allow_log_updates": "let clients change log settings without explicit model-control mode",
    "max_tensor_elements": "elements one request tensor may hold (INVALID_ARGUMENT beyond, "
    "checked before anything is allocated)",
    "max_bytes_element": "bytes one BYTES element may hold (INVALID_ARGUMENT beyond)",
    "cache_size": "bytes of the response cache that models with response_cache { enable: true } "
    "share; 0: no cache",
    "execution": "where model batches run: thread (instance threads), process (each instance "
    "its own process, tensors through shared memory), inline (on the event loop) or auto "
    "(on the event loop while the recent batches' p99 stays under --inline-max-us); a model's "
    "execution parameter wins",
    "process_nice": "niceness added to each process instance's process, 0-19: when the "
    "server's event loop and model code want the same core, the loop's short work goes first; "
    "0: the server's own priority",
    "inline_max_us": "execution auto: the p99 of recent batch times, in microseconds, above "
    "which batches leave the event loop for the instance threads",
    "model_timeout": "seconds a batch may run before its requests fail with DEADLINE_EXCEEDED "
    "and its instance is replaced (dynamic-batcher models; a model's model_timeout parameter "
    "wins); 0: no limit",
    "exit_timeout": "seconds a shutdown (SIGTERM, Ctrl-C) waits for the requests in flight; "
    "those still unanswered then get UNAVAILABLE / 503 and the server exits without waiting "
    "for their model code (Triton's --exit-timeout-secs)",
    "default_max_batch_size": "max_batch_size given to a model whose config leaves it out "
    "and whose file batches (Triton's default, 4)",
    "max_message_bytes": "largest gRPC message sent or received",
    "grpc_keepalive_time": "ms between the server's keepalive pings on a gRPC connection",
    "grpc_keepalive_timeout": "ms the server waits for a keepalive ping's answer before it "
    "closes the connection",
    "grpc_keepalive_permit_without_calls": "send keepalive pings, and accept the client's, "
    "on connections with no call open",
    "grpc_http2_max_pings_without_data": "pings the server sends without data between them "
    "(0: no limit)",
    "grpc_http2_min_recv_ping_interval_without_data": "ms a client must leave between pings "
    "without data; each one sooner is a strike",
    "grpc_http2_max_ping_strikes": "strikes before the server closes the connection with "
    "GOAWAY too_many_pings (0: no limit)",
    "grpc_infer_response_compression_level": "none, low, medium or high: every gRPC response "
    "compressed with an algorithm the client accepts, as grpc picks one for the level (from a "
    "grpc client: gzip for low, deflate above)",
    "grpc_max_connection_age": "ms a gRPC connection may live before the server sends GOAWAY, "
    "so clients reconnect and spread over replicas (0: no limit)",
    "grpc_max_connection_age_grace": "ms the calls of a connection past its age get to finish "
    "before it is closed (0: no limit)",
    "intra_op_threads": "threads per backend session (onnxruntime, torch); 0: the backend's "
    "default",
    "max_queue_size": "waiting requests per model version (and waiting sequences of a sequence "
    "model, open streams of a decoupled one) before RESOURCE_EXHAUSTED",
    "max_queue_wait": "seconds of expected queue wait beyond which a request is shed at once "
    "with RESOURCE_EXHAUSTED (dynamic-batcher models; keeps accepted latency low under "
    "overload); 0: off",
    "workers": "worker processes sharing the ports: a number, or auto (one per core, one when "
    "a model holds a GPU or a KV cache); instance_group counts are per worker",
    "reuse_port": "bind with SO_REUSEPORT, so several servers can share the ports",
    "event_loop": "auto (uvloop where installed), uvloop or asyncio",
    "kv_cache_bytes": "KV cache of each generation model, in bytes (a model's kv_cache_bytes "
    "parameter wins); 0: half the free GPU memory on a GPU, 256 MiB on the CPU",
    "config": "TOML file of settings (keys as the flags, with underscores)",
}


@dataclass(slots=True)
class Settings:
    """Server settings; each field is also a flag (--grpc-port) and a variable
    (TENSORGATE_GRPC_PORT)."""

    # Triton's repeatable --model-repository: model names are unique across them.
    model_repository: list[Path] = field(default_factory=lambda: [Path("model_repository")])
    host: str = "0.0.0.0"
    # Each port's own address, as Triton's flags; "": --host (metrics: the HTTP address).
    grpc_address: str = ""
    http_address: str = ""
    metrics_address: str = ""
    server_id: str = "tensorgate"
    grpc_port: int = 8001
    http_port: int = 8000  # REST shim; -1 turns it off
    http_max_body_bytes: int = 128 * 2**20
    http_max_connections: int = 2048  # beyond this uvicorn answers 503
    http_header_timeout: float = 10.0  # slow or silent clients lose their connection
    cors_allow_origins: list[str] = field(default_factory=list)  # "*" allows any origin
    metrics_port: int = 8002  # Prometheus /metrics; -1 turns metrics off
    metrics_config: list[str] = field(default_factory=list)
    allow_cpu_metrics: bool = True
    metrics_interval_ms: float = 0.0  # Triton's default is 2000; 0: between scrapes
    allow_gpu_metrics: bool = True
    # Cloud platforms' serving contracts (transport/rest/cloud.py), as Triton serves them.
    allow_sagemaker: bool = False
    sagemaker_port: int = 8080
    allow_vertex_ai: bool = field(
        default_factory=lambda: os.environ.get("AIP_MODE") == "PREDICTION"
    )
    vertex_ai_port: int = field(
        default_factory=lambda: int(os.environ.get("AIP_HTTP_PORT", "8080"))
    )
    vertex_ai_default_model: str = ""
    model_control_mode: str = "none"  # none | explicit | poll
    repository_poll_secs: float = 15.0  # poll mode: Triton's flag and default
    load_model: list[str] = field(default_factory=list)  # explicit mode: load at start ("*" = all)
    exit_on_error: bool = False
    model_load_thread_count: int = 4  # Triton's default
    model_load_retry_count: int = 0
    model_config_name: str = ""  # configs/<name>.pbtxt before config.pbtxt, as Triton's flag
    disable_auto_complete_config: bool = False
    default_max_batch_size: int = 4
    # tritonclient uses INT32_MAX for both directions; anything smaller rejects big tensors.
    max_message_bytes: int = 2**31 - 1
    # gRPC keepalive and ping policy, Triton's flags and defaults (grpc's own defaults).
    grpc_keepalive_time: int = 7_200_000
    grpc_keepalive_timeout: int = 20_000
    grpc_keepalive_permit_without_calls: bool = False
    grpc_http2_max_pings_without_data: int = 2
    grpc_http2_min_recv_ping_interval_without_data: int = 300_000
    grpc_http2_max_ping_strikes: int = 2
    grpc_infer_response_compression_level: str = "none"
    grpc_max_connection_age: int = 0  # Triton: undefined, no limit
    grpc_max_connection_age_grace: int = 0
    intra_op_threads: int = 0  # 0: the backend's own default
    max_queue_size: int = 1024  # requests waiting per model version before RESOURCE_EXHAUSTED
    model_timeout: float = 0.0  # seconds a batch may run; 0: no limit
    exit_timeout: float = 5.0  # seconds a shutdown waits for requests in flight
    cache_size: int = 0  # response cache bytes; 0: none
    execution: str = "thread"  # thread | process | inline | auto
    inline_max_us: int = 200  # execution auto: batches longer than this leave the loop
    process_nice: int = 10  # added to process instances' niceness
    max_queue_wait: float = 0.0  # shed when the expected wait is longer; 0: off
    max_tensor_elements: int = 2**31 - 1  # per request tensor
    max_bytes_element: int = 128 * 2**20  # per BYTES element
    workers: str = "1"  # processes sharing the ports; "auto": one per core
    reuse_port: bool = False
    event_loop: str = "auto"  # auto (uvloop where installed) | uvloop | asyncio
    # TLS for gRPC and HTTP (PEM files); with a client CA, clients must present a certificate.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tls_ports: list[str] = field(default_factory=lambda: list(TLS_PORTS))
    # Access control (transport/access.py): restricted endpoint groups, bearer tokens.
    restrict: list[str] = field(default_factory=list)
    grpc_restricted_protocol: list[str] = field(default_factory=list)
    # Triton's header forwarding (transport/header_forward.py); "": none.
    grpc_header_forward_pattern: str = ""
    http_header_forward_pattern: str = ""
    http_restricted_api: list[str] = field(default_factory=list)
    auth_token_file: Path | None = None
    auth_public: list[str] = field(default_factory=lambda: ["health"])
    # Triton's rate limiter (executors/rate_limiter.py): off or execution_count.
    rate_limit: str = "off"
    rate_limit_resource: list[str] = field(default_factory=list)
    # Log settings are read-only to clients unless this, or explicit model-control mode.
    allow_log_updates: bool = False
    # Like Triton: the server is ready only if every model it was asked to load is READY.
    strict_readiness: bool = True
    log_level: str = "INFO"
    log_format: str = "json"  # json | console | default | ISO8601 (Triton's text lines)
    log_file: Path | None = None
    dev: bool = False  # readable console logs instead of JSON lines
    access_log_rate: float = 0.01  # share of successful inferences logged; failures always
    trace_exporter: str = "none"  # none | console | otlp (needs the otel extra)
    trace_otlp_url: str = ""  # OTLP/HTTP (Triton's opentelemetry url); "": OTLP/gRPC
    trace_resource: list[str] = field(default_factory=list)
    trace_file: Path | None = None  # Triton's JSON trace file instead of OpenTelemetry
    # Triton's trace settings at start (observability/trace_settings.py).
    trace_level: list[str] = field(default_factory=lambda: ["TIMESTAMPS"])
    trace_rate: int = 1
    trace_count: int = -1
    trace_log_frequency: int = 0
    # Generation models' KV cache; 0: half the free memory of a GPU, 256 MiB on the CPU.
    kv_cache_bytes: int = 0
    config: Path | None = None

    def trace_settings(self) -> TraceSettings:
        """Triton's trace settings as this server starts with them."""
        from tensorgate.observability.trace_settings import TraceSettings

        return TraceSettings(
            self.trace_level,
            self.trace_rate,
            self.trace_count,
            self.trace_log_frequency,
            "" if self.trace_file is None else str(self.trace_file),
            files=self.trace_file is not None,
        )

    def address(self, port: str) -> str:
        """The address `port` (grpc, http or metrics) listens on."""
        own = {"grpc": self.grpc_address, "http": self.http_address}.get(port, "")
        if port == "metrics":
            own = self.metrics_address or self.http_address
        return own or self.host

    @property
    def log_updates_allowed(self) -> bool:
        """Clients may change log settings: explicit model control, or the operator said so."""
        return self.allow_log_updates or self.model_control_mode == "explicit"


def _coerce(name: str, kind: Any, value: Any) -> Any:
    text = str(kind)
    if isinstance(value, str):
        if "bool" in text:
            return value.strip().lower() in ("1", "true", "yes", "on")
        if "int" in text:
            return int(value)
        if "float" in text:
            return float(value)
        if "list" in text:
            items = [v for v in value.split(_LIST_SEPARATORS.get(name, ",")) if v]
            return [Path(v) for v in items] if "Path" in text else items
        if "Path" in text:
            return Path(value)
    if "list[Path]" in text and value is not None:
        return [Path(v) for v in (value if isinstance(value, list) else [value])]
    if "Path" in text and value is not None:
        return Path(value)
    return value


def build_settings(overrides: dict[str, Any], environ: dict[str, str] | None = None) -> Settings:
    """Merge in increasing precedence: defaults, config file, environment, explicit overrides."""
    environ = dict(os.environ) if environ is None else environ
    fields = {f.name: f.type for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    config_path = overrides.get("config") or environ.get(ENV_PREFIX + "CONFIG")
    if config_path:
        with open(config_path, "rb") as handle:
            data = tomllib.load(handle)
        for key, value in data.items():
            key = key.replace("-", "_")
            if key not in fields:
                raise ValueError(f"{config_path}: unknown setting '{key}'")
            values[key] = _coerce(key, fields[key], value)
    for key, kind in fields.items():
        env = environ.get(ENV_PREFIX + key.upper())
        if env is not None:
            values[key] = _coerce(key, kind, env)
    for key, value in overrides.items():
        if value is not None:
            values[key] = _coerce(key, fields[key], value)
    settings = Settings(**values)
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    """Settings that are wrong together or out of range: ValueError with the reason."""
    if settings.model_control_mode not in ("none", "explicit", "poll"):
        raise ValueError("model_control_mode must be 'none', 'explicit' or 'poll'")
    if not settings.repository_poll_secs > 0:
        raise ValueError("repository_poll_secs must be a number of seconds > 0")
    name = settings.model_config_name
    if name and (name != name.strip() or any(c.isspace() or c in "/\\" for c in name)):
        raise ValueError("model_config_name must be a file name without spaces or slashes")
    if settings.log_format not in ("json", "console", "default", "ISO8601"):
        raise ValueError("log_format must be json, console, default or ISO8601")
    if settings.event_loop not in ("auto", "uvloop", "asyncio"):
        raise ValueError("event_loop must be 'auto', 'uvloop' or 'asyncio'")
    if settings.trace_exporter not in ("none", "console", "otlp"):
        raise ValueError("trace_exporter must be 'none', 'console' or 'otlp'")
    if settings.rate_limit not in ("off", "execution_count"):
        raise ValueError("rate_limit must be 'off' or 'execution_count'")
    from tensorgate.executors.rate_limiter import parse_resource

    for resource in settings.rate_limit_resource:
        parse_resource(resource)
    _check_tracing(settings)
    _check_tls(settings)
    _check_access(settings)
    from tensorgate.transport.header_forward import header_forward

    header_forward(settings.grpc_header_forward_pattern, "--grpc-header-forward-pattern")
    header_forward(settings.http_header_forward_pattern, "--http-header-forward-pattern")
    from tensorgate.observability.triton_metrics import MetricsConfig

    MetricsConfig.parse(settings.metrics_config)
    _check_numbers(settings)
    _check_keepalive(settings)


def _check_tracing(settings: Settings) -> None:
    if settings.trace_file is not None and settings.trace_exporter != "none":
        raise ValueError("trace_file and trace_exporter are two places for traces: pick one")
    if (settings.trace_otlp_url or settings.trace_resource) and settings.trace_exporter == "none":
        raise ValueError(
            "trace_otlp_url and trace_resource describe OpenTelemetry spans: they need "
            "--trace-exporter otlp (Triton: --trace-config mode=opentelemetry)"
        )
    if any("=" not in item for item in settings.trace_resource):
        raise ValueError("trace_resource takes KEY=VALUE")
    try:
        settings.trace_settings()
    except TensorgateError as exc:
        raise ValueError(exc.message) from None


def _check_tls(settings: Settings) -> None:
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ValueError("tls_cert and tls_key go together")
    if settings.tls_client_ca is not None and settings.tls_cert is None:
        raise ValueError("tls_client_ca needs tls_cert and tls_key")
    unknown = sorted(set(settings.tls_ports) - set(TLS_PORTS))
    if unknown or not settings.tls_ports:
        raise ValueError(f"tls_ports: unknown ports {unknown}; known: {', '.join(TLS_PORTS)}")


def _check_numbers(settings: Settings) -> None:
    if settings.metrics_interval_ms < 0:
        raise ValueError("metrics_interval_ms must be >= 0")
    if settings.model_load_thread_count < 1 or settings.model_load_retry_count < 0:
        raise ValueError("model_load_thread_count must be >= 1 and model_load_retry_count >= 0")
    if settings.workers != "auto" and not (settings.workers.isdigit() and int(settings.workers)):
        raise ValueError(f"workers must be a positive number or auto, got {settings.workers!r}")
    if settings.execution not in ("thread", "process", "inline", "auto"):
        raise ValueError("execution must be thread, process, inline or auto")
    if not 0 <= settings.process_nice <= 19:
        raise ValueError("process_nice must be between 0 and 19")
    if settings.cache_size < 0:
        raise ValueError("cache_size must be a number of bytes >= 0")
    if settings.max_tensor_elements < 1 or settings.max_bytes_element < 0:
        raise ValueError("max_tensor_elements must be >= 1 and max_bytes_element >= 0")
    if not (settings.model_timeout >= 0 and settings.max_queue_wait >= 0):
        raise ValueError("model_timeout and max_queue_wait must be numbers of seconds >= 0")
    if not settings.exit_timeout >= 0:
        raise ValueError("exit_timeout must be a number of seconds >= 0")
    if not settings.http_header_timeout > 0:
        raise ValueError("http_header_timeout must be a number of seconds > 0")
    if not 0.0 <= settings.access_log_rate <= 1.0:
        raise ValueError("access_log_rate must be between 0 and 1")


def _check_keepalive(settings: Settings) -> None:
    keepalive = (
        "grpc_keepalive_time",
        "grpc_keepalive_timeout",
        "grpc_http2_max_pings_without_data",
        "grpc_http2_min_recv_ping_interval_without_data",
        "grpc_http2_max_ping_strikes",
        "grpc_max_connection_age",
        "grpc_max_connection_age_grace",
    )
    for name in keepalive:
        if getattr(settings, name) < 0:
            raise ValueError(f"{name} must be >= 0")
    if settings.grpc_infer_response_compression_level not in ("none", "low", "medium", "high"):
        raise ValueError("grpc_infer_response_compression_level must be none, low, medium or high")
    if not settings.grpc_keepalive_time or not settings.grpc_keepalive_timeout:
        raise ValueError("grpc_keepalive_time and grpc_keepalive_timeout must be > 0 ms")


def _check_access(settings: Settings) -> None:
    from tensorgate.transport.access import GROUPS, AccessPolicy, restrictions

    AccessPolicy(restrictions(settings))  # each parses, and no group is restricted twice
    for group in settings.auth_public:
        if group not in GROUPS:
            raise ValueError(f"auth_public: unknown endpoint group '{group}'")


def reference_markdown() -> str:
    """The settings reference page: every setting's flag, variable, default and meaning."""
    lines = [
        "# Settings reference",
        "",
        "Generated from `server/tensorgate/settings.py` at documentation build time.",
        "Precedence: flags over environment variables over the `--config` TOML file over",
        "defaults. List settings repeat the flag or take a comma list in the variable.",
        "",
        "| flag | variable | default | what it does |",
        "|---|---|---|---|",
    ]
    for item in dataclasses.fields(Settings):
        default = (
            item.default_factory()
            if item.default_factory is not dataclasses.MISSING
            else item.default
        )
        shown = "" if default in (None, [], "") else f"`{default}`"
        flag = "--" + item.name.replace("_", "-")
        if isinstance(default, bool):
            flag = f"{flag}` / `--no-{flag[2:]}"
        lines.append(
            f"| `{flag}` | `{ENV_PREFIX}{item.name.upper()}` | {shown} | {HELP[item.name]} |"
        )
    return "\n".join(lines) + "\n"
