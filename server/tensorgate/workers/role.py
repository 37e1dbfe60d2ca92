"""What a worker process knows of its place: its index, how many there are, and where each
worker's private socket is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

# A worker restarts in seconds, and a caller must reach it as soon as its socket is back.
# gRPC's process-wide subchannel pool would hand a new channel the old channel's subchannel,
# still backing off after the failed connect (a second, growing to two minutes), so every
# private channel keeps its own subchannels and retries a unix socket within 100 ms.
PRIVATE_CHANNEL_OPTIONS = (
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """Worker `index` of `count`; each listens privately on a unix socket in `socket_dir`."""

    index: int
    count: int
    socket_dir: Path

    def address(self, index: int) -> str:
        """The gRPC address of worker `index`'s private server."""
        return f"unix:{self.socket_dir / f'worker-{index}.sock'}"

    def channel(self, index: int) -> grpc.aio.Channel:
        """A channel to worker `index`'s private server (make it on the caller's loop)."""
        return grpc.aio.insecure_channel(self.address(index), options=PRIVATE_CHANNEL_OPTIONS)

    @property
    def siblings(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]
