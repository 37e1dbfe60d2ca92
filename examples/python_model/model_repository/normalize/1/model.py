"""Scales each row of X to unit length: Y = X / |X|, NORM = |X|.

The dynamic batcher hands `execute` whole batches: X has one row per request (rows of the
same length batch together), and each request gets its rows of Y and NORM back.
"""

import numpy as np


class Model:
    def load(self, context: object) -> None:
        # context.model_dir, context.config and context.version are here if needed.
        self.epsilon = 1e-12

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["X"]
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return {"Y": x / np.maximum(norm, self.epsilon), "NORM": norm.astype(np.float32)}

    def unload(self) -> None:
        pass
