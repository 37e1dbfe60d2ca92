"""Test models for streams and state (decoupled, sequence, refused configs), and the inputs
and callback the stream tests share."""

from __future__ import annotations

import queue
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tensorgate.examples.build import TEMPLATES, save_onnx

# Triton's repeat example model, as a generator: one response per element of IN, each after
# its DELAY (ms), then WAIT (ms) before the stream ends. Every step and the generator's
# close are counted, one line each, in the file the `counter_file` parameter names.
REPEAT_MODEL = """
import time
import numpy as np

class Model:
    def load(self, context):
        self.counter = context.config.parameters["counter_file"].string_value

    def _count(self, what):
        with open(self.counter, "a") as f:
            f.write(what + "\\n")

    def execute(self, inputs):
        values, delays = inputs["IN"], inputs["DELAY"]
        try:
            for index, value in enumerate(values):
                time.sleep(int(delays[index]) / 1000)
                self._count("step")
                yield {"OUT": np.array([value], np.int32), "IDX": np.array([index], np.uint32)}
            time.sleep(int(inputs["WAIT"][0]) / 1000)
        finally:
            self._count("closed")
"""

REPEAT_CONFIG = """
backend: "python"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
parameters {{ key: "counter_file" value {{ string_value: "{counter}" }} }}
input [
  {{ name: "IN", data_type: TYPE_INT32, dims: [-1] }},
  {{ name: "DELAY", data_type: TYPE_UINT32, dims: [-1] }},
  {{ name: "WAIT", data_type: TYPE_UINT32, dims: [1] }}
]
output [
  {{ name: "OUT", data_type: TYPE_INT32, dims: [1] }},
  {{ name: "IDX", data_type: TYPE_UINT32, dims: [1] }}
]
"""

# Config fields tensorgate refuses, each on an otherwise valid Python model.
REFUSED_FIELDS = {
    "model_repository_agents": 'model_repository_agents { agents [{ name: "checksum" }] }',
    "model_operations": 'model_operations { op_library_filename: ["ops.so"] }',
    "input.is_shape_tensor": (
        'input [{ name: "SHAPE", data_type: TYPE_INT32, dims: [1], is_shape_tensor: true }]'
    ),
    "instance_group.passive": "instance_group [{ count: 1, kind: KIND_CPU, passive: true }]",
    "optimization.cuda": "optimization { cuda { graphs: true } }",
}

IDENTITY_MODEL = """
class Model:
    def execute(self, inputs):
        return {"OUTPUT": inputs["INPUT"]}
"""


def _write(root: Path, name: str, config: str, code: str) -> None:
    (root / name / "1").mkdir(parents=True, exist_ok=True)
    (root / name / "config.pbtxt").write_text(config)
    (root / name / "1" / "model.py").write_text(code)


def build_stream_repository(root: Path, counter: Path) -> None:
    """The decoupled and sequence models, and one model per refused config field
    (`refused_<field>`)."""
    from tests.e2e.triton_models import build_triton_models

    build_sequence_models(root)
    build_ensemble_models(root)
    build_triton_models(root)
    build_refused_combinations(root)
    _write(root, "repeat_int32", REPEAT_CONFIG.format(counter=counter), REPEAT_MODEL)
    build_decoupled_ensemble(root, counter.parent / "ensemble_repeat.log")
    for field, text in REFUSED_FIELDS.items():
        config = (
            'backend: "python"\nmax_batch_size: 8\n'
            'input [{ name: "INPUT", data_type: TYPE_FP32, dims: [4] }]\n'
            'output [{ name: "OUTPUT", data_type: TYPE_FP32, dims: [4] }]\n'
            f"{text}\n"
        )
        _write(root, "refused_" + field.replace(".", "_"), config, IDENTITY_MODEL)


# Triton's simple_sequence contract: OUTPUT = INPUT + START, for every row of the batch.
SIMPLE_SEQUENCE_MODEL = """
class Model:
    def execute(self, inputs):
        return {"OUTPUT": inputs["INPUT"] + inputs["START"]}
"""

SIMPLE_SEQUENCE_CONFIG = """
backend: "python"
max_batch_size: 8
sequence_batching {
  max_sequence_idle_microseconds: 300000
  control_input [
    { name: "START", control [{ kind: CONTROL_SEQUENCE_START, int32_false_true: [0, 1] }] },
    { name: "READY", control [{ kind: CONTROL_SEQUENCE_READY, int32_false_true: [0, 1] }] }
  ]
}
input [{ name: "INPUT", data_type: TYPE_INT32, dims: [1] }]
output [{ name: "OUTPUT", data_type: TYPE_INT32, dims: [1] }]
"""


# The oldest strategy holding a batch (up to 60 s) until two sequences are ready.
PAIRED_SEQUENCE_CONFIG = SIMPLE_SEQUENCE_CONFIG.replace(
    "sequence_batching {",
    "sequence_batching {\n  oldest { max_candidate_sequences: 4, preferred_batch_size: [ 2 ], "
    "max_queue_delay_microseconds: 60000000 }",
)


def build_sequence_models(root: Path) -> None:
    """simple_sequence: Triton's example contract (the examples add `accumulate`), and
    paired_sequence, the same batched in twos; the ONNX models with implicit state."""
    _write(root, "simple_sequence", SIMPLE_SEQUENCE_CONFIG, SIMPLE_SEQUENCE_MODEL)
    _write(root, "paired_sequence", PAIRED_SEQUENCE_CONFIG, SIMPLE_SEQUENCE_MODEL)
    build_state_models(root)


# Implicit state, as Triton's QA accumulator: the state is the running sum of INPUT. With a
# START control the model starts each sequence from INPUT itself (the default initial state
# is left unread); without one, from the initial state the config gives.
RUNNING_SUM_CONFIG = """
max_batch_size: 4
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  control_input [
    { name: "START", control [{ kind: CONTROL_SEQUENCE_START, int32_false_true: [0, 1] }] }
  ]
  state [{ input_name: "INPUT_STATE", output_name: "OUTPUT_STATE", data_type: TYPE_INT32,
           dims: [ 1 ] }]
}
"""

RUNNING_SUM_FROM_FILE_CONFIG = """
max_batch_size: 4
input [{ name: "INPUT", data_type: TYPE_INT32, dims: [ 1 ] }]
output [
  { name: "OUTPUT", data_type: TYPE_INT32, dims: [ 1 ] },
  { name: "OUTPUT_STATE", data_type: TYPE_INT32, dims: [ 1 ] }
]
sequence_batching {
  state [{
    input_name: "INPUT_STATE"
    output_name: "OUTPUT_STATE"
    data_type: TYPE_INT32
    dims: [ 1 ]
    initial_state { data_type: TYPE_INT32, dims: [ 1 ], data_file: "thousand", name: "1000" }
  }]
}
"""


def _running_sum_onnx(path: Path, with_start: bool) -> None:
    import onnx
    from onnx import TensorProto, helper

    def tensor(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", 1])

    inputs = [tensor("INPUT"), tensor("INPUT_STATE")]
    nodes = [helper.make_node("Add", ["INPUT", "INPUT_STATE"], ["SUM"])]
    if with_start:
        inputs.append(tensor("START"))
        nodes += [
            helper.make_node("Cast", ["START"], ["STARTED"], to=TensorProto.BOOL),
            helper.make_node("Where", ["STARTED", "INPUT", "SUM"], ["OUTPUT_STATE"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["SUM"], ["OUTPUT_STATE"]))
    nodes.append(helper.make_node("Identity", ["OUTPUT_STATE"], ["OUTPUT"]))
    graph = helper.make_graph(
        nodes, "running_sum", inputs, [tensor("OUTPUT"), tensor("OUTPUT_STATE")]
    )
    save_onnx(graph, path)


def build_state_models(root: Path) -> None:
    """running_sum (its inputs and outputs completed from the ONNX file) and
    running_sum_from_file (state from initial_state/thousand, OUTPUT_STATE listed)."""
    _running_sum_onnx(root / "running_sum" / "1" / "model.onnx", with_start=True)
    (root / "running_sum" / "config.pbtxt").write_text(RUNNING_SUM_CONFIG)
    model_dir = root / "running_sum_from_file"
    _running_sum_onnx(model_dir / "1" / "model.onnx", with_start=False)
    (model_dir / "config.pbtxt").write_text(RUNNING_SUM_FROM_FILE_CONFIG)
    (model_dir / "initial_state").mkdir(exist_ok=True)
    (model_dir / "initial_state" / "thousand").write_bytes(
        np.array([1000], dtype=np.int32).tobytes()
    )


PIPELINE_CONFIG = (TEMPLATES / "pipeline" / "config.pbtxt").read_text()

# Broken ensembles and the reason each one's load must give.
BROKEN_ENSEMBLES = {
    "ensemble_unknown_model": (
        PIPELINE_CONFIG.replace('model_name: "postprocess"', 'model_name: "nowhere"'),
        "step 3 ('nowhere'): Request for unknown model",
    ),
    "ensemble_unmapped_tensor": (
        PIPELINE_CONFIG.replace('"OUTPUT0" value: "sum"', '"OUTPUT0" value: "total"'),
        "reads ensemble tensor 'sum', which no step produces",
    ),
    "ensemble_cycle": (
        PIPELINE_CONFIG.replace('{ key: "RAW" value: "RAW" }', '{ key: "RAW" value: "diff" }'),
        "form a cycle",
    ),
    "ensemble_dtype_mismatch": (
        PIPELINE_CONFIG.replace(
            'output [ { name: "RESULT", data_type: TYPE_FP32',
            'output [ { name: "RESULT", data_type: TYPE_INT32',
        ),
        "'RESULT' is FP32 from step 3",
    ),
}


def build_ensemble_models(root: Path) -> None:
    """The examples' add_sub and Python models (the pipeline ensemble, its steps, words,
    accumulate) and the broken ensembles."""
    from tensorgate.examples.build import ADD_SUB_CONFIG, build_add_sub, copy_templates

    build_add_sub(root / "add_sub" / "1" / "model.onnx")
    (root / "add_sub" / "config.pbtxt").write_text(ADD_SUB_CONFIG)
    copy_templates(root)
    for name, (config, _) in BROKEN_ENSEMBLES.items():
        (root / name / "1").mkdir(parents=True, exist_ok=True)
        (root / name / "config.pbtxt").write_text(config)


SCALAR_INT32 = "data_type: TYPE_INT32, dims: [1]"

SQUARE_CONFIG = f"""
backend: "python"
max_batch_size: 0
input [{{ name: "X", {SCALAR_INT32} }}]
output [{{ name: "Y", {SCALAR_INT32} }}]
"""
SQUARE_MODEL = """
class Model:
    def execute(self, inputs):
        return {"Y": inputs["X"] * inputs["X"]}
"""
MULTIPLY_CONFIG = f"""
backend: "python"
max_batch_size: 0
input [{{ name: "A", {SCALAR_INT32} }}, {{ name: "B", {SCALAR_INT32} }}]
output [{{ name: "C", {SCALAR_INT32} }}]
"""
MULTIPLY_MODEL = """
class Model:
    def execute(self, inputs):
        return {"C": inputs["A"] * inputs["B"]}
"""
# repeat_scaled: each response of a decoupled step (ensemble_repeat) runs `multiply`; the
# `square` step waits on no decoupled step, so it runs once per request.
DECOUPLED_ENSEMBLE_CONFIG = f"""
platform: "ensemble"
max_batch_size: 0
input [
  {{ name: "IN", data_type: TYPE_INT32, dims: [-1] }},
  {{ name: "DELAY", data_type: TYPE_UINT32, dims: [-1] }},
  {{ name: "WAIT", data_type: TYPE_UINT32, dims: [1] }},
  {{ name: "SCALE", {SCALAR_INT32} }}
]
output [{{ name: "SCALED", {SCALAR_INT32} }}, {{ name: "IDX", data_type: TYPE_UINT32, dims: [1] }}]
ensemble_scheduling {{ step [
  {{ model_name: "ensemble_repeat",
     input_map [{{ key: "IN" value: "IN" }}, {{ key: "DELAY" value: "DELAY" }},
                {{ key: "WAIT" value: "WAIT" }}],
     output_map [{{ key: "OUT" value: "value" }}, {{ key: "IDX" value: "IDX" }}] }},
  {{ model_name: "square", input_map {{ key: "X" value: "SCALE" }},
     output_map {{ key: "Y" value: "factor" }} }},
  {{ model_name: "multiply",
     input_map [{{ key: "A" value: "value" }}, {{ key: "B" value: "factor" }}],
     output_map {{ key: "C" value: "SCALED" }} }}
] }}
"""


def build_decoupled_ensemble(root: Path, counter: Path) -> None:
    """repeat_scaled and its steps: ensemble_repeat (REPEAT_MODEL), square, multiply."""
    _write(root, "ensemble_repeat", REPEAT_CONFIG.format(counter=counter), REPEAT_MODEL)
    _write(root, "square", SQUARE_CONFIG, SQUARE_MODEL)
    _write(root, "multiply", MULTIPLY_CONFIG, MULTIPLY_MODEL)
    (root / "repeat_scaled" / "1").mkdir(parents=True, exist_ok=True)
    (root / "repeat_scaled" / "config.pbtxt").write_text(DECOUPLED_ENSEMBLE_CONFIG)


def build_refused_combinations(root: Path) -> dict[str, str]:
    """Configs whose parts the runner would have to ignore: name -> the reason to expect."""
    words = (TEMPLATES / "words" / "config.pbtxt").read_text()
    cases = {
        "decoupled_batching": (
            words.replace("max_batch_size: 0", "max_batch_size: 4\ndynamic_batching { }"),
            "dynamic_batching on a decoupled model is not supported",
        ),
        "ensemble_instances": (
            PIPELINE_CONFIG + "instance_group [ { count: 2 } ]\n",
            "an ensemble takes no 'instance_group'",
        ),
        "onnx_kind_model": (
            'backend: "onnxruntime"\ninstance_group [ { kind: KIND_MODEL } ]\n',
            "only Python models can, not the onnxruntime backend",
        ),
    }
    for name, (config, _) in cases.items():
        (root / name / "1").mkdir(parents=True, exist_ok=True)
        (root / name / "config.pbtxt").write_text(config)
    if (root / "decoupled_batching").is_dir():
        model = (TEMPLATES / "words" / "1" / "model.py").read_text()
        (root / "decoupled_batching" / "1" / "model.py").write_text(model)
    from tensorgate.examples.build import build_add_sub

    build_add_sub(root / "onnx_kind_model" / "1" / "model.onnx")
    return {name: reason for name, (_, reason) in cases.items()}


def repeat_inputs(values: list[int], delay_ms: int, wait_ms: int) -> list[Any]:
    n = len(values)
    inputs = [
        grpcclient.InferInput("IN", [n], "INT32"),
        grpcclient.InferInput("DELAY", [n], "UINT32"),
        grpcclient.InferInput("WAIT", [1], "UINT32"),
    ]
    inputs[0].set_data_from_numpy(np.array(values, dtype=np.int32))
    inputs[1].set_data_from_numpy(np.full(n, delay_ms, dtype=np.uint32))
    inputs[2].set_data_from_numpy(np.array([wait_ms], dtype=np.uint32))
    return inputs


def collect(results: queue.Queue[Any], result: Any, error: Any) -> None:
    results.put(error if error is not None else result)


def stream_client(url: str) -> tuple[grpcclient.InferenceServerClient, queue.Queue[Any]]:
    """A client with its stream open, and where the stream's results (or errors) arrive."""
    results: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=partial(collect, results))
    return client, results


def cancel_after_two_responses(url: str, model: str, counter: Path) -> list[str]:
    """Stream 50 slow responses from a REPEAT_MODEL model, cancel after two, wait for its
    generator to close (at most 10 s): the lines the model counted."""
    from tritonclient.utils import InferenceServerException

    client, results = stream_client(url)
    client.async_stream_infer(model, repeat_inputs(list(range(50)), 50, 0))
    for _ in range(2):
        assert not isinstance(results.get(timeout=30), InferenceServerException)
    client.stop_stream(cancel_requests=True)
    client.close()
    deadline = time.monotonic() + 10
    while "closed" not in counter.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    return counter.read_text().split()
