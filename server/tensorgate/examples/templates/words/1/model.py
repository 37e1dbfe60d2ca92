"""Example decoupled model: an async generator, one response per word."""

import asyncio
from collections.abc import AsyncIterator

import numpy as np


class Model:
    async def execute(self, inputs: dict[str, np.ndarray]) -> AsyncIterator[dict[str, np.ndarray]]:
        text = inputs["text_input"].reshape(-1)[0].decode("utf-8")
        for word in text.split():
            await asyncio.sleep(0.001)  # where a real model would compute the next token
            yield {"text_output": np.array([word.encode("utf-8")], dtype=np.object_)}
