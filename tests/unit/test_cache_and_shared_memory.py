"""The response cache's keys and eviction, and the shared-memory registry's checks."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from tensorgate.dataplane.response_cache import ResponseCache
from tensorgate.dataplane.shared_memory import Placement, SharedMemoryRegistry
from tensorgate.dataplane.types import InferRequest
from tensorgate.errors import InvalidArgument, NotFound


def _request(values: list[float], **parameters: object) -> InferRequest:
    request = InferRequest("m", inputs={"X": np.array([values], np.float32)})
    request.datatypes["X"] = "FP32"
    request.parameters.update(parameters)  # type: ignore[arg-type]
    return request


def test_the_key_changes_with_what_changes_the_answer_and_not_with_queue_settings() -> None:
    key = ResponseCache.key
    base = key("m", 1, _request([1, 2]))
    assert key("m", 1, _request([1, 2])) == base
    assert key("m", 1, _request([1, 2], priority=3, timeout=100)) == base
    assert key("m", 1, _request([1, 3])) != base
    assert key("m", 2, _request([1, 2])) != base
    assert key("other", 1, _request([1, 2])) != base
    assert key("m", 1, _request([1, 2], top_k=3)) != base
    wanted = _request([1, 2])
    wanted.requested_outputs = ["Y"]
    assert key("m", 1, wanted) != base


def test_least_recently_used_entries_leave_first_within_the_byte_budget() -> None:
    cache = ResponseCache(capacity=3 * (400 + 256))
    for name in (b"a", b"b", b"c"):
        cache.put(name, {"Y": np.zeros(100, np.float32)})
    assert cache.get(b"a") is not None  # now the most recent
    cache.put(b"d", {"Y": np.zeros(100, np.float32)})
    assert cache.get(b"b") is None and cache.get(b"a") is not None
    assert len(cache) == 3 and cache.evictions == 1 and cache.size <= cache.capacity
    cache.put(b"huge", {"Y": np.zeros(10_000, np.float32)})  # bigger than the cache
    assert cache.get(b"huge") is None
    kept = cache.get(b"a")
    assert kept is not None and not kept["Y"].flags.writeable


@pytest.fixture
def region() -> Iterator[tuple[SharedMemoryRegistry, str]]:
    key = f"tg-unit-{uuid.uuid4().hex[:8]}"
    path = f"/dev/shm/{key}"
    with open(path, "wb") as handle:
        handle.write(bytes(range(64)))
    registry = SharedMemoryRegistry()
    yield registry, key
    registry.close()
    os.unlink(path)


def test_reads_and_writes_stay_inside_the_registered_window(
    region: tuple[SharedMemoryRegistry, str],
) -> None:
    registry, key = region
    registry.register("r", f"/{key}", 16, 32)
    assert bytes(registry.read(Placement("r", 0, 4), "input 'X'")) == bytes([16, 17, 18, 19])
    registry.write(Placement("r", 28, 4), b"\xff" * 4, "output 'Y'")
    assert bytes(registry.read(Placement("r", 28, 4), "x")) == b"\xff" * 4
    with pytest.raises(InvalidArgument, match="do not fit in region 'r' of 32 bytes"):
        registry.read(Placement("r", 30, 4), "input 'X'")
    with pytest.raises(InvalidArgument, match="more than the 2 bytes"):
        registry.write(Placement("r", 0, 2), b"abc", "output 'Y'")
    with pytest.raises(InvalidArgument, match="already registered"):
        registry.register("r", f"/{key}", 0, 8)
    assert [r.name for r in registry.status()] == ["r"]
    registry.unregister("r")
    with pytest.raises(NotFound):
        registry.status("r")


@pytest.mark.parametrize(
    ("key", "offset", "size", "reason"),
    [
        ("/../etc/passwd", 0, 4, "not a POSIX shared-memory key"),
        ("/a/b", 0, 4, "not a POSIX shared-memory key"),
        ("/tg-unit-missing", 0, 4, "unable to open"),
    ],
)
def test_registration_refuses_paths_and_missing_keys(
    key: str, offset: int, size: int, reason: str
) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        SharedMemoryRegistry().register("r", key, offset, size)


def test_a_window_past_the_object_is_refused(region: tuple[SharedMemoryRegistry, str]) -> None:
    registry, key = region
    with pytest.raises(InvalidArgument, match="do not fit in"):
        registry.register("r", key, 60, 8)
