"""Build the bundled example repository.

add_sub (ONNX) and cnn (TorchScript, with class labels) are made here; the Python models
are copied from templates/: text_stats (BYTES in and out), words (decoupled: one response
per word), accumulate (a sequence model), and the pipeline ensemble (preprocess → add_sub
→ postprocess). tiny_llama is a language model with random weights and a tokenizer trained
here (examples/tiny_lm.py), served by the generation engine.

usage: python -m tensorgate.examples.build OUT_DIR

Models are created here from code (no downloads): add_sub with the onnx helper API, the CNN
with torch (traced to TorchScript).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from tensorgate.examples.tiny_lm import GENERATION_CONFIG, build_tiny_llama

ADD_SUB_CONFIG = """\
# Elementwise sum and difference of two FP32 vectors; batches up to 32 rows.
backend: "onnxruntime"
max_batch_size: 32
input [
  { name: "INPUT0", data_type: TYPE_FP32, dims: [ 16 ] },
  { name: "INPUT1", data_type: TYPE_FP32, dims: [ 16 ] }
]
output [
  { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 16 ] },
  { name: "OUTPUT1", data_type: TYPE_FP32, dims: [ 16 ] }
]
instance_group [ { kind: KIND_CPU, count: 1 } ]
parameters { key: "intra_op_thread_count" value { string_value: "1" } }
"""

CNN_CONFIG = """\
# A small image classifier exported from torch to TorchScript: 3x32x32 image -> 10 logits.
# Its weights are random; labels.txt names the classes for the classification extension
# (ask for LOGITS with `classification: 3` to get the top three as "value:index:label").
backend: "pytorch"
max_batch_size: 16
input [ { name: "IMAGE", data_type: TYPE_FP32, dims: [ 3, 32, 32 ] } ]
output [ { name: "LOGITS", data_type: TYPE_FP32, dims: [ 10 ], label_filename: "labels.txt" } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""

# The cnn's class names, one per logit (the ten classes of CIFAR-10, whose image size it has).
CNN_LABELS = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def build_add_sub(path: Path) -> None:
    """add_sub as an ONNX graph with a dynamic batch dimension."""
    import onnx
    from onnx import TensorProto, helper

    def tensor(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 16])

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [tensor("INPUT0"), tensor("INPUT1")],
        [tensor("OUTPUT0"), tensor("OUTPUT1")],
    )
    save_onnx(graph, path)


def save_onnx(graph: Any, path: Path) -> None:
    """An ONNX graph as a checked model file (opset 17, IR 8: what onnxruntime reads)."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def build_cnn(path: Path) -> None:
    """A three-layer CNN with fixed random weights, traced to TorchScript."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    traced = torch.jit.trace(net, torch.randn(1, 3, 32, 32))  # type: ignore[no-untyped-call]
    traced.save(str(path))


TEMPLATES = Path(__file__).parent / "templates"


def copy_templates(out: Path) -> None:
    """The template models under `out`; each gets a version directory 1/ even when it has
    no files (an ensemble), which a package would not keep."""
    for template in sorted(p for p in TEMPLATES.iterdir() if p.is_dir()):
        shutil.rmtree(out / template.name, ignore_errors=True)
        shutil.copytree(template, out / template.name)
        (out / template.name / "1").mkdir(exist_ok=True)


def build(out: Path) -> None:
    """Write the example models under `out` (replacing any previous build)."""
    out.mkdir(parents=True, exist_ok=True)
    build_add_sub(out / "add_sub" / "1" / "model.onnx")
    (out / "add_sub" / "config.pbtxt").write_text(ADD_SUB_CONFIG)
    build_cnn(out / "cnn" / "1" / "model.pt")
    (out / "cnn" / "config.pbtxt").write_text(CNN_CONFIG)
    (out / "cnn" / "labels.txt").write_text("\n".join(CNN_LABELS) + "\n")
    copy_templates(out)
    build_tiny_llama(out / "tiny_llama" / "1")
    (out / "tiny_llama" / "config.pbtxt").write_text(GENERATION_CONFIG)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tensorgate.examples.build OUT_DIR")
    build(Path(sys.argv[1]))
    print(f"example repository written to {sys.argv[1]}")
