"""Settings refuse values the server cannot honour, by name, before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorgate.settings import build_settings


@pytest.mark.parametrize("nice", [-1, 20])
def test_a_process_nice_outside_0_to_19_is_refused(nice: int) -> None:
    with pytest.raises(ValueError, match="process_nice must be between 0 and 19"):
        build_settings({"process_nice": nice}, {})


def test_process_instances_run_behind_the_loop_unless_told_otherwise() -> None:
    assert build_settings({}, {}).process_nice == 10
    assert build_settings({}, {"TENSORGATE_PROCESS_NICE": "0"}).process_nice == 0


def test_a_negative_exit_timeout_is_refused_and_zero_cuts_off_at_once() -> None:
    with pytest.raises(ValueError, match="exit_timeout must be a number of seconds >= 0"):
        build_settings({"exit_timeout": -1}, {})
    assert build_settings({}, {"TENSORGATE_EXIT_TIMEOUT": "0"}).exit_timeout == 0.0
    assert build_settings({}, {}).exit_timeout == 5.0


@pytest.mark.parametrize("name", ["a b", "../h100", "gpu/h100", " h100"])
def test_a_model_config_name_that_is_not_a_plain_file_name_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="model_config_name must be a file name"):
        build_settings({"model_config_name": name}, {})
    assert build_settings({"model_config_name": "h100"}, {}).model_config_name == "h100"


def test_every_flag_the_triton_page_names_exists() -> None:
    import dataclasses
    import re
    from pathlib import Path

    from tensorgate.settings import Settings

    page = Path(__file__).resolve().parents[2] / "docs" / "pages" / "from-triton.md"
    rows = [line for line in page.read_text().splitlines() if line.startswith("| `--")]
    ours: set[str] = set()
    for row in rows:
        triton, tensorgate = row.split(" | ")[:2]
        # "the same": Triton's own flag names are tensorgate's too.
        named = triton if tensorgate.startswith("the same") else tensorgate
        ours.update(re.findall(r"--([a-z][a-z0-9-]*)", named))
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert ours and {f.replace("-", "_") for f in ours} <= fields


def test_workers_auto_runs_one_worker_beside_a_model_that_may_hold_a_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from tensorgate.workers.supervisor import worker_count

    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3}, raising=False)
    (tmp_path / "cpu_model").mkdir()
    (tmp_path / "cpu_model" / "config.pbtxt").write_text("instance_group [{ kind: KIND_CPU }]")
    settings = build_settings({"workers": "auto", "model_repository": tmp_path}, {})
    assert worker_count(settings) == 4
    (tmp_path / "placed").mkdir()
    (tmp_path / "placed" / "config.pbtxt").write_text("instance_group [{ kind: KIND_MODEL }]")
    assert worker_count(settings) == 1
