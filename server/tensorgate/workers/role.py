"""What a worker process knows of its place: its index, how many there are, and where each
worker's private socket is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """Worker `index` of `count`; each listens privately on a unix socket in `socket_dir`."""

    index: int
    count: int
    socket_dir: Path

    def address(self, index: int) -> str:
        """The gRPC address of worker `index`'s private server."""
        return f"unix:{self.socket_dir / f'worker-{index}.sock'}"

    @property
    def siblings(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]
