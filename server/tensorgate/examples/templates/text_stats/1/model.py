"""Example Python model: BYTES in, BYTES and INT64 out."""

import numpy as np
from tensorgate.backends.python_model import PythonModel


class Model(PythonModel):
    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [t.decode("utf-8") for t in inputs["TEXT"].reshape(-1)]
        upper = np.array([t.upper().encode("utf-8") for t in texts], dtype=np.object_)
        length = np.array([len(t) for t in texts], dtype=np.int64)
        shape = inputs["TEXT"].shape
        return {"UPPER": upper.reshape(shape), "LENGTH": length.reshape(shape)}
