"""ONNX Runtime backend: CPU execution provider, CUDA execution provider when present.
Session, run and provider settings come from the config (backends/onnx_options.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tensorgate.backends.base import InstanceContext, ModelSignature, TensorSignature
from tensorgate.backends.onnx_options import cuda_provider_options, run_options, session_options
from tensorgate.dataplane.types import Array
from tensorgate.errors import InvalidArgument, ModelLoadError
from tensorgate.executors.cuda import CudaStream, cuda_available

_ORT_TYPES = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(string)": "TYPE_STRING",
    "tensor(bfloat16)": "TYPE_BF16",
}


def _dims(shape: list[Any]) -> tuple[int, ...]:
    # Symbolic ("batch") and unknown (None) dimensions are both dynamic.
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def _signature(nodes: list[Any]) -> tuple[TensorSignature, ...]:
    out = []
    for node in nodes:
        config_type = _ORT_TYPES.get(node.type)
        if config_type is None:
            raise ModelLoadError(f"ONNX tensor '{node.name}' has unsupported type {node.type}")
        out.append(TensorSignature(node.name, config_type, _dims(node.shape)))
    return tuple(out)


class OnnxInstance:
    """One onnxruntime InferenceSession."""

    def __init__(self, context: InstanceContext) -> None:
        import onnxruntime as ort

        config = context.config
        options = session_options(ort, config, context.intra_op_threads)
        self._run_options = run_options(ort, config)
        providers: list[Any] = ["CPUExecutionProvider"]
        if context.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ModelLoadError(
                    "instance_group asks for KIND_GPU but onnxruntime has no CUDA execution "
                    "provider (install the 'gpu' extra: onnxruntime-gpu)"
                )
            # Kept on the instance: the stream must outlive the session that runs on it.
            self._stream = CudaStream(context.device) if cuda_available() else None
            cuda = {**cuda_provider_options(config), **_cuda_options(context.device, self._stream)}
            providers = [("CUDAExecutionProvider", cuda), *providers]
        try:
            self._session = ort.InferenceSession(
                str(context.model_file), options, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(
                f"onnxruntime cannot load {context.model_file.name}: {exc}"
            ) from None
        self._output_names = [o.name for o in self._session.get_outputs()]
        self._string_inputs = {
            i.name for i in self._session.get_inputs() if i.type == "tensor(string)"
        }

    def signature(self) -> ModelSignature:
        return ModelSignature(
            _signature(self._session.get_inputs()), _signature(self._session.get_outputs())
        )

    def execute(self, inputs: dict[str, Array]) -> dict[str, Array]:
        feed = inputs
        if self._string_inputs:
            # onnxruntime wants str elements for string tensors; the wire gives bytes.
            feed = dict(inputs)
            for name in self._string_inputs & inputs.keys():
                feed[name] = np.vectorize(_to_str, otypes=[object])(inputs[name])
        results = self._session.run(self._output_names, feed, self._run_options)
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        del self._session


def _to_str(value: object) -> str:
    if not isinstance(value, bytes):
        return str(value)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(
            "onnxruntime string tensors hold UTF-8 text; an element is not valid UTF-8"
        ) from None


def _cuda_options(device: str, stream: CudaStream | None) -> dict[str, str]:
    """CUDA EP options: the instance's device, and its own stream when torch can make one.

    onnxruntime copies inputs and outputs through its own staging; the instance thread
    blocks in `run` until the stream is done, so the event loop never waits on the GPU.
    """
    options = {"device_id": device.split(":")[1]}
    if stream is not None:
        options["user_compute_stream"] = str(stream.handle)
        options["has_user_compute_stream"] = "1"
    return options


class OnnxFactory:
    """Creates onnxruntime instances of `model.onnx` files."""

    name = "onnxruntime"
    default_filename = "model.onnx"

    def create(self, context: InstanceContext) -> OnnxInstance:
        return OnnxInstance(context)
