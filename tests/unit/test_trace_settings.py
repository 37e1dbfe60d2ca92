"""Triton's trace settings: layers, clearing, the rate's counter and the count's budget."""

from __future__ import annotations

import pytest
from tensorgate.errors import InvalidArgument
from tensorgate.observability.trace_settings import TraceSettings


def _sampled(settings: TraceSettings, model: str, requests: int) -> list[int]:
    return [i for i in range(requests) if settings.sample(model, None) is not None]


def test_a_model_follows_the_server_except_where_set_and_clearing_falls_back() -> None:
    settings = TraceSettings(trace_file="/tmp/t.json")
    settings.update({"trace_rate": ["12"], "log_frequency": ["34"]}, "simple")
    settings.update({"trace_rate": ["56"], "trace_count": ["78"], "trace_level": ["OFF"]})
    assert settings.get("simple")["trace_rate"] == ["12"]
    assert settings.get("simple")["trace_level"] == ["OFF"]  # from the server's layer
    assert settings.get("other")["trace_rate"] == ["56"]

    settings.update({"trace_rate": None, "trace_count": None})
    assert settings.get() == {
        "trace_file": ["/tmp/t.json"],
        "trace_level": ["OFF"],
        "trace_rate": ["1"],
        "trace_count": ["-1"],
        "log_frequency": ["0"],
    }
    assert settings.get("simple")["trace_rate"] == ["12"]
    settings.update({"trace_rate": None, "trace_level": None}, "simple")
    assert settings.get("simple")["trace_rate"] == ["1"]
    assert settings.get("simple")["log_frequency"] == ["34"]


def test_the_rate_traces_the_first_of_every_n_requests() -> None:
    settings = TraceSettings(rate=3)
    assert _sampled(settings, "m", 9) == [0, 3, 6]
    settings.update({"trace_rate": ["2"]}, "own")
    # A model with its own rate counts its own requests; the others share one counter.
    assert _sampled(settings, "own", 4) == [0, 2]
    assert _sampled(settings, "m", 3) == [0]  # requests 9, 10, 11 of the shared counter


def test_a_count_is_a_budget_spent_by_whoever_shares_it() -> None:
    settings = TraceSettings(count=3)
    assert _sampled(settings, "a", 2) == [0, 1]
    assert _sampled(settings, "b", 5) == [0]
    assert settings.get("a")["trace_count"] == ["0"]
    settings.update({"trace_count": ["2"]}, "a")
    assert _sampled(settings, "a", 5) == [0, 1]
    assert _sampled(settings, "b", 5) == []
    settings.update({"trace_count": ["-1"]})
    assert len(_sampled(settings, "b", 5)) == 5
    assert _sampled(settings, "a", 5) == []  # still on its own, spent budget


def test_a_client_traceparent_decides_for_its_request_but_off_turns_all_off() -> None:
    settings = TraceSettings(rate=1000)
    assert settings.sample("m", None) is not None  # the first request
    assert settings.sample("m", None) is None
    assert settings.sample("m", True) == ("TIMESTAMPS",)
    assert settings.sample("m", False) is None
    settings.update({"trace_level": ["OFF"]}, "m")
    assert settings.sample("m", True) is None
    assert settings.sample("n", True) is not None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"trace_speed": ["1"]}, "unknown trace setting 'trace_speed'"),
        ({"trace_level": ["LOUD"]}, "unknown trace level 'LOUD'"),
        ({"trace_level": ["OFF", "TIMESTAMPS"]}, "OFF cannot be combined"),
        ({"trace_rate": ["0"]}, "'trace_rate' must be a whole number >= 1, got '0'"),
        ({"trace_count": ["many"]}, "'trace_count' must be a whole number >= -1"),
        ({"trace_rate": ["1", "2"]}, "'trace_rate' takes one value, got 2"),
        ({"trace_file": ["/etc/cron.d/x"]}, "trace_file is fixed when the server starts"),
    ],
)
def test_bad_updates_are_refused_by_name_and_change_nothing(
    changes: dict[str, list[str] | None], message: str
) -> None:
    settings = TraceSettings(trace_file="/tmp/t.json")
    before = settings.get("m")
    with pytest.raises(InvalidArgument, match=message):
        settings.update({"trace_rate": ["5"], **changes}, "m")
    assert settings.get("m") == before


def test_tensors_and_log_frequency_need_the_trace_file() -> None:
    spans = TraceSettings(files=False)
    with pytest.raises(InvalidArgument, match="TENSORS needs the trace file"):
        spans.update({"trace_level": ["TIMESTAMPS", "TENSORS"]})
    with pytest.raises(InvalidArgument, match="log_frequency applies to the trace file"):
        spans.update({"log_frequency": ["10"]})
    assert TraceSettings().update({"trace_level": ["TIMESTAMPS", "TENSORS"]})["trace_level"] == [
        "TIMESTAMPS",
        "TENSORS",
    ]
