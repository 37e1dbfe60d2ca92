"""CUDA shared memory (Triton's extension): a client allocates device memory, exports it with
`cudaIpcGetMemHandle`, and registers the 64-byte handle; the server opens it with
`cudaIpcOpenMemHandle` and copies inputs out of it and outputs into it.

The CUDA runtime is reached through ctypes (libcudart, as the CUDA wheels of torch and
onnxruntime-gpu install it, or the system's), so the module imports everywhere and a server
without a GPU refuses registration with a clear error instead of failing to start. Copies
are synchronous `cudaMemcpy` calls: a tensor a request reads is on the host when decoding
returns, and an output is in the client's device memory before the response is sent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
import sys

import numpy as np

from tensorgate.errors import InvalidArgument, Unavailable

HANDLE_BYTES = 64  # sizeof(cudaIpcMemHandle_t)
_MEMCPY_HOST_TO_DEVICE = 1
_MEMCPY_DEVICE_TO_HOST = 2
_IPC_LAZY_ENABLE_PEER_ACCESS = 1


class _IpcHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_char * HANDLE_BYTES)]


def _candidates() -> list[str]:
    """Where libcudart may be: the CUDA wheels' copies first, then the loader's path."""
    found: list[str] = []
    for root in sys.path:
        for pattern in ("nvidia/cuda_runtime/lib/libcudart.so*", "nvidia/cu*/lib/libcudart.so*"):
            found.extend(sorted(glob.glob(os.path.join(root, pattern)), reverse=True))
    named = ctypes.util.find_library("cudart")
    if named:
        found.append(named)
    found.extend(["libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"])
    return found


@functools.cache
def _runtime() -> ctypes.CDLL | str:
    """The CUDA runtime library, or why it cannot be used."""
    why = "libcudart was not found"
    for path in _candidates():
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        library.cudaIpcOpenMemHandle.argtypes = [
            ctypes.POINTER(ctypes.c_void_p),
            _IpcHandle,
            ctypes.c_uint,
        ]
        library.cudaMemcpy.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
        ]
        library.cudaIpcCloseMemHandle.argtypes = [ctypes.c_void_p]
        library.cudaGetErrorString.restype = ctypes.c_char_p
        count = ctypes.c_int(0)
        status = library.cudaGetDeviceCount(ctypes.byref(count))
        if status != 0 or count.value == 0:
            why = f"no CUDA device is visible ({_message(library, status)})"
            continue
        return library
    return why


def _message(library: ctypes.CDLL, status: int) -> str:
    text = library.cudaGetErrorString(status)
    return text.decode() if text else f"CUDA error {status}"


def available() -> bool:
    """Whether this process can open CUDA shared memory."""
    return not isinstance(_runtime(), str)


class CudaBuffer:
    """A client's device buffer, opened in this process from its IPC handle."""

    def __init__(self, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        library = _runtime()
        if isinstance(library, str):
            raise Unavailable(f"CUDA shared memory needs a GPU: {library}")
        if len(raw_handle) != HANDLE_BYTES:
            raise InvalidArgument(
                f"a CUDA IPC handle has {HANDLE_BYTES} bytes, got {len(raw_handle)}"
            )
        self._library = library
        self.device_id = device_id
        self.byte_size = byte_size
        self._check(library.cudaSetDevice(device_id), f"device {device_id}")
        pointer = ctypes.c_void_p()
        handle = _IpcHandle()
        handle.reserved = raw_handle
        self._check(
            library.cudaIpcOpenMemHandle(
                ctypes.byref(pointer), handle, _IPC_LAZY_ENABLE_PEER_ACCESS
            ),
            "opening the IPC handle",
        )
        self._pointer: int | None = pointer.value

    def _check(self, status: int, doing: str) -> None:
        if status != 0:
            raise InvalidArgument(f"CUDA shared memory, {doing}: {_message(self._library, status)}")

    def _address(self, start: int) -> int:
        if self._pointer is None:
            raise Unavailable("the CUDA shared-memory region was unregistered")
        return self._pointer + start

    def read(self, start: int, length: int) -> memoryview:
        """`length` bytes from `start`, copied to host memory."""
        host = np.empty(length, np.uint8)
        self._check(self._library.cudaSetDevice(self.device_id), f"device {self.device_id}")
        self._check(
            self._library.cudaMemcpy(
                host.ctypes.data, self._address(start), length, _MEMCPY_DEVICE_TO_HOST
            ),
            "copying an input from the device",
        )
        return host.data

    def write(self, start: int, data: bytes | memoryview) -> None:
        """Copy `data` into the buffer at `start`."""
        host = np.frombuffer(data, np.uint8)
        self._check(self._library.cudaSetDevice(self.device_id), f"device {self.device_id}")
        self._check(
            self._library.cudaMemcpy(
                self._address(start), host.ctypes.data, host.nbytes, _MEMCPY_HOST_TO_DEVICE
            ),
            "copying an output to the device",
        )

    def close(self) -> None:
        pointer, self._pointer = self._pointer, None
        if pointer is not None:
            self._library.cudaIpcCloseMemHandle(pointer)
