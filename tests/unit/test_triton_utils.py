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


def test_the_type_and_bytes_helpers_answer_as_tritons_do() -> None:
    import numpy as np

    assert pb.numpy_to_triton_type(np.float32) == 11
    assert pb.numpy_to_triton_type(np.object_) == pb.numpy_to_triton_type(np.bytes_) == 13
    assert pb.numpy_to_triton_type(np.complex64) is None
    assert pb.triton_to_numpy_type(8) is np.int32 and pb.triton_to_numpy_type(13) is np.object_
    assert pb.triton_to_numpy_type(99) is None
    assert pb.TRITON_STRING_TO_NUMPY["TYPE_STRING"] is np.object_
    assert pb.TRITON_STRING_TO_NUMPY["TYPE_FP16"] is np.float16
    tensors = [pb.Tensor("x", np.zeros(2, np.int64)), pb.Tensor("s", np.array([b"a"], object))]
    assert [t.triton_dtype() for t in tensors] == [9, 13]
    assert pb.triton_to_numpy_type(tensors[0].triton_dtype()) is np.int64
    strings = np.array([[b"ab", "c"], [b"", b"\x00z"]], dtype=np.object_)
    encoded = pb.serialize_byte_tensor(strings)
    assert encoded == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c\x00\x00\x00\x00\x02\x00\x00\x00\x00z"
    assert pb.deserialize_bytes_tensor(encoded).tolist() == [b"ab", b"c", b"", b"\x00z"]
    assert pb.serialize_byte_tensor(np.array([], dtype=np.object_)) == ()
