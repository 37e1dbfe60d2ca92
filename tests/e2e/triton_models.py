"""Triton Python-backend model files, written as Triton's users write them, served as is."""

from __future__ import annotations

from pathlib import Path

# Triton's add_sub example shape: config read in initialize, one response per request, and
# an error response for a request it refuses (here: any NaN), which fails only that request.
ADD_SUB = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = json.loads(args["model_config"])
        self.instance = args["model_instance_name"]
        out0 = pb_utils.get_output_config_by_name(self.model_config, "OUTPUT0")
        out1 = pb_utils.get_output_config_by_name(self.model_config, "OUTPUT1")
        self.dtype0 = pb_utils.triton_string_to_numpy(out0["data_type"])
        self.dtype1 = pb_utils.triton_string_to_numpy(out1["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            if np.isnan(in0).any():
                error = pb_utils.TritonError("INPUT0 holds NaN")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            out0 = pb_utils.Tensor("OUTPUT0", (in0 + in1).astype(self.dtype0))
            out1 = pb_utils.Tensor("OUTPUT1", (in0 - in1).astype(self.dtype1))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out0, out1]))
        return responses

    def finalize(self):
        pb_utils.Logger.log_info("add_sub finalized")
"""

# BLS: calls the add_sub model above through the server, synchronously.
BLS = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            call = pb_utils.InferenceRequest(
                model_name="triton_add_sub",
                requested_output_names=["OUTPUT0", "OUTPUT1"],
                inputs=[
                    pb_utils.get_input_tensor_by_name(request, "INPUT0"),
                    pb_utils.get_input_tensor_by_name(request, "INPUT1"),
                ],
            )
            answer = call.exec()
            if answer.has_error():
                raise pb_utils.TritonModelException(answer.error().message())
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.get_output_tensor_by_name(answer, "OUTPUT0"),
                        pb_utils.get_output_tensor_by_name(answer, "OUTPUT1"),
                    ]
                )
            )
        return responses
"""

# BLS from `async def execute`, both calls in flight at once.
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
                    model_name="triton_add_sub",
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
REPEAT = """
import threading
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.threads = []

    def execute(self, requests):
        for request in requests:
            thread = threading.Thread(target=self.respond, args=(request,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return None

    def respond(self, request):
        sender = request.get_response_sender()
        values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
        delays = pb_utils.get_input_tensor_by_name(request, "DELAY").as_numpy()
        for index, value in enumerate(values):
            time.sleep(int(delays[index]) / 1000)
            if request.is_cancelled():
                break
            out = pb_utils.Tensor("OUT", np.array([value], np.int32))
            idx = pb_utils.Tensor("IDX", np.array([index], np.uint32))
            sender.send(pb_utils.InferenceResponse(output_tensors=[out, idx]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        for thread in self.threads:
            thread.join(5)
"""

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


def _config(dtype: str, batch: int = 8, extra: str = "") -> str:
    return (
        f'backend: "python"\nmax_batch_size: {batch}\n{extra}\n'
        f'input [{{ name: "INPUT0", data_type: TYPE_{dtype}, dims: [16] }},'
        f' {{ name: "INPUT1", data_type: TYPE_{dtype}, dims: [16] }}]\n'
        f'output [{{ name: "OUTPUT0", data_type: TYPE_{dtype}, dims: [16] }},'
        f' {{ name: "OUTPUT1", data_type: TYPE_{dtype}, dims: [16] }}]\n'
    )


REPEAT_CONFIG = """
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [
  { name: "IN", data_type: TYPE_INT32, dims: [-1] },
  { name: "DELAY", data_type: TYPE_UINT32, dims: [-1] },
  { name: "WAIT", data_type: TYPE_UINT32, dims: [1] }
]
output [
  { name: "OUT", data_type: TYPE_INT32, dims: [1] },
  { name: "IDX", data_type: TYPE_UINT32, dims: [1] }
]
"""


def build_triton_models(root: Path) -> None:
    """Triton-style model.py files: add_sub (FP32 and INT8), BLS, decoupled, strings."""
    models = {
        "triton_add_sub": (_config("FP32", extra="dynamic_batching { }"), ADD_SUB),
        "simple_int8": (_config("INT8"), ADD_SUB),
        "triton_bls": (_config("FP32"), BLS),
        "triton_bls_async": (_config("FP32"), BLS_ASYNC),
        "triton_repeat_int32": (REPEAT_CONFIG, REPEAT),
        "simple_string": (_config("STRING"), STRING),
    }
    for name, (config, code) in models.items():
        (root / name / "1").mkdir(parents=True, exist_ok=True)
        (root / name / "config.pbtxt").write_text(config)
        (root / name / "1" / "model.py").write_text(code)
