"""System shared memory (Triton's extension): clients register POSIX shared-memory regions by
name, then send inputs as (region, offset, byte size) instead of bytes, and ask for outputs
to be written into a region.

Inputs are numpy views of the mapped region: no copy from the client's memory to the model.
Every offset and size is checked against the region before it is read or written. Regions
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

from tensorgate.errors import InvalidArgument, NotFound

SHM_DIR = "/dev/shm"
# A POSIX shared-memory name: one path component, optionally after a leading slash.
_KEY = re.compile(r"/?[^/\0]+")
REGION = "shared_memory_region"
OFFSET = "shared_memory_offset"
BYTE_SIZE = "shared_memory_byte_size"


@dataclass(slots=True)
class Region:
    """A registered window of a shared-memory object."""

    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap


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


class SharedMemoryRegistry:
    """The server's registered regions (one registry per process)."""

    def __init__(self) -> None:
        self.regions: dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name:
            raise InvalidArgument("a shared-memory region needs a name")
        if name in self.regions:
            raise InvalidArgument(f"shared-memory region '{name}' is already registered")
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

    def unregister(self, name: str = "") -> None:
        """One region, or every region when `name` is empty."""
        names = [name] if name else list(self.regions)
        for each in names:
            region = self.regions.pop(each, None)
            if region is not None:
                _release(region.mapping)

    def status(self, name: str = "") -> list[Region]:
        if not name:
            return list(self.regions.values())
        region = self.regions.get(name)
        if region is None:
            raise NotFound(f"no shared-memory region '{name}' is registered")
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
        return memoryview(region.mapping)[start : start + place.byte_size]

    def write(self, place: Placement, data: bytes | memoryview, where: str) -> None:
        """Write an output's bytes into its region; it must fit the byte size asked for."""
        if len(data) > place.byte_size:
            raise InvalidArgument(
                f"{where} has {len(data)} bytes, more than the {place.byte_size} bytes of "
                f"shared memory given for it"
            )
        region, start = self._window(place, len(data), where)
        region.mapping[start : start + len(data)] = data

    def close(self) -> None:
        self.unregister()


def _release(mapping: mmap.mmap) -> None:
    # A request in flight may still hold a view: the mapping then goes when it is freed.
    with contextlib.suppress(BufferError):
        mapping.close()
