"""PyTorch backend: TorchScript (`model.pt`) and torch.export programs (`model.pt2`).

torch is imported only when a torch model loads, so repositories without one start fast.
Inputs are matched to `forward`'s arguments as Triton's pytorch backend matches them: by
name when every input names an argument, else by the index in names of the form
`<name>__<index>`, else in the order the config lists them; a sequence model's control and
state inputs follow the config's inputs. Outputs of a tuple or list result are matched by
`__<index>` likewise, else in config order (unlisted state outputs last); a dict result is
matched by key.

The parameters of Triton's pytorch backend that apply here: `INFERENCE_MODE` (true by
default; false runs under no_grad), `DISABLE_OPTIMIZED_EXECUTION`, `ENABLE_CACHE_CLEANING`
(GPU instances), `INTRA_OP_THREAD_COUNT` and `INTER_OP_THREAD_COUNT` (torch's thread pools,
which are the process's). Its other switches fail the load by name.
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext
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
from tensorgate.repository.config import parameter_flag, parameter_int


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
        config = context.config
        for key in _REFUSED_PARAMETERS:
            if key in config.parameters:
                raise ModelLoadError(f"parameter {key} of the pytorch backend is not implemented")
        self._inference_mode = parameter_flag(config, "INFERENCE_MODE") is not False
        self._optimized = not parameter_flag(config, "DISABLE_OPTIMIZED_EXECUTION")
        self._clean_cache = bool(parameter_flag(config, "ENABLE_CACHE_CLEANING") and self._cuda)
        _set_threads(torch, config, context.intra_op_threads)
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
        self._input_names = _input_order(self._module, model_input_names(config))
        self._output_names = _indexed_order(model_output_names(config))

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

    def _run(self, inputs: dict[str, Array]) -> Any:
        torch = self._torch
        names = [name for name in self._input_names if name in inputs]
        grad = torch.inference_mode() if self._inference_mode else torch.no_grad()
        # Optimized execution is torch's default: only turning it off needs the context.
        executor = nullcontext() if self._optimized else torch.jit.optimized_execution(False)
        with grad, executor:
            return self._module(*(self._to_tensor(n, inputs[n]) for n in names))

    def execute(self, inputs: dict[str, Array]) -> dict[str, Array]:
        if self._cuda is None:
            result = self._run(inputs)
            return {name: self._to_array(t) for name, t in self._outputs(result)}
        cuda = self._cuda
        with cuda.context():
            result = self._run(inputs)
            staged = [(name, cuda.to_host(name, t.detach())) for name, t in self._outputs(result)]
        cuda.wait()  # this instance's thread waits on the stream's event, never the loop
        # clone(): leave the pinned buffers free for the next batch.
        outputs = {name: self._to_array(pinned.clone()) for name, pinned in staged}
        if self._clean_cache:
            self._torch.cuda.empty_cache()
        return outputs

    def close(self) -> None:
        del self._module


_REFUSED_PARAMETERS = (
    "ENABLE_WEIGHT_SHARING",
    "ENABLE_JIT_EXECUTOR",
    "ENABLE_JIT_PROFILING",
    "ENABLE_NVFUSER",
    "ENABLE_TENSOR_FUSER",
)


def _set_threads(torch: Any, config: mc.ModelConfig, default_intra: int) -> None:
    """torch's thread pools are the process's: the last model to set them wins, as in
    Triton; the inter-op pool can only be sized before it first runs."""
    intra = parameter_int(config, "INTRA_OP_THREAD_COUNT", default_intra)
    if intra > 0:
        torch.set_num_threads(intra)
    inter = parameter_int(config, "INTER_OP_THREAD_COUNT", 0)
    if inter > 0 and torch.get_num_interop_threads() != inter:
        try:
            torch.set_num_interop_threads(inter)
        except RuntimeError:
            raise ModelLoadError(
                f"parameter INTER_OP_THREAD_COUNT: torch's inter-op thread pool already runs "
                f"with {torch.get_num_interop_threads()} threads in this process and cannot "
                "be resized"
            ) from None


def _index(name: str) -> int | None:
    """The index of a `<name>__<index>` tensor name, else None."""
    _, sep, tail = name.rpartition("__")
    return int(tail) if sep and tail.isdigit() else None


def _indexed_order(names: list[str]) -> list[str]:
    """Names in position order: by `__<index>` when every name has a distinct one."""
    indices = [_index(name) for name in names]
    if None in indices or len(set(indices)) != len(indices):
        return names
    return [name for _, name in sorted(zip(indices, names, strict=True))]


def _input_order(module: Any, names: list[str]) -> list[str]:
    """Inputs in `forward`'s argument order: by name when every input names an argument,
    else by `__<index>`, else as listed."""
    try:
        schema = module.forward.schema  # TorchScript
        arguments = [a.name for a in schema.arguments][1:]  # past `self`
    except AttributeError:
        arguments = list(inspect.signature(module.forward).parameters)
    if set(names) <= set(arguments):
        return [name for name in arguments if name in names]
    return _indexed_order(names)


class TorchFactory:
    """Creates torch instances of TorchScript (`model.pt`) and torch.export (`model.pt2`) files."""

    name = "pytorch"
    default_filename = "model.pt"

    def create(self, context: InstanceContext) -> TorchInstance:
        return TorchInstance(context)
