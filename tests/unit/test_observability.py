"""Recorders, request ids and log settings: the pieces the end-to-end tests cannot pin down."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from tensorgate.errors import InvalidArgument
from tensorgate.observability.logs import (
    LogControl,
    accept_request_id,
    access_log,
    new_request_id,
)
from tensorgate.observability.metrics import Histogram, ModelMetrics, latency_histogram


def test_histogram_buckets_are_less_or_equal_with_an_inf_bucket() -> None:
    histogram = Histogram((1, 2, 4))
    for value in (1, 2, 3, 4, 5):
        histogram.observe(value)
    assert histogram.cumulative() == [("1.0", 1), ("2.0", 2), ("4.0", 4), ("+Inf", 5)]
    assert histogram.total == 15 and histogram.count == 5


def test_latency_histogram_records_nanoseconds_and_exports_seconds() -> None:
    histogram = latency_histogram()
    histogram.observe(100_000)  # exactly 100 µs: in the first bucket
    histogram.observe(100_001)
    buckets = dict(histogram.cumulative())
    assert buckets["0.0001"] == 1 and buckets["0.00025"] == 2
    assert histogram.total * histogram.scale == pytest.approx(200_001e-9)


def test_model_metrics_count_by_protocol_and_outcome() -> None:
    metrics = ModelMetrics()
    metrics.request_finished("grpc", "success", 1_000, 10)
    metrics.request_finished("grpc", "success", 1_000, 10)
    metrics.request_finished("http", "invalid_argument", 1_000, -1)
    assert metrics.requests == {("grpc", "success"): 2, ("http", "invalid_argument"): 1}
    assert metrics.request.count == 3 and metrics.queue.count == 2  # -1: never queued


def test_request_ids_are_accepted_bounded_or_generated() -> None:
    assert accept_request_id(b" abc-1 ") == "abc-1"
    assert len(accept_request_id("x" * 500)) == 128
    generated = accept_request_id("bad\nid")
    assert generated != "bad\nid" and generated.count("-") == 1
    assert accept_request_id(None) != accept_request_id("")
    assert new_request_id() != new_request_id()


@pytest.fixture
def control() -> Iterator[LogControl]:
    root = logging.getLogger()
    handlers, level = root.handlers, root.level
    yield LogControl("INFO")
    root.handlers, root.level = handlers, level


def test_log_settings_map_tritons_switches_to_a_level(control: LogControl) -> None:
    assert control.settings()["log_info"] is True
    control.update({"log_info": False})
    assert logging.getLogger().level == logging.WARNING
    control.update({"log_verbose_level": 1})
    assert logging.getLogger().level == logging.DEBUG
    control.update({"log_verbose_level": 0, "log_info": False, "log_warning": False})
    assert logging.getLogger().level == logging.ERROR
    settings = control.update({"log_format": "console"})
    assert settings["log_format"] == "console" and settings["log_error"] is True


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"log_color": True}, "unknown log setting 'log_color'"),
        ({"log_info": 1}, "takes a bool, got int"),
        ({"log_file": "/tmp/x.log"}, "log_file is fixed at start"),
        ({"log_format": "xml"}, "log_format must be"),
    ],
)
def test_bad_log_settings_are_invalid_argument(
    control: LogControl, changes: dict[str, bool | int | str], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        control.update(changes)


def test_tritons_log_formats_and_log_file_write_every_line_to_the_file(tmp_path: Path) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers, root.level
    path = tmp_path / "server.log"
    try:
        control = LogControl("INFO", fmt="default", file=path)
        assert control.settings()["log_file"] == str(path)
        structlog.get_logger("tensorgate.repository").info("model loaded", model="m", seconds=1.5)
        logging.getLogger("grpc").warning("plain %s", "logging")
        access_log.logger.info("infer", model="m", outcome="success")
        control.update({"log_format": "ISO8601"})
        structlog.get_logger("tensorgate").error("model is unavailable", reason="no file")
        control.update({"log_file": str(path)})  # the same file: no change, accepted
    finally:
        root.handlers, root.level = handlers, level
        access_log.configure(level)
        control.stream.close()
    lines = path.read_text().splitlines()
    pid = os.getpid()
    assert re.fullmatch(
        rf'I\d{{4}} \d\d:\d\d:\d\d\.\d{{6}} {pid} tensorgate.repository\] model loaded model="m" '
        r"seconds=1.5",
        lines[0],
    ), lines[0]
    assert re.fullmatch(rf"W\d{{4}} [\d:.]{{15}} {pid} grpc\] plain logging", lines[1]), lines[1]
    assert lines[2].endswith(f'{pid} tensorgate.access] infer model="m" outcome="success"')
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    expected = rf'{stamp} E {pid} tensorgate\] model is unavailable reason="no file"'
    assert re.fullmatch(expected, lines[-2]), lines[-2]
    assert "log settings changed" in lines[-1]
