"""add_sub over gRPC, then the decoupled repeat_int32 and the iterative countdown over
streams, with tritonclient.

usage: python python_grpc.py [HOST:PORT]    (default localhost:8001)
"""

import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient

url = sys.argv[1] if len(sys.argv) > 1 else "localhost:8001"
client = grpcclient.InferenceServerClient(url)

a = np.arange(16, dtype=np.float32).reshape(1, 16)
b = np.ones((1, 16), dtype=np.float32)
inputs = [
    grpcclient.InferInput("INPUT0", [1, 16], "FP32"),
    grpcclient.InferInput("INPUT1", [1, 16], "FP32"),
]
inputs[0].set_data_from_numpy(a)
inputs[1].set_data_from_numpy(b)
result = client.infer("add_sub", inputs)
print("add_sub OUTPUT0:", result.as_numpy("OUTPUT0")[0].tolist())

# A decoupled model answers on a stream: one response per element of IN, then a final flag.
responses: queue.Queue = queue.Queue()
client.start_stream(callback=lambda result, error: responses.put(error or result))
values = np.array([10, 20, 30], dtype=np.int32)
stream_inputs = [
    grpcclient.InferInput("IN", [3], "INT32"),
    grpcclient.InferInput("DELAY", [3], "UINT32"),
    grpcclient.InferInput("WAIT", [1], "UINT32"),
]
stream_inputs[0].set_data_from_numpy(values)
stream_inputs[1].set_data_from_numpy(np.full(3, 100, dtype=np.uint32))
stream_inputs[2].set_data_from_numpy(np.zeros(1, dtype=np.uint32))
client.async_stream_infer("repeat_int32", stream_inputs, enable_empty_final_response=True)
while True:
    item = responses.get(timeout=30)
    if isinstance(item, Exception):
        raise item
    if item.get_response().parameters["triton_final_response"].bool_param:
        break
    print("repeat_int32 OUT:", int(item.as_numpy("OUT")[0]))
client.stop_stream()

# An iterative sequence: countdown runs once per step and reschedules the request until it
# reaches zero, one response per step; requests at different steps share each execution.
responses = queue.Queue()
client.start_stream(callback=lambda result, error: responses.put(error or result))
for start in (3, 5):
    count = grpcclient.InferInput("IN", [1, 1], "INT32")
    count.set_data_from_numpy(np.array([[start]], dtype=np.int32))
    client.async_stream_infer("countdown", [count], request_id=f"from-{start}")
for _ in range(3 + 5):
    item = responses.get(timeout=30)
    if isinstance(item, Exception):
        raise item
    print("countdown", item.get_response().id, "OUT:", int(item.as_numpy("OUT")[0, 0]))
client.stop_stream()
client.close()
