"""CUDA-stream execution for one GPU instance: its own stream, pinned host staging, and an
event that the instance's thread waits on, so the event loop never blocks on the device.

Each KIND_GPU instance owns one `CudaStream`. Inputs are copied into pinned host buffers
(reused across batches, grown on demand) and sent to the device asynchronously on the
instance's stream; outputs come back into pinned buffers the same way; one event recorded
after the last copy marks the batch done. The instance thread synchronizes on that event
(this is the "await off the event loop": the loop only hears back through the pool's
`call_soon_threadsafe`), then copies outputs out of the pinned buffers so the next batch can
reuse them while the response is still being encoded.

torch is imported lazily: this module imports, and `cuda_available()` answers False, on a
machine without torch or without a GPU.
"""

from __future__ import annotations

from typing import Any

from tensorgate.errors import ModelLoadError


def cuda_available() -> bool:
    """Whether torch is installed and sees at least one CUDA device."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class CudaStream:
    """One instance's stream, staging buffers and completion event."""

    def __init__(self, device: str) -> None:
        if not cuda_available():
            raise ModelLoadError(
                f"instance_group asks for {device} but torch sees no CUDA device "
                "(install the 'torch' extra on a machine with a GPU)"
            )
        import torch

        self._torch = torch
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
        self._done = torch.cuda.Event()  # type: ignore[no-untyped-call]
        self._staging: dict[tuple[str, str], Any] = {}  # (direction/name, dtype) -> pinned

    @property
    def handle(self) -> int:
        """The raw cudaStream_t, for libraries that take a stream pointer (onnxruntime)."""
        return int(self.stream.cuda_stream)

    def _pinned(self, key: str, like: Any) -> Any:
        """A pinned host tensor with `like`'s dtype and shape, reused when big enough."""
        torch = self._torch
        slot = (key, str(like.dtype))
        buffer = self._staging.get(slot)
        count = like.numel()
        if buffer is None or buffer.numel() < count:
            buffer = torch.empty(max(count, 1), dtype=like.dtype, pin_memory=True)
            self._staging[slot] = buffer
        return buffer[:count].view(like.shape)

    def to_device(self, name: str, host: Any) -> Any:
        """Stage a CPU tensor through pinned memory onto the device, on this stream."""
        pinned = self._pinned(f"in:{name}", host)
        pinned.copy_(host)
        with self._torch.cuda.stream(self.stream):
            return pinned.to(self.device, non_blocking=True)

    def to_host(self, name: str, device_tensor: Any) -> Any:
        """Queue a device-to-pinned copy on this stream; valid after `wait()`."""
        pinned = self._pinned(f"out:{name}", device_tensor)
        with self._torch.cuda.stream(self.stream):
            pinned.copy_(device_tensor, non_blocking=True)
        return pinned

    def wait(self) -> None:
        """Block this instance's thread until everything queued on the stream has run."""
        self._done.record(self.stream)
        self._done.synchronize()

    def context(self) -> Any:
        """`with stream.context():` runs torch work on this instance's stream."""
        return self._torch.cuda.stream(self.stream)
