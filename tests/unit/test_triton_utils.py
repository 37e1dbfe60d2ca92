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
