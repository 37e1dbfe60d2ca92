"""Parts of Triton's pb_utils API that answer without a server."""

from __future__ import annotations

import pytest
from tensorgate.backends import triton_utils as pb


def test_only_a_request_of_an_iterative_sequence_may_be_rescheduled() -> None:
    request = pb.InferenceRequest("m", [])
    request.set_release_flags(pb.TRITONSERVER_REQUEST_RELEASE_ALL)
    assert not request._rescheduled()
    with pytest.raises(pb.TritonModelException, match="iterative_sequence: true"):
        request.set_release_flags(pb.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
    request._reschedulable = True
    request.set_release_flags(pb.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
    assert request._rescheduled()


def test_model_code_cannot_load_or_unload_its_own_model() -> None:
    with pb.running("me"):
        with pytest.raises(pb.TritonModelException, match="cannot unload itself"):
            pb.unload_model("me")
        with pytest.raises(pb.TritonModelException, match="cannot load itself"):
            pb.load_model("me")


def test_a_packed_python_environment_fails_the_load_by_name(tmp_path: object) -> None:
    from pathlib import Path

    from tensorgate.backends.base import InstanceContext
    from tensorgate.backends.python_model import PythonFactory
    from tensorgate.errors import ModelLoadError
    from tensorgate_protos import model_config_pb2 as mc

    config = mc.ModelConfig(name="m", backend="python")
    config.parameters["EXECUTION_ENV_PATH"].string_value = "$$TRITON_MODEL_DIRECTORY/env.tar.gz"
    model_dir = Path(str(tmp_path))
    context = InstanceContext("m", 1, model_dir, model_dir / "1" / "model.py", config, "cpu", 1, 0)
    with pytest.raises(ModelLoadError, match="parameter EXECUTION_ENV_PATH"):
        PythonFactory().create(context)
