"""add_sub over HTTP with tritonclient (binary tensors), and the server's metadata.

usage: python python_http.py [HOST:PORT]    (default localhost:8000)
"""

import sys

import numpy as np
import tritonclient.http as httpclient

url = sys.argv[1] if len(sys.argv) > 1 else "localhost:8000"
client = httpclient.InferenceServerClient(url)
print("server:", client.get_server_metadata()["name"])

a = np.arange(16, dtype=np.float32).reshape(1, 16)
b = np.ones((1, 16), dtype=np.float32)
inputs = [
    httpclient.InferInput("INPUT0", [1, 16], "FP32"),
    httpclient.InferInput("INPUT1", [1, 16], "FP32"),
]
inputs[0].set_data_from_numpy(a)
inputs[1].set_data_from_numpy(b)
result = client.infer("add_sub", inputs)
print("add_sub OUTPUT1:", result.as_numpy("OUTPUT1")[0].tolist())
client.close()
