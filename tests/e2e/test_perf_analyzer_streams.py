"""perf_analyzer against the stream and state models, as against Triton."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Server
from tests.e2e.test_tools import perf_analyzer

pytestmark = pytest.mark.slow


def test_streaming_against_a_decoupled_model(stream_server: Server, tmp_path: Path) -> None:
    data = tmp_path / "repeat.json"
    data.write_text(
        json.dumps(
            {
                "data": [
                    {
                        "IN": {"content": [1, 2, 3, 4], "shape": [4]},
                        "DELAY": {"content": [0, 0, 0, 0], "shape": [4]},
                        "WAIT": {"content": [0], "shape": [1]},
                    }
                ]
            }
        )
    )
    perf_analyzer(stream_server, "repeat_int32", "--streaming", "--input-data", str(data))


def test_sequence_length_against_a_sequence_model(stream_server: Server) -> None:
    output = perf_analyzer(stream_server, "simple_sequence", "--sequence-length", "5")
    assert "Sequence" in output or "sequence" in output.lower()


def test_sequences_against_a_model_with_implicit_state(stream_server: Server) -> None:
    output = perf_analyzer(stream_server, "running_sum", "--sequence-length", "5", concurrency=4)
    assert "sequence" in output.lower()


def test_an_ensemble_reports_its_composing_models(stream_server: Server) -> None:
    output = perf_analyzer(stream_server, "pipeline", "--input-data", "zero")
    assert "Composing models:" in output
    assert "add_sub" in output
