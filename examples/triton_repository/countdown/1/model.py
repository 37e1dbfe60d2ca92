"""Counts down from IN, one response per execution: the shape of Triton's iterative-sequence
example. Each request is a sequence of its own; the model reschedules it until it reaches
zero, so one execution holds requests at different steps."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.left = {}  # what each running request still has to count, by correlation id

    def execute(self, requests):
        for request in requests:
            key = request.correlation_id()
            if request.flags() & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START:
                count = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
                self.left[key] = int(count[0, 0])
            sender = request.get_response_sender()
            if request.is_cancelled():  # the client left: forget the request
                del self.left[key]
                continue
            self.left[key] -= 1
            out = pb_utils.Tensor("OUT", np.array([[self.left[key]]], dtype=np.int32))
            if self.left[key] <= 0:
                del self.left[key]
                sender.send(
                    pb_utils.InferenceResponse([out]),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
            else:
                request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                sender.send(pb_utils.InferenceResponse([out]))
        return None
