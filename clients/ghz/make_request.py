"""Write add_sub_request.bin: one serialized ModelInferRequest for ghz's --binary-file.

Built with the Python client's own request builder, so ghz sends exactly what the client
sends: INPUT0 = 0..15 and INPUT1 = 1s, FP32 [1, 16], as raw contents.
usage: python clients/ghz/make_request.py [OUT]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tensorgate_client.messages import infer_request

HERE = Path(__file__).resolve().parent


def add_sub_request() -> bytes:
    """One serialized add_sub ModelInferRequest, as the Python client builds it."""
    inputs = {
        "INPUT0": np.arange(16, dtype=np.float32).reshape(1, 16),
        "INPUT1": np.ones((1, 16), dtype=np.float32),
    }
    return infer_request("add_sub", inputs).SerializeToString(deterministic=True)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "add_sub_request.bin"
    out.write_bytes(add_sub_request())
    print(f"wrote {out} ({out.stat().st_size} bytes)")
