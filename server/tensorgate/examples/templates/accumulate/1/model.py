"""Example sequence model: each instance keeps its sequences' totals, keyed by CORRID.

A request of a sequence always reaches the instance holding its total: one that did not
would find no total and fail.
"""

import numpy as np


class Model:
    def load(self, context: object) -> None:
        self.totals: dict[int, int] = {}

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = np.zeros_like(inputs["INPUT"])
        for row in range(inputs["INPUT"].shape[0]):
            if not inputs["READY"][row, 0]:
                continue
            corrid = int(inputs["CORRID"][row, 0])
            if inputs["START"][row, 0]:
                self.totals[corrid] = 0
            self.totals[corrid] += int(inputs["INPUT"][row, 0])
            out[row, 0] = self.totals[corrid]
            if inputs["END"][row, 0]:
                del self.totals[corrid]
        return {"OUTPUT": out}
