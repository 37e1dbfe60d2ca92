"""Triton Python models under the sequence batcher, written as Triton's users write them:
iterative sequences (requests the model reschedules), decoupled sequence models, and the
configs tensorgate refuses for them."""

from __future__ import annotations

from pathlib import Path

# Triton's iterative-sequence example shape, decoupled: IN says how many responses a request
# gets; each execution sends one (the count left), then reschedules the request until none
# is left. Each response also says how many requests shared that execution and the flags
# the request carried, so tests can see new and rescheduled requests share batches.
COUNTDOWN = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.left = {}

    def execute(self, requests):
        time.sleep(0.02)
        for request in requests:
            key = request.correlation_id()
            if request.flags() & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START:
                count = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
                self.left[key] = int(count[0, 0])
            self.left[key] -= 1
            out = [
                pb_utils.Tensor("OUT", np.array([[self.left[key]]], np.int32)),
                pb_utils.Tensor("BATCH", np.array([[len(requests)]], np.int32)),
                pb_utils.Tensor("FLAGS", np.array([[request.flags()]], np.int32)),
            ]
            sender = request.get_response_sender()
            if self.left[key] <= 0:
                del self.left[key]
                sender.send(
                    pb_utils.InferenceResponse(output_tensors=out),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
            else:
                request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                sender.send(pb_utils.InferenceResponse(output_tensors=out))
        return None
"""
COUNTDOWN_CONFIG = """
backend: "python"
max_batch_size: 4
input [ { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] } ]
output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] },
         { name: "BATCH", data_type: TYPE_INT32, dims: [ 1 ] },
         { name: "FLAGS", data_type: TYPE_INT32, dims: [ 1 ] } ]
model_transaction_policy { decoupled: true }
sequence_batching {
  iterative_sequence: true
  direct { }
}
"""

# Non-decoupled: one response per request, after IN iterations; a rescheduled request's place
# in the response list holds None. It answers with the iterations it ran and the flags seen.
ITERATE = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.runs = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            key = request.correlation_id()
            want = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0, 0])
            runs, flags = self.runs.get(key, (0, []))
            runs += 1
            flags = flags + [request.flags()]
            if runs < want:
                self.runs[key] = (runs, flags)
                request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                responses.append(None)
                continue
            self.runs.pop(key, None)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("RUNS", np.array([[runs]], np.int32)),
                        pb_utils.Tensor("FLAGS", np.array([flags], np.int32)),
                    ]
                )
            )
        return responses
"""
ITERATE_CONFIG = """
backend: "python"
max_batch_size: 4
input [ { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] } ]
output [ { name: "RUNS", data_type: TYPE_INT32, dims: [ 1 ] },
         { name: "FLAGS", data_type: TYPE_INT32, dims: [ -1 ] } ]
sequence_batching { iterative_sequence: true }
"""

# A decoupled sequence model with client-chosen sequences: each request sends IN responses,
# each the running total of the sequence so far, then the final flag. The model reads its
# correlation id and flags as Triton's sequence batcher hands them.
RUNNING_TOTAL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.totals = {}

    def execute(self, requests):
        for request in requests:
            key = request.correlation_id()
            if request.flags() & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START:
                self.totals[key] = 0
            value = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
            sender = request.get_response_sender()
            for _ in range(value):
                self.totals[key] += 1
                sender.send(
                    pb_utils.InferenceResponse(
                        [
                            pb_utils.Tensor("TOTAL", np.array([self.totals[key]], np.int32)),
                            pb_utils.Tensor("CORRID", np.array([key], np.uint64)),
                        ]
                    )
                )
            if request.flags() & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END:
                del self.totals[key]
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""
RUNNING_TOTAL_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] } ]
output [ { name: "TOTAL", data_type: TYPE_INT32, dims: [ 1 ] },
         { name: "CORRID", data_type: TYPE_UINT64, dims: [ 1 ] } ]
model_transaction_policy { decoupled: true }
sequence_batching { max_sequence_idle_microseconds: 5000000 }
"""

# A dynamic-batched model that tries to reschedule: refused, as Triton refuses it.
RESCHEDULES = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
        return [None for _ in requests]
"""
RESCHEDULES_CONFIG = """
backend: "python"
max_batch_size: 4
input [ { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] } ]
output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] } ]
dynamic_batching { }
"""

# tensorgate's own Python API has no request flags or response senders per request.
PLAIN_MODEL = """
class Model:
    def execute(self, inputs):
        return {"OUT": inputs["IN"]}
"""


def build_iterative_models(root: Path) -> dict[str, str]:
    """Write the models; returns each refused model's name and the reason its load names."""
    models = {
        "countdown": (COUNTDOWN, COUNTDOWN_CONFIG),
        # One slot: a second sequence runs only once the first has released it.
        "countdown_one_slot": (
            COUNTDOWN,
            COUNTDOWN_CONFIG.replace("max_batch_size: 4", "max_batch_size: 1"),
        ),
        "iterate": (ITERATE, ITERATE_CONFIG),
        "running_total": (RUNNING_TOTAL, RUNNING_TOTAL_CONFIG),
        "reschedules": (RESCHEDULES, RESCHEDULES_CONFIG),
        "plain_iterative": (PLAIN_MODEL, ITERATE_CONFIG.replace("RUNS", "OUT")),
        "stateful_decoupled": (
            RUNNING_TOTAL,
            RUNNING_TOTAL_CONFIG.replace(
                "sequence_batching {",
                'sequence_batching {\n  state [ { input_name: "S_IN" output_name: "S_OUT" '
                "data_type: TYPE_INT32 dims: [ 1 ] } ]",
            ),
        ),
    }
    for name, (code, config) in models.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(code)
        (root / name / "config.pbtxt").write_text(config)
    return {
        "plain_iterative": "a Triton Python model",
        "stateful_decoupled": "implicit state) is not implemented for decoupled",
    }
