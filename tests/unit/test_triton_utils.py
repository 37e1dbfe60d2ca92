"""Parts of Triton's pb_utils API that answer without a server."""

from __future__ import annotations

import pytest
from tensorgate.backends import triton_utils as pb


def test_releasing_a_request_is_accepted_and_rescheduling_is_refused_by_name() -> None:
    request = pb.InferenceRequest("m", [])
    request.set_release_flags(pb.TRITONSERVER_REQUEST_RELEASE_ALL)
    with pytest.raises(pb.TritonModelException, match="request rescheduling"):
        request.set_release_flags(pb.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)


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
