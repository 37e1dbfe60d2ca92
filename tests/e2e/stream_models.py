"""Test models for streams and state: decoupled, sequence, and refused configs."""

from __future__ import annotations

from pathlib import Path

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

# Words of a text, one response each, from an async generator (a token streamer's shape).
WORDS_MODEL = """
import asyncio
import numpy as np

class Model:
    async def execute(self, inputs):
        text = inputs["text_input"].reshape(-1)[0].decode()
        for word in text.split():
            await asyncio.sleep(0.001)
            yield {"text_output": np.array([word.encode()], dtype=object)}
"""

WORDS_CONFIG = """
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [{ name: "text_input", data_type: TYPE_STRING, dims: [1] }]
output [{ name: "text_output", data_type: TYPE_STRING, dims: [1] }]
"""

# Config fields tensorgate refuses, each on an otherwise valid Python model.
REFUSED_FIELDS = {
    "response_cache": "response_cache { enable: true }",
    "model_warmup": 'model_warmup [{ name: "w", batch_size: 1 }]',
    "model_repository_agents": 'model_repository_agents { agents [{ name: "checksum" }] }',
    "instance_group.rate_limiter": (
        "instance_group [{ count: 1, kind: KIND_CPU, rate_limiter { priority: 2 } }]"
    ),
    "optimization": "optimization { graph { level: 1 } }",
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
    _write(root, "repeat_int32", REPEAT_CONFIG.format(counter=counter), REPEAT_MODEL)
    _write(root, "words", WORDS_CONFIG, WORDS_MODEL)
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

# A running total per sequence, kept by each instance in a dict keyed by CORRID: a request
# that reached an instance other than its sequence's would find no total and fail.
ACCUMULATOR_MODEL = """
import numpy as np

class Model:
    def load(self, context):
        self.totals = {}

    def execute(self, inputs):
        out = np.zeros_like(inputs["INPUT"])
        for row in range(inputs["INPUT"].shape[0]):
            if not inputs["READY"][row, 0]:
                continue
            corrid = int(inputs["CORRID"][row, 0])
            if inputs["START"][row, 0]:
                self.totals[corrid] = 0
            self.totals[corrid] += int(inputs["INPUT"][row, 0])
            out[row, 0] = self.totals[corrid]
            if inputs["END"][row, 0]:
                del self.totals[corrid]
        return {"OUTPUT": out}
"""

ACCUMULATOR_CONFIG = """
backend: "python"
max_batch_size: 1
instance_group [{ kind: KIND_CPU, count: 2 }]
sequence_batching {
  control_input [
    { name: "START", control [{ kind: CONTROL_SEQUENCE_START, bool_false_true: [false, true] }] },
    { name: "END", control [{ kind: CONTROL_SEQUENCE_END, bool_false_true: [false, true] }] },
    { name: "READY", control [{ kind: CONTROL_SEQUENCE_READY, bool_false_true: [false, true] }] },
    { name: "CORRID", control [{ kind: CONTROL_SEQUENCE_CORRID, data_type: TYPE_UINT64 }] }
  ]
}
input [{ name: "INPUT", data_type: TYPE_INT32, dims: [1] }]
output [{ name: "OUTPUT", data_type: TYPE_INT32, dims: [1] }]
"""


def build_sequence_models(root: Path) -> None:
    """simple_sequence (Triton's example contract) and accumulator (2 instances, 1 slot each)."""
    _write(root, "simple_sequence", SIMPLE_SEQUENCE_CONFIG, SIMPLE_SEQUENCE_MODEL)
    _write(root, "accumulator", ACCUMULATOR_CONFIG, ACCUMULATOR_MODEL)


PREPROCESS_MODEL = """
class Model:
    def execute(self, inputs):
        raw = inputs["RAW"]
        if (raw < -1000).any():
            raise ValueError("RAW below -1000")
        return {"DOUBLED": raw * 2, "SHIFTED": raw + 1}
"""

POSTPROCESS_MODEL = """
class Model:
    def execute(self, inputs):
        return {"RESULT": inputs["SUM"] * inputs["DIFF"]}
"""


def _python_config(inputs: dict[str, str], outputs: dict[str, str]) -> str:
    def tensors(items: dict[str, str]) -> str:
        return ", ".join(
            f'{{ name: "{n}", data_type: TYPE_{t}, dims: [16] }}' for n, t in items.items()
        )

    return (
        f'backend: "python"\nmax_batch_size: 32\ndynamic_batching {{ }}\n'
        f"input [{tensors(inputs)}]\noutput [{tensors(outputs)}]\n"
    )


def _ensemble_config(steps: str, output_type: str = "FP32") -> str:
    return (
        'platform: "ensemble"\nmax_batch_size: 32\n'
        'input [{ name: "RAW", data_type: TYPE_FP32, dims: [16] }]\n'
        f'output [{{ name: "RESULT", data_type: TYPE_{output_type}, dims: [16] }}]\n'
        f"ensemble_scheduling {{ step [{steps}] }}\n"
    )


PIPELINE_STEPS = """
  { model_name: "preprocess", model_version: -1,
    input_map { key: "RAW" value: "RAW" }
    output_map [{ key: "DOUBLED" value: "a" }, { key: "SHIFTED" value: "b" }] },
  { model_name: "add_sub", model_version: -1,
    input_map [{ key: "INPUT0" value: "a" }, { key: "INPUT1" value: "b" }]
    output_map [{ key: "OUTPUT0" value: "sum" }, { key: "OUTPUT1" value: "diff" }] },
  { model_name: "postprocess", model_version: -1,
    input_map [{ key: "SUM" value: "sum" }, { key: "DIFF" value: "diff" }]
    output_map { key: "RESULT" value: "RESULT" } }
"""

# Broken ensembles and the reason each one's load must give.
BROKEN_ENSEMBLES = {
    "ensemble_unknown_model": (
        PIPELINE_STEPS.replace('"postprocess"', '"nowhere"'),
        "step 3 ('nowhere'): Request for unknown model",
    ),
    "ensemble_unmapped_tensor": (
        PIPELINE_STEPS.replace('"OUTPUT0" value: "sum"', '"OUTPUT0" value: "total"'),
        "reads ensemble tensor 'sum', which no step produces",
    ),
    "ensemble_cycle": (
        PIPELINE_STEPS.replace('{ key: "RAW" value: "RAW" }', '{ key: "RAW" value: "diff" }'),
        "form a cycle",
    ),
    "ensemble_dtype_mismatch": (PIPELINE_STEPS, "'RESULT' is FP32 from step 3"),
}


def build_ensemble_models(root: Path) -> None:
    """preprocess → add_sub → postprocess as `pipeline`, its steps, and broken ensembles."""
    from tensorgate.examples.build import ADD_SUB_CONFIG, build_add_sub

    build_add_sub(root / "add_sub" / "1" / "model.onnx")
    (root / "add_sub" / "config.pbtxt").write_text(ADD_SUB_CONFIG)
    _write(
        root,
        "preprocess",
        _python_config({"RAW": "FP32"}, {"DOUBLED": "FP32", "SHIFTED": "FP32"}),
        PREPROCESS_MODEL,
    )
    _write(
        root,
        "postprocess",
        _python_config({"SUM": "FP32", "DIFF": "FP32"}, {"RESULT": "FP32"}),
        POSTPROCESS_MODEL,
    )
    for name, config in [("pipeline", _ensemble_config(PIPELINE_STEPS))] + [
        (name, _ensemble_config(steps, "INT32" if "dtype" in name else "FP32"))
        for name, (steps, _) in BROKEN_ENSEMBLES.items()
    ]:
        (root / name / "1").mkdir(parents=True, exist_ok=True)
        (root / name / "config.pbtxt").write_text(config)
