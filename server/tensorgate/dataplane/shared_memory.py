"""Shared memory (Triton's extensions): clients register POSIX shared-memory regions (system)
or device buffers (CUDA, dataplane/cuda_memory.py) by name, then send inputs as (region,
offset, byte size) instead of bytes, and ask for outputs to be written into a region.

System inputs are numpy views of the mapped region: no copy from the client's memory to the
model; CUDA inputs are copied to the host once. Every offset and size is checked against the
region before it is read or written. One namespace holds both kinds, as in Triton. Regions
are unmapped on unregister and at shutdown; a region still in use by a request in flight is
released when that request lets go of it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from tensorgate.dataplane.cuda_memory import CudaBuffer
from tensorgate.errors import InvalidArgument, NotFound

SHM_DIR = "/dev/shm"
# A POSIX shared-memory name: one path component, optionally after a leading slash.
_KEY = re.compile(r"/?[^/\0]+")
REGION = "shared_memory_region"
OFFSET = "shared_memory_offset"
BYTE_SIZE = "shared_memory_byte_size"
SYSTEM, CUDA = "system", "cuda"


@dataclass(slots=True)
class Region:
    """A registered window of a shared-memory object (system), or a device buffer (CUDA)."""

    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap | None = None
    device: CudaBuffer | None = None

    @property
    def kind(self) -> str:
        return CUDA if self.device is not None else SYSTEM


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a tensor lives in a region (from a tensor's parameters)."""

    region: str
    offset: int
    byte_size: int


def placement(parameters: Mapping[str, object], where: str) -> Placement | None:
    """The tensor's shared-memory placement, or None when it has none."""
    region = parameters.get(REGION)
    if region is None:
        return None
    offset = parameters.get(OFFSET, 0)
    size = parameters.get(BYTE_SIZE)
    if not isinstance(region, str) or not region:
        raise InvalidArgument(f"{where}: {REGION} must be a region name")
    for label, value in ((OFFSET, offset), (BYTE_SIZE, size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(f"{where}: {label} must be a non-negative integer")
    assert isinstance(offset, int) and isinstance(size, int)
    return Placement(region, offset, size)


def registry(shm: SharedMemoryRegistry | None) -> SharedMemoryRegistry:
    """The codec's registry, for a tensor placed in shared memory; a codec used without one
    (no server behind it) refuses such tensors."""
    if shm is None:
        raise InvalidArgument("this server takes no shared memory")
    return shm


class SharedMemoryRegistry:
    """The server's registered regions (one registry per process)."""

    def __init__(self) -> None:
        self.regions: dict[str, Region] = {}

    def _check_name(self, name: str) -> None:
        if not name:
            raise InvalidArgument("a shared-memory region needs a name")
        if name in self.regions:
            raise InvalidArgument(f"shared-memory region '{name}' is already registered")

    def register_cuda(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        """A client's device buffer, from its CUDA IPC handle."""
        self._check_name(name)
        if device_id < 0 or byte_size == 0:
            raise InvalidArgument(
                f"CUDA shared-memory region '{name}' needs a device id >= 0 and a byte size > 0"
            )
        device = CudaBuffer(raw_handle, device_id, byte_size)
        self.regions[name] = Region(name, "", 0, byte_size, device=device)

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._check_name(name)
        if not _KEY.fullmatch(key) or key.lstrip("/") in (".", ".."):
            raise InvalidArgument(f"'{key}' is not a POSIX shared-memory key")
        path = os.path.join(SHM_DIR, key.lstrip("/"))
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise InvalidArgument(
                f"unable to open shared-memory key '{key}': {exc.strerror}"
            ) from None
        try:
            size = os.fstat(fd).st_size
            if byte_size == 0 or offset + byte_size > size:
                raise InvalidArgument(
                    f"shared-memory region '{name}': offset {offset} and byte_size "
                    f"{byte_size} do not fit in '{key}' of {size} bytes"
                )
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.regions[name] = Region(name, key, offset, byte_size, mapping)

    def unregister(self, name: str = "", kind: str = SYSTEM) -> None:
        """One region of that kind, or every region of it when `name` is empty."""
        names = [name] if name else [n for n, r in self.regions.items() if r.kind == kind]
        for each in names:
            region = self.regions.get(each)
            if region is not None and region.kind == kind:
                del self.regions[each]
                _release(region)

    def status(self, name: str = "", kind: str = SYSTEM) -> list[Region]:
        if not name:
            return [r for r in self.regions.values() if r.kind == kind]
        region = self.regions.get(name)
        if region is None or region.kind != kind:
            raise NotFound(f"no {kind} shared-memory region '{name}' is registered")
        return [region]

    def _window(self, place: Placement, length: int, where: str) -> tuple[Region, int]:
        region = self.regions.get(place.region)
        if region is None:
            raise InvalidArgument(
                f"{where}: no shared-memory region '{place.region}' is registered"
            )
        if place.offset + length > region.byte_size:
            raise InvalidArgument(
                f"{where}: {length} bytes at offset {place.offset} do not fit in region "
                f"'{place.region}' of {region.byte_size} bytes"
            )
        return region, region.offset + place.offset

    def read(self, place: Placement, where: str) -> memoryview:
        """The tensor's bytes, as a view of the region (no copy)."""
        region, start = self._window(place, place.byte_size, where)
        if region.device is not None:
            return region.device.read(start, place.byte_size)
        assert region.mapping is not None
        return memoryview(region.mapping)[start : start + place.byte_size]

    def write(self, place: Placement, data: bytes | memoryview, where: str) -> None:
        """Write an output's bytes into its region; it must fit the byte size asked for."""
        if len(data) > place.byte_size:
            raise InvalidArgument(
                f"{where} has {len(data)} bytes, more than the {place.byte_size} bytes of "
                f"shared memory given for it"
            )
        region, start = self._window(place, len(data), where)
        if region.device is not None:
            region.device.write(start, data)
            return
        assert region.mapping is not None
        region.mapping[start : start + len(data)] = data

    def close(self) -> None:
        for region in self.regions.values():
            _release(region)
        self.regions.clear()


def _release(region: Region) -> None:
    if region.device is not None:
        region.device.close()
    if region.mapping is not None:
        # A request in flight may still hold a view: the mapping then goes when it is freed.
        with contextlib.suppress(BufferError):
            region.mapping.close()
