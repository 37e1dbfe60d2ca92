"""structlog set-up: JSON lines (or a console renderer with --dev), request ids, run-time levels.

Every log line goes through structlog's processors, whether it was written with structlog or
with the standard library (grpc, uvicorn and our older modules use `logging`). A request's id
lives in a context variable: each gRPC call and HTTP request runs in a task of its own, so the
id bound at the transport appears on every line that request writes, and on no other.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor

from tensorgate.errors import InvalidArgument

REQUEST_ID_HEADER = "x-request-id"
# Longer client-supplied ids are cut: the id is echoed and logged, so it must stay bounded.
MAX_REQUEST_ID_LENGTH = 128

_prefix = os.urandom(4).hex()
_counter = itertools.count(1)


def new_request_id() -> str:
    """Unique per process and, by its random prefix, across replicas; cheaper than uuid4."""
    return f"{_prefix}-{next(_counter):x}"


def accept_request_id(value: str | bytes | None) -> str:
    """The client's id if it sent a usable one, else a new one."""
    if value:
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        text = text.strip()[:MAX_REQUEST_ID_LENGTH]
        if text.isprintable() and text:
            return text
    return new_request_id()


def bind_request_id(request_id: str) -> None:
    """Attach `request_id` to every log line the current task (and its children) writes."""
    structlog.contextvars.bind_contextvars(request_id=request_id)


def _json(event: Any, **_: Any) -> str:
    return orjson.dumps(event, default=repr).decode()


def _json_bytes(event: Any, **_: Any) -> bytes:
    return orjson.dumps(event, default=repr)


class AccessLog:
    """The access log's own structlog pipeline, rebuilt whenever the level or format changes.

    It writes straight to stderr, without the standard library's LogRecord, handler and
    formatter in the way: about 8 µs a line instead of 30 (measured in-process), which
    matters for the one log that can write a line per request.
    """

    def __init__(self) -> None:
        # Until LogControl configures it (tests that build a server in-process), structlog's
        # defaults apply.
        self.logger: Any = structlog.get_logger(ACCESS_LOGGER)

    def configure(self, level: int, fmt: str = "json", stream: TextIO | None = None) -> None:
        """`fmt`: json, console or one of Triton's text formats; `stream`: where lines go
        (standard error by default)."""
        stream = stream or sys.stderr
        processors: list[Processor] = [
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _access_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ]
        logger: Any
        raw = getattr(stream, "buffer", None)
        if fmt != "json" or raw is None:
            renderer = _renderer(fmt, stream)
            logger = structlog.PrintLogger(stream)
        else:
            renderer = structlog.processors.JSONRenderer(serializer=_json_bytes)
            logger = structlog.BytesLogger(raw)
        self.logger = structlog.wrap_logger(
            logger,
            processors=[*processors, renderer],
            # Only the standard levels have filtering loggers; "off" (above CRITICAL) becomes
            # CRITICAL, which the access log never uses.
            wrapper_class=structlog.make_filtering_bound_logger(
                next((std for std in (10, 20, 30, 40, 50) if std >= level), 50)
            ),
        )


ACCESS_LOGGER = "tensorgate.access"


def _access_logger_name(_: Any, __: str, event: EventDict) -> EventDict:
    event["logger"] = ACCESS_LOGGER
    return event


access_log = AccessLog()


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


# Line formats: tensorgate's JSON lines, a console for people, and Triton's two text formats.
FORMATS = ("json", "console", "default", "ISO8601")


def _triton_line(iso: bool) -> Processor:
    """Triton's text line: `LMMDD hh:mm:ss.ffffff PID LOGGER] EVENT key=value ...`
    (`default`) or `YYYY-MM-DDThh:mm:ssZ L PID LOGGER] ...` (`ISO8601`), in UTC. Triton
    writes its source file and line where the logger's name stands here."""
    pid = os.getpid()

    def render(_: Any, __: str, event: EventDict) -> str:
        level = str(event.pop("level", "info"))[:1].upper()
        stamp = str(event.pop("timestamp", ""))
        where = event.pop("logger", "")
        message = event.pop("event", "")
        trace = event.pop("exception", None)
        fields = " ".join(
            f"{key}={value if isinstance(value, int | float) else _json(value)}"
            for key, value in event.items()
        )
        head = (
            f"{stamp[:19]}Z {level}" if iso else f"{level}{stamp[5:7]}{stamp[8:10]} {stamp[11:26]}"
        )
        line = f"{head} {pid} {where}] {message}" + (f" {fields}" if fields else "")
        return f"{line}\n{trace}" if trace else line

    return render


def _renderer(fmt: str, stream: TextIO) -> Processor:
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(colors=stream.isatty())
    if fmt in ("default", "ISO8601"):
        return _triton_line(fmt == "ISO8601")
    return structlog.processors.JSONRenderer(serializer=_json)


def _formatter(fmt: str, stream: TextIO) -> logging.Formatter:
    finish: list[Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if fmt != "console":
        # The console renderer prints tracebacks itself; the others need them as a string.
        finish.append(structlog.processors.format_exc_info)
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(), processors=[*finish, _renderer(fmt, stream)]
    )


class LogControl:
    """The process's logging: configured once at start, adjustable at run time.

    Run-time changes come through Triton's LogSettings RPC (`/v2/logging`), so
    tritonclient's `update_log_settings` works unchanged.
    """

    def __init__(
        self,
        level: str = "INFO",
        dev: bool = False,
        fmt: str = "json",
        file: Path | None = None,
    ) -> None:
        """`fmt`: one of FORMATS (`dev` means console); `file`: append every line to this
        file instead of standard error (Triton's --log-file)."""
        self.file = file
        # Line-buffered, appended: the workers of one server may share the file.
        self.stream: TextIO = (
            open(file, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - the process's
            if file is not None
            else sys.stderr
        )
        self.handler = logging.StreamHandler(self.stream)
        self.format = "console" if dev else fmt
        if self.format not in FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        self.handler.setFormatter(_formatter(self.format, self.stream))
        root = logging.getLogger()
        root.handlers = [self.handler]
        self.set_level(level)
        structlog.configure(
            processors=[
                structlog.stdlib.filter_by_level,  # before any work for a disabled level
                *_shared_processors(),
                structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )

    def set_level(self, level: str | int) -> None:
        if isinstance(level, str):
            name = level.upper()
            if name not in logging.getLevelNamesMapping():
                raise InvalidArgument(f"unknown log level '{level}'")
            level = logging.getLevelNamesMapping()[name]
        logging.getLogger().setLevel(level)
        access_log.configure(level, self.format, self.stream)
        # grpc and uvicorn are chatty at INFO about things an operator did not ask for.
        for noisy in ("uvicorn.error", "grpc._cython"):
            logging.getLogger(noisy).setLevel(max(level, logging.WARNING))

    @property
    def level(self) -> int:
        return logging.getLogger().level

    # Triton's log settings: log_info / log_warning / log_error switch levels on and off,
    # log_verbose_level > 0 turns on debug; the lowest enabled level is the threshold.

    def settings(self) -> dict[str, bool | int | str]:
        level = self.level
        return {
            "log_file": "" if self.file is None else str(self.file),
            "log_info": level <= logging.INFO,
            "log_warning": level <= logging.WARNING,
            "log_error": level <= logging.ERROR,
            "log_verbose_level": 1 if level <= logging.DEBUG else 0,
            "log_format": self.format,
        }

    def update(self, changes: dict[str, bool | int | str]) -> dict[str, bool | int | str]:
        """Apply Triton-style settings; unknown keys or values are INVALID_ARGUMENT."""
        current = self.settings()
        for key, value in changes.items():
            if key not in current:
                raise InvalidArgument(
                    f"unknown log setting '{key}'; known: {', '.join(sorted(current))}"
                )
            if type(value) is not type(current[key]):
                raise InvalidArgument(
                    f"log setting '{key}' takes a {type(current[key]).__name__}, "
                    f"got {type(value).__name__}"
                )
        if changes.get("log_file", current["log_file"]) != current["log_file"]:
            # A client that could choose a path could write any file the server may write.
            raise InvalidArgument("log_file is fixed at start (--log-file)")
        fmt = changes.get("log_format", self.format)
        if fmt not in FORMATS:
            raise InvalidArgument(f"log_format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        wanted = {**current, **changes}
        if int(wanted["log_verbose_level"]) > 0:
            level = logging.DEBUG
        elif wanted["log_info"]:
            level = logging.INFO
        elif wanted["log_warning"]:
            level = logging.WARNING
        elif wanted["log_error"]:
            level = logging.ERROR
        else:
            level = logging.CRITICAL + 1
        self.set_level(level)
        if fmt != self.format:
            self.format = str(fmt)
            self.handler.setFormatter(_formatter(self.format, self.stream))
            access_log.configure(self.level, self.format, self.stream)
        structlog.get_logger(__name__).info("log settings changed", **self.settings())
        return self.settings()
