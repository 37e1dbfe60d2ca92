"""Triton Python-backend model files, written as Triton's users write them, served as is.

add_sub, the BLS model and the decoupled repeat model are the ones in
examples/triton_repository; the others are test-only.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "triton_repository"
# Triton's add_sub example shape: config read in initialize, one response per request, and
# an error response for a request it refuses (any NaN), which fails only that request.
ADD_SUB = (EXAMPLES / "add_sub" / "1" / "model.py").read_text()
# BLS: calls add_sub through the server, synchronously.
BLS = (EXAMPLES / "add_sub_bls" / "1" / "model.py").read_text()
# Triton's decoupled repeat shape: a thread per request sends one response per element of IN
# through the response sender, then the final flag alone.
REPEAT = (EXAMPLES / "repeat_int32" / "1" / "model.py").read_text()

# Triton's add_sub example shape: config read in initialize, one response per request, and
# an error response for a request it refuses (here: any NaN), which fails only that request.

# BLS: calls the add_sub model above through the server, synchronously.

# BLS from `async def execute`, both calls to add_sub in flight at once.
BLS_ASYNC = """
import asyncio
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            inputs = [
                pb_utils.get_input_tensor_by_name(request, "INPUT0"),
                pb_utils.get_input_tensor_by_name(request, "INPUT1"),
            ]
            calls = [
                pb_utils.InferenceRequest(
                    model_name="add_sub",
                    requested_output_names=[name],
                    inputs=inputs,
                ).async_exec()
                for name in ("OUTPUT0", "OUTPUT1")
            ]
            first, second = await asyncio.gather(*calls)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.get_output_tensor_by_name(first, "OUTPUT0"),
                        pb_utils.get_output_tensor_by_name(second, "OUTPUT1"),
                    ]
                )
            )
        return responses
"""

# Triton's decoupled repeat shape: a thread per request sends one response per element of
# IN through the response sender, then the final flag alone.

# Triton's simple_string contract: INPUT0 and INPUT1 hold 16 integers as strings; OUTPUT0
# is their sum and OUTPUT1 their difference, as strings.
STRING = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy().astype(np.int32)
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy().astype(np.int32)
            outputs = [
                pb_utils.Tensor("OUTPUT0", np.char.encode((a + b).astype(str)).astype(object)),
                pb_utils.Tensor("OUTPUT1", np.char.encode((a - b).astype(str)).astype(object)),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
"""


def python_config(dtype: str, batch: int = 8, extra: str = "") -> str:
    return (
        f'backend: "python"\nmax_batch_size: {batch}\n{extra}\n'
        f'input [{{ name: "INPUT0", data_type: TYPE_{dtype}, dims: [16] }},'
        f' {{ name: "INPUT1", data_type: TYPE_{dtype}, dims: [16] }}]\n'
        f'output [{{ name: "OUTPUT0", data_type: TYPE_{dtype}, dims: [16] }},'
        f' {{ name: "OUTPUT1", data_type: TYPE_{dtype}, dims: [16] }}]\n'
    )


REPEAT_CONFIG = (
    (EXAMPLES / "repeat_int32" / "config.pbtxt")
    .read_text()
    .replace('name: "repeat_int32"', 'name: "triton_repeat_int32"')
)


# auto_complete_config as Triton's examples write it: the model names its tensors, batch
# size and scheduler, and its directory has no config.pbtxt.
AUTO_COMPLETE = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        inputs = [
            {"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]},
            {"name": "INPUT1", "data_type": "TYPE_FP32", "dims": [4]},
        ]
        outputs = [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}]
        config = auto_complete_model_config.as_dict()
        input_names = [i["name"] for i in config["input"]]
        output_names = [o["name"] for o in config["output"]]
        for tensor in inputs:
            if tensor["name"] not in input_names:
                auto_complete_model_config.add_input(tensor)
        for tensor in outputs:
            if tensor["name"] not in output_names:
                auto_complete_model_config.add_output(tensor)
        auto_complete_model_config.set_max_batch_size(8)
        auto_complete_model_config.set_dynamic_batching()
        return auto_complete_model_config

    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", a + b)])
            )
        return responses
"""


# KIND_MODEL: the model is told so, and answers with the kind it was given.
INSTANCE_KIND = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.kind = args["model_instance_kind"]

    def execute(self, requests):
        kind = np.array([self.kind.encode()], dtype=np.object_)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("KIND", kind)]) for _ in requests]
"""
INSTANCE_KIND_CONFIG = """
backend: "python"
max_batch_size: 0
instance_group [ { kind: KIND_MODEL, count: 2 } ]
input [ { name: "ANY", data_type: TYPE_INT32, dims: [ 1 ] } ]
output [ { name: "KIND", data_type: TYPE_STRING, dims: [ 1 ] } ]
"""


def build_triton_models(root: Path) -> None:
    """Triton-style model.py files: add_sub (FP32 and INT8), BLS, decoupled, strings, and
    one that completes its own config (`triton_auto_complete`, no config.pbtxt) beside one
    whose config contradicts it (`triton_auto_complete_conflict`)."""
    models = {
        "triton_add_sub": (python_config("FP32", extra="dynamic_batching { }"), ADD_SUB),
        "simple_int8": (python_config("INT8"), ADD_SUB),
        "triton_bls": (python_config("FP32"), BLS),
        "triton_bls_async": (python_config("FP32"), BLS_ASYNC),
        "triton_repeat_int32": (REPEAT_CONFIG, REPEAT),
        "simple_string": (python_config("STRING"), STRING),
        "triton_kind_model": (INSTANCE_KIND_CONFIG, INSTANCE_KIND),
    }
    for name, (config, code) in models.items():
        (root / name / "1").mkdir(parents=True, exist_ok=True)
        (root / name / "config.pbtxt").write_text(config)
        (root / name / "1" / "model.py").write_text(code)
    (root / "triton_auto_complete" / "1").mkdir(parents=True, exist_ok=True)
    (root / "triton_auto_complete" / "1" / "model.py").write_text(AUTO_COMPLETE)
    conflict = root / "triton_auto_complete_conflict"
    (conflict / "1").mkdir(parents=True, exist_ok=True)
    (conflict / "1" / "model.py").write_text(AUTO_COMPLETE)
    (conflict / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 2\n')


def pair(dtype: str, a: np.ndarray, b: np.ndarray) -> list[grpcclient.InferInput]:
    """INPUT0 and INPUT1 of the add_sub contract."""
    inputs = [
        grpcclient.InferInput("INPUT0", list(a.shape), dtype),
        grpcclient.InferInput("INPUT1", list(b.shape), dtype),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def check_error_responses_fail_alone(url: str, model: str) -> None:
    """ADD_SUB's contract under concurrency: requests holding NaN get their error response,
    the good ones batched with them are answered."""
    good = np.ones((1, 16), dtype=np.float32)
    bad = np.full((1, 16), np.nan, dtype=np.float32)

    def call(a: np.ndarray) -> np.ndarray | InferenceServerException:
        with grpcclient.InferenceServerClient(url) as client:
            try:
                return np.asarray(client.infer(model, pair("FP32", a, good)).as_numpy("OUTPUT0"))
            except InferenceServerException as exc:
                return exc

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, [good, bad] * 8))
    for index, result in enumerate(results):
        if index % 2:
            assert isinstance(result, InferenceServerException)
            assert "INPUT0 holds NaN" in str(result.message())
            assert result.status() == "StatusCode.INVALID_ARGUMENT"  # the TritonError's code
        else:
            assert isinstance(result, np.ndarray)
            np.testing.assert_array_equal(result, good * 2)
