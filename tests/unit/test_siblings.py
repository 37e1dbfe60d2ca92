"""A worker's calls to its siblings reach one that started after a failed attempt, at once:
gRPC backs a failed channel off for a second or more, during which a load would have
skipped the sibling."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tensorgate.app import Servers
from tensorgate.settings import Settings
from tensorgate.workers.role import WorkerRole
from tensorgate.workers.siblings import Siblings
from tensorgate_protos import grpc_service_pb2 as pb


async def _call_before_and_after_the_sibling_starts(tmp_path: Path) -> tuple[int, int]:
    repository = tmp_path / "repo"
    repository.mkdir()
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    settings = Settings(
        model_repository=[repository],
        host="127.0.0.1",
        grpc_port=0,
        http_port=-1,
        metrics_port=-1,
        model_control_mode="explicit",
    )
    caller = Siblings(WorkerRole(0, 2, sockets))
    request = pb.RepositoryIndexRequest()
    before = await caller.gather("RepositoryIndex", request)  # nobody listens yet
    sibling = Servers(settings, role=WorkerRole(1, 2, sockets))
    await sibling.start_private()
    try:
        after = await asyncio.wait_for(caller.gather("RepositoryIndex", request), 5)
    finally:
        await sibling.stop(0)
    return len(before), len(after)


def test_a_sibling_that_starts_after_a_failed_call_is_reached_at_once(tmp_path: Path) -> None:
    assert asyncio.run(_call_before_and_after_the_sibling_starts(tmp_path)) == (0, 1)
