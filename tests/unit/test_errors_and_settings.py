"""The error table and the settings sources."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from tensorgate.errors import ErrorKind, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from tensorgate.settings import build_settings
from tensorgate.transport.grpc.servicer import status_code


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_every_error_kind_maps_to_a_real_grpc_status(kind: ErrorKind) -> None:
    assert grpc.StatusCode[kind.grpc_status_name].name == kind.grpc_status_name
    assert 400 <= kind.http_status < 600


@pytest.mark.parametrize(
    ("error", "code", "http"),
    [
        (InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT, 400),
        (NotFound("x"), grpc.StatusCode.NOT_FOUND, 404),
        (Unavailable("x"), grpc.StatusCode.UNAVAILABLE, 503),
        (ResourceExhausted("x"), grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    ],
)
def test_error_maps_to_grpc_status_and_http_code(error, code, http) -> None:  # type: ignore[no-untyped-def]
    assert status_code(error) == code
    assert error.kind.http_status == http


def test_settings_precedence_is_flags_then_environment_then_file(tmp_path: Path) -> None:
    config = tmp_path / "tg.toml"
    config.write_text(
        'grpc_port = 9001\nhttp-port = 9000\nload_model = ["a"]\nexit_on_error = true\n'
    )
    env = {
        "TENSORGATE_HTTP_PORT": "9100",
        "TENSORGATE_METRICS_PORT": "9102",
        "TENSORGATE_CONFIG": str(config),
    }
    settings = build_settings({"metrics_port": 9202, "model_repository": "/models"}, env)
    assert settings.grpc_port == 9001  # file
    assert settings.http_port == 9100  # environment beats file
    assert settings.metrics_port == 9202  # flag beats environment
    assert settings.load_model == ["a"] and settings.exit_on_error is True
    assert settings.model_repository == [Path("/models")]


def test_model_repositories_come_from_repeated_flags_or_a_path_list() -> None:
    from tensorgate.cli import _parser

    args = _parser().parse_args(["serve", "--model-repository", "/a", "--model-repository", "/b"])
    flags = {k: v for k, v in vars(args).items() if k != "command"}
    assert build_settings(flags, {}).model_repository == [Path("/a"), Path("/b")]
    env = {"TENSORGATE_MODEL_REPOSITORY": "/a:/b"}
    assert build_settings({}, env).model_repository == [Path("/a"), Path("/b")]


def test_settings_reject_unknown_keys_and_modes(tmp_path: Path) -> None:
    config = tmp_path / "tg.toml"
    config.write_text("grpc_prot = 1\n")
    with pytest.raises(ValueError, match="unknown setting 'grpc_prot'"):
        build_settings({"config": str(config)}, {})
    with pytest.raises(ValueError, match="model_control_mode must be 'none', 'explicit' or"):
        build_settings({"model_control_mode": "polling"}, {})
    with pytest.raises(ValueError, match="repository_poll_secs must be a number of seconds > 0"):
        build_settings({"model_control_mode": "poll", "repository_poll_secs": 0}, {})


def test_event_loop_is_uvloop_unless_asked_for_asyncio() -> None:
    import asyncio

    import uvloop
    from tensorgate.app import loop_factory

    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("asyncio") is asyncio.new_event_loop
    with pytest.raises(ValueError, match="event_loop must be"):
        build_settings({"event_loop": "trio"}, environ={})


def test_event_loop_auto_falls_back_to_asyncio_where_uvloop_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio
    import sys

    from tensorgate.app import loop_factory

    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert loop_factory("auto") is asyncio.new_event_loop
    with pytest.raises(RuntimeError, match="uvloop is not installed"):
        loop_factory("uvloop")


def test_every_setting_has_help_and_a_row_in_the_generated_reference() -> None:
    import dataclasses

    from tensorgate.settings import HELP, Settings, reference_markdown

    reference = reference_markdown()
    for item in dataclasses.fields(Settings):
        assert HELP[item.name], item.name
        assert f"`--{item.name.replace('_', '-')}" in reference, item.name
        assert f"`TENSORGATE_{item.name.upper()}`" in reference, item.name


def test_the_protocols_page_lists_every_error_kind_with_its_status_and_code() -> None:
    from pathlib import Path

    from tensorgate.errors import ErrorKind

    page = (Path(__file__).resolve().parents[2] / "docs" / "pages" / "protocols.md").read_text()
    table = page.split("<!-- errors-table:begin -->")[1].split("<!-- errors-table:end -->")[0]
    rows = {
        line.split("|")[2].strip(" `"): line.split("|")[3].strip()
        for line in table.strip().splitlines()[2:]
    }
    assert rows == {kind.grpc_status_name: str(kind.http_status) for kind in ErrorKind}
