"""PyTorch backend: TorchScript (`model.pt`) and torch.export programs (`model.pt2`).

torch is imported only when a torch model loads, so repositories without one start fast.
Inputs are passed positionally in the order the config lists them, followed by a sequence
model's control and state inputs; outputs are matched to the config's outputs, followed by
unlisted state outputs, in order (tuple/list results) or by key (dict results).
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
from tensorgate_protos import model_config_pb2 as mc

from tensorgate.backends.base import (
    InstanceContext,
    ModelSignature,
    model_input_names,
    model_output_names,
)
from tensorgate.dataplane.types import Array
from tensorgate.errors import ModelExecutionError, ModelLoadError
from tensorgate.executors.cuda import CudaStream


class TorchInstance:
    """One loaded module on one device."""

    def __init__(self, context: InstanceContext) -> None:
        try:
            import torch
        except ImportError:
            raise ModelLoadError(
                "the pytorch backend needs torch; install the 'torch' extra"
            ) from None
        self._torch = torch
        if not context.config.input or not context.config.output:
            raise ModelLoadError(
                "a PyTorch model needs a config.pbtxt listing its inputs and outputs "
                "(TorchScript files do not record tensor names)"
            )
        tensors: list[mc.ModelInput | mc.ModelOutput] = [
            *context.config.input,
            *context.config.output,
        ]
        for tensor in tensors:
            if tensor.data_type == mc.TYPE_STRING:
                raise ModelLoadError(f"tensor '{tensor.name}': the pytorch backend has no BYTES")
        # A GPU instance runs on its own CUDA stream, staging through pinned host memory.
        self._cuda = CudaStream(context.device) if context.device.startswith("cuda") else None
        self._device = torch.device(context.device)
        self._input_names = model_input_names(context.config)
        self._output_names = model_output_names(context.config)
        threads = context.intra_op_threads
        if threads > 0:
            torch.set_num_threads(threads)
        path = str(context.model_file)
        try:
            if path.endswith(".pt2"):
                self._module: Any = torch.export.load(path).module()
                self._module.to(self._device)
            else:
                self._module = torch.jit.load(  # type: ignore[no-untyped-call]
                    path, map_location=self._device
                )
                self._module.eval()
        except Exception as exc:  # torch raises many types for unreadable files
            raise ModelLoadError(f"torch cannot load {context.model_file.name}: {exc}") from None

    def signature(self) -> ModelSignature | None:
        return None

    def _to_tensor(self, name: str, array: Array) -> Any:
        torch = self._torch
        if array.dtype == ml_dtypes.bfloat16:
            tensor = torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
        else:
            # Arrays viewed from the request bytes are read-only; a model that writes its
            # input in place must not corrupt them, so such arrays are copied.
            tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
        if self._cuda is not None:
            return self._cuda.to_device(name, tensor)
        return tensor

    def _to_array(self, tensor: Any) -> Array:
        tensor = tensor.detach().cpu()
        if tensor.dtype == self._torch.bfloat16:
            return np.asarray(tensor.view(self._torch.int16).numpy().view(ml_dtypes.bfloat16))
        return np.asarray(tensor.numpy())

    def _outputs(self, result: Any) -> list[tuple[str, Any]]:
        if isinstance(result, dict):
            return [(name, result[name]) for name in self._output_names]
        if not isinstance(result, (tuple, list)):
            result = (result,)
        if len(result) != len(self._output_names):
            raise ModelExecutionError(
                f"model returned {len(result)} outputs, config lists {len(self._output_names)}"
            )
        return list(zip(self._output_names, result, strict=True))

    def execute(self, inputs: dict[str, Array]) -> dict[str, Array]:
        names = [name for name in self._input_names if name in inputs]
        if self._cuda is None:
            with self._torch.inference_mode():
                result = self._module(*(self._to_tensor(n, inputs[n]) for n in names))
            return {name: self._to_array(t) for name, t in self._outputs(result)}
        cuda = self._cuda
        with self._torch.inference_mode(), cuda.context():
            result = self._module(*(self._to_tensor(n, inputs[n]) for n in names))
            staged = [(name, cuda.to_host(name, t.detach())) for name, t in self._outputs(result)]
        cuda.wait()  # this instance's thread waits on the stream's event, never the loop
        # clone(): leave the pinned buffers free for the next batch.
        return {name: self._to_array(pinned.clone()) for name, pinned in staged}

    def close(self) -> None:
        del self._module


class TorchFactory:
    """Creates torch instances of TorchScript (`model.pt`) and torch.export (`model.pt2`) files."""

    name = "pytorch"
    default_filename = "model.pt"

    def create(self, context: InstanceContext) -> TorchInstance:
        return TorchInstance(context)
