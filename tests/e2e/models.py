"""Test models built from code: identity models per datatype, and broken repositories."""

from __future__ import annotations

from pathlib import Path

# ONNX element types by v2 datatype (BF16 goes through a Python model instead: numpy
# has no bfloat16 that onnxruntime's Python API accepts).
ONNX_TYPES = {
    "BOOL": "BOOL",
    "UINT8": "UINT8",
    "UINT16": "UINT16",
    "UINT32": "UINT32",
    "UINT64": "UINT64",
    "INT8": "INT8",
    "INT16": "INT16",
    "INT32": "INT32",
    "INT64": "INT64",
    "FP16": "FLOAT16",
    "FP32": "FLOAT",
    "FP64": "DOUBLE",
    "BYTES": "STRING",
}

BF16_IDENTITY = """
from tensorgate.backends.python_model import PythonModel

class Model(PythonModel):
    def execute(self, inputs):
        return {"OUTPUT": inputs["INPUT"].copy()}
"""

FAILING_MODEL = """
class Model:
    def execute(self, inputs):
        if inputs["INPUT"].reshape(-1)[0] < 0:
            raise ValueError("negative input is not allowed")
        return {"OUTPUT": inputs["INPUT"]}
"""


def identity_onnx(path: Path, datatype: str) -> None:
    """Identity over a [batch, 4] tensor of the given datatype, config left to auto-complete."""
    import onnx
    from onnx import TensorProto, helper

    elem = getattr(TensorProto, ONNX_TYPES[datatype])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT"], ["OUTPUT"])],
        f"identity_{datatype}",
        [helper.make_tensor_value_info("INPUT", elem, ["batch", 4])],
        [helper.make_tensor_value_info("OUTPUT", elem, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def python_model(root: Path, name: str, code: str, datatype: str) -> None:
    (root / name / "1").mkdir(parents=True, exist_ok=True)
    (root / name / "1" / "model.py").write_text(code)
    (root / name / "config.pbtxt").write_text(
        f'backend: "python"\nmax_batch_size: 8\n'
        f'input [{{ name: "INPUT", data_type: TYPE_{datatype}, dims: [4] }}]\n'
        f'output [{{ name: "OUTPUT", data_type: TYPE_{datatype}, dims: [4] }}]\n'
    )


def exported_program(root: Path) -> None:
    """A torch.export program (model.pt2) computing 2x + 1 on a fixed [2, 4] tensor."""
    import torch

    class TwoXPlusOne(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 + 1

    (root / "exported" / "1").mkdir(parents=True, exist_ok=True)
    program = torch.export.export(TwoXPlusOne(), (torch.randn(2, 4),))
    torch.export.save(program, str(root / "exported" / "1" / "model.pt2"))
    (root / "exported" / "config.pbtxt").write_text(
        'backend: "pytorch"\nmax_batch_size: 0\n'
        'input [{ name: "X", data_type: TYPE_FP32, dims: [2, 4] }]\n'
        'output [{ name: "Y", data_type: TYPE_FP32, dims: [2, 4] }]\n'
    )


# Triton's reshape: clients send X as [batch, 4] and read Y as [batch, 1]; the ONNX file
# takes [batch, 2, 2] and gives [batch]. The warmup sample is in the clients' shape.
RESHAPED_CONFIG = """
max_batch_size: 8
dynamic_batching { }
input [{ name: "X", data_type: TYPE_FP32, dims: [ 4 ], reshape { shape: [ 2, 2 ] } }]
output [{ name: "Y", data_type: TYPE_FP32, dims: [ 1 ], reshape { shape: [ ] } }]
model_warmup [{
  name: "zeros", batch_size: 2,
  inputs { key: "X" value { data_type: TYPE_FP32, dims: [ 4 ], zero_data: true } }
}]
"""


def reshaped_onnx(root: Path) -> None:
    """Y = the sum of each [2, 2] X."""
    from onnx import TensorProto, helper
    from tensorgate.examples.build import save_onnx

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["X", "AXES"], ["Y"], keepdims=0)],
        "reshaped",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 2, 2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor("AXES", TensorProto.INT64, [2], [1, 2])],
    )
    save_onnx(graph, root / "reshaped" / "1" / "model.onnx")
    (root / "reshaped" / "config.pbtxt").write_text(RESHAPED_CONFIG)


def build_test_repository(root: Path) -> None:
    """The example models plus one identity model per datatype and a failing model."""
    from tensorgate.examples.build import build

    build(root)
    for datatype in ONNX_TYPES:
        identity_onnx(root / f"identity_{datatype.lower()}" / "1" / "model.onnx", datatype)
    python_model(root, "identity_bf16", BF16_IDENTITY, "BF16")
    python_model(root, "failing", FAILING_MODEL, "FP32")
    exported_program(root)
    reshaped_onnx(root)
    # Two versions of one model; the default policy serves only the latest.
    for version in (1, 2):
        identity_onnx(root / "versioned" / str(version) / "model.onnx", "INT32")
    (root / "versioned" / "config.pbtxt").write_text("version_policy { all { } }\n")


def build_broken_repository(root: Path) -> dict[str, str]:
    """One good model and one broken model per failure kind; returns name -> expected reason."""
    identity_onnx(root / "good" / "1" / "model.onnx", "FP32")
    identity_onnx(root / "bad_parse" / "1" / "model.onnx", "FP32")
    (root / "bad_parse" / "config.pbtxt").write_text("max_batch_size: [oops\n")
    identity_onnx(root / "bad_backend" / "1" / "model.onnx", "FP32")
    (root / "bad_backend" / "config.pbtxt").write_text('backend: "tensorflow"\n')
    identity_onnx(root / "bad_mismatch" / "1" / "model.onnx", "FP32")
    (root / "bad_mismatch" / "config.pbtxt").write_text(
        'max_batch_size: 4 input [{ name: "INPUT", data_type: TYPE_INT32, dims: [4] }]\n'
    )
    identity_onnx(root / "bad_reshape" / "1" / "model.onnx", "FP32")
    (root / "bad_reshape" / "config.pbtxt").write_text(
        'max_batch_size: 4 input [{ name: "INPUT", data_type: TYPE_FP32, dims: [3], '
        "reshape { shape: [4] } }]\n"
    )
    (root / "bad_no_versions").mkdir()
    return {
        "bad_reshape": "input 'INPUT': reshape [4] of dims [3]: the element counts differ",
        "bad_parse": "does not parse",
        "bad_backend": "unknown backend 'tensorflow'",
        "bad_mismatch": "'INPUT' is TYPE_INT32 but the model file has TYPE_FP32",
        "bad_no_versions": "no version directories",
    }
