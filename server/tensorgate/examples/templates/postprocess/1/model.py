"""Example pipeline step: SUM times DIFF."""

import numpy as np


class Model:
    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"RESULT": inputs["SUM"] * inputs["DIFF"]}
