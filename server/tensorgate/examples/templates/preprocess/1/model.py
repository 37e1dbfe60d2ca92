"""Example pipeline step: refuses readings below -1000 (the sensor's floor)."""

import numpy as np


class Model:
    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raw = inputs["RAW"]
        if (raw < -1000).any():
            raise ValueError("RAW below -1000")
        return {"DOUBLED": raw * 2, "SHIFTED": raw + 1}
