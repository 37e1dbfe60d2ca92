"""Tensor codecs: every datatype both directions, over raw bytes and typed contents."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from tensorgate.dataplane.types import InferResponse
from tensorgate.errors import InvalidArgument
from tensorgate.protocol import datatypes
from tensorgate.protocol.grpc_codec import decode_infer_request, encode_infer_response
from tensorgate.protocol.tensors import array_from_raw, array_to_raw, serialize_bytes
from tensorgate_protos import grpc_service_pb2 as pb

SAMPLES = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 7, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127]], dtype=np.int8),
    "INT16": np.array([[-32768, 0, 32767]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1]], dtype=np.int64),
    "FP16": np.array([[-1.5, 0.0, 65504.0]], dtype=np.float16),
    "FP32": np.array([[-1.5, 0.0, 3.25e38]], dtype=np.float32),
    "FP64": np.array([[-1.5, 0.0, 1e308]], dtype=np.float64),
    "BF16": np.array([[-1.5, 0.0, 3.0e38]], dtype=ml_dtypes.bfloat16),
    "BYTES": np.array([[b"", b"abc", "é\x00z".encode()]], dtype=np.object_),
}


def _request_with_raw(name: str, array: np.ndarray) -> pb.ModelInferRequest:
    dt = datatypes.from_numpy(array.dtype) if name != "BF16" else datatypes.BY_NAME["BF16"]
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="X", datatype=name, shape=array.shape)
    message.raw_input_contents.append(array_to_raw(array, dt))
    return message


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_raw_contents_round_trip_preserves_values_for_every_datatype(name: str) -> None:
    array = SAMPLES[name]
    request = decode_infer_request(_request_with_raw(name, array))
    decoded = request.inputs["X"]
    assert request.datatypes["X"] == name
    assert decoded.shape == array.shape
    assert decoded.dtype == datatypes.BY_NAME[name].numpy
    assert decoded.tolist() == array.tolist()

    response = encode_infer_response(InferResponse("m", "1", "id-1", {"Y": decoded}, {"Y": name}))
    out = response.outputs[0]
    assert (out.name, out.datatype, list(out.shape)) == ("Y", name, list(array.shape))
    again = array_from_raw("Y", response.raw_output_contents[0], datatypes.BY_NAME[name], out.shape)
    assert again.tolist() == array.tolist()


def test_raw_fixed_size_input_is_a_view_of_the_request_bytes() -> None:
    message = _request_with_raw("FP32", SAMPLES["FP32"])
    decoded = decode_infer_request(message).inputs["X"]
    assert not decoded.flags.owndata and not decoded.flags.writeable


@pytest.mark.parametrize(
    "name", sorted(n for n, d in datatypes.BY_NAME.items() if d.contents_field)
)
def test_typed_contents_decode_for_every_datatype_that_has_a_field(name: str) -> None:
    array = SAMPLES[name]
    message = pb.ModelInferRequest(model_name="m")
    tensor = message.inputs.add(name="X", datatype=name, shape=array.shape)
    getattr(tensor.contents, datatypes.BY_NAME[name].contents_field).extend(
        array.reshape(-1).tolist()
    )
    decoded = decode_infer_request(message).inputs["X"]
    assert decoded.tolist() == array.tolist()


@pytest.mark.parametrize("name", ["FP16", "BF16"])
def test_typed_contents_for_types_without_a_field_are_rejected(name: str) -> None:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="X", datatype=name, shape=[1]).contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidArgument, match="raw_input_contents"):
        decode_infer_request(message)


def test_raw_size_that_disagrees_with_shape_is_rejected_with_both_sizes() -> None:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="X", datatype="FP32", shape=[2, 4])
    message.raw_input_contents.append(b"\x00" * 12)
    with pytest.raises(InvalidArgument, match=r"12 bytes.*needs 32"):
        decode_infer_request(message)


def test_raw_and_typed_contents_together_are_rejected() -> None:
    message = _request_with_raw("FP32", SAMPLES["FP32"])
    message.inputs[0].contents.fp32_contents.extend([1.0, 2.0, 3.0])
    with pytest.raises(InvalidArgument, match="both typed contents and raw"):
        decode_infer_request(message)


def test_raw_contents_count_must_match_inputs() -> None:
    message = _request_with_raw("FP32", SAMPLES["FP32"])
    message.inputs.add(name="Z", datatype="FP32", shape=[1, 3])
    with pytest.raises(InvalidArgument, match="raw_input_contents has 1 entries"):
        decode_infer_request(message)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"\x05\x00\x00\x00abc", "declares 5 bytes but only 3 remain"),
        (b"\x01\x00", "2 bytes of BYTES content cannot hold 1 elements"),
        (b"\x01\x00\x00\x00ab", "1 bytes left over"),
    ],
)
def test_malformed_bytes_lengths_are_rejected(raw: bytes, match: str) -> None:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="S", datatype="BYTES", shape=[1])
    message.raw_input_contents.append(raw)
    with pytest.raises(InvalidArgument, match=match):
        decode_infer_request(message)


def test_unknown_datatype_and_negative_dims_are_rejected() -> None:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="X", datatype="FLOAT", shape=[1])
    message.raw_input_contents.append(b"\x00" * 4)
    with pytest.raises(InvalidArgument, match="unknown datatype 'FLOAT'"):
        decode_infer_request(message)
    message.inputs[0].datatype = "FP32"
    message.inputs[0].shape[:] = [-1]
    with pytest.raises(InvalidArgument, match="negative dimension"):
        decode_infer_request(message)


def test_parameters_decode_every_variant_including_uint64_and_double() -> None:
    message = pb.ModelInferRequest(model_name="m", id="r1")
    message.parameters["priority"].uint64_param = 2**64 - 1
    message.parameters["timeout"].int64_param = -5
    message.parameters["ratio"].double_param = 0.25
    message.parameters["flag"].bool_param = True
    message.parameters["tag"].string_param = "x"
    request = decode_infer_request(message)
    assert request.parameters == {
        "priority": 2**64 - 1,
        "timeout": -5,
        "ratio": 0.25,
        "flag": True,
        "tag": "x",
    }
    assert request.id == "r1"


def test_bytes_serialization_prefixes_each_element_with_its_length() -> None:
    assert serialize_bytes(np.array(["ab", b"c"], dtype=object)) == (
        b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"
    )
