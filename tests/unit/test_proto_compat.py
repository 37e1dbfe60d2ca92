"""Our protos against the descriptors tritonclient ships: every shared message must match.

tritonclient registers the same `inference.*` names in protobuf's default pool, so its
descriptors are read in a subprocess and compared here as FileDescriptorProtos.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from google.protobuf import descriptor_pb2
from tensorgate_protos import grpc_service_pb2, model_config_pb2

DUMP = """
import sys
from tritonclient.grpc import model_config_pb2, service_pb2
from google.protobuf import descriptor_pb2
files = descriptor_pb2.FileDescriptorSet()
for module in (model_config_pb2, service_pb2):
    module.DESCRIPTOR.CopyToProto(files.file.add())
sys.stdout.buffer.write(files.SerializeToString())
"""


def _messages(files: list[descriptor_pb2.FileDescriptorProto]) -> dict[str, dict[int, tuple]]:  # type: ignore[type-arg]
    out: dict[str, dict[int, tuple]] = {}  # type: ignore[type-arg]

    def walk(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}"
        out[name] = {
            f.number: (f.name, f.type, f.label, f.type_name.split(".")[-1]) for f in message.field
        }
        for nested in message.nested_type:
            walk(name, nested)

    for file in files:
        for message in file.message_type:
            walk(file.package, message)
    return out


def _ours() -> list[descriptor_pb2.FileDescriptorProto]:
    files = []
    for module in (model_config_pb2, grpc_service_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        files.append(proto)
    return files


@pytest.fixture(scope="module")
def triton_files() -> list[descriptor_pb2.FileDescriptorProto]:
    result = subprocess.run([sys.executable, "-c", DUMP], capture_output=True, timeout=60)
    if result.returncode != 0:
        pytest.skip(f"tritonclient is not importable: {result.stderr.decode()[-300:]}")
    files = descriptor_pb2.FileDescriptorSet.FromString(result.stdout)
    return list(files.file)


def test_every_triton_message_exists_with_identical_fields(
    triton_files: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    ours, theirs = _messages(_ours()), _messages(triton_files)
    missing = sorted(set(theirs) - set(ours))
    assert not missing, f"messages missing from our protos: {missing}"
    for name, fields in theirs.items():
        for number, field in fields.items():
            assert ours[name].get(number) == field, f"{name} field {number} differs"


def test_service_methods_match_triton(
    triton_files: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    def methods(files: list[descriptor_pb2.FileDescriptorProto]) -> dict[str, tuple]:  # type: ignore[type-arg]
        return {
            f"{f.package}.{s.name}/{m.name}": (
                m.input_type,
                m.output_type,
                m.client_streaming,
                m.server_streaming,
            )
            for f in files
            for s in f.service
            for m in s.method
        }

    assert methods(_ours()) == methods(triton_files)


def test_infer_parameter_has_the_uint64_and_double_variants() -> None:
    fields = _messages(_ours())["inference.InferParameter"]
    assert fields[4][:2] == ("double_param", descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE)
    assert fields[5][:2] == ("uint64_param", descriptor_pb2.FieldDescriptorProto.TYPE_UINT64)
