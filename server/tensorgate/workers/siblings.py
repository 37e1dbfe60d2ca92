"""A worker's calls to its siblings over their private sockets, for the answers that must
cover the whole server: statistics summed, the repository index merged, and repository
control and log settings applied by every worker before the caller hears back.

A sibling that does not answer (it is restarting) is left out: its statistics died with it,
and a restarted worker loads what its siblings have loaded when it starts.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from tensorgate_protos import grpc_service_pb2 as pb
from tensorgate_protos import grpc_service_pb2_grpc as pb_grpc

from tensorgate.errors import TensorgateError
from tensorgate.protocol.model_stats import INFERENCE_DURATIONS
from tensorgate.workers.role import WorkerRole

log = logging.getLogger(__name__)

# How long a sibling may take: loading a model is the slow case.
CALL_TIMEOUT_S = 300.0


class Siblings:
    """Async stubs to every other worker, made on first use (on the worker's loop)."""

    def __init__(self, role: WorkerRole) -> None:
        self.role = role
        self._stubs: dict[int, pb_grpc.GRPCInferenceServiceStub] = {}
        self._channels: dict[int, grpc.aio.Channel] = {}

    def _stub(self, index: int) -> pb_grpc.GRPCInferenceServiceStub:
        stub = self._stubs.get(index)
        if stub is None:
            channel = self.role.channel(index)
            self._channels[index] = channel
            stub = self._stubs[index] = pb_grpc.GRPCInferenceServiceStub(channel)
        return stub

    async def _forget(self, index: int) -> None:
        """Drop a sibling's channel: after a failed connection a channel fails calls at once
        until its backoff ends, though the sibling may be up by now; a new one tries now."""
        self._stubs.pop(index, None)
        channel = self._channels.pop(index, None)
        if channel is not None:
            await channel.close()

    async def gather(self, method: str, request: Any) -> list[Any]:
        """Every reachable sibling's answer to `method(request)`; an error a sibling
        answers (not unreachable) is raised as it came."""

        async def one(index: int) -> Any:
            for attempt in (1, 2):
                try:
                    call = getattr(self._stub(index), method)
                    return await call(request, timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise SiblingError(index, exc) from None
                    # A sibling that started since the channel last failed is reached by a
                    # new channel; one that is down fails this second try as fast.
                    await self._forget(index)
                    if attempt == 2:
                        log.warning("worker %d did not answer %s: %s", index, method, exc.details())
            return None

        answers = await asyncio.gather(*(one(i) for i in self.role.siblings))
        return [a for a in answers if a is not None]


class SiblingError(TensorgateError):
    """A sibling refused what this worker did: the client gets the sibling's status."""

    def __init__(self, index: int, exc: grpc.aio.AioRpcError) -> None:
        from tensorgate.errors import ErrorKind

        kinds = {k.grpc_status_name: k for k in ErrorKind}
        kind = kinds.get(exc.code().name, ErrorKind.INTERNAL)
        super().__init__(f"worker {index}: {exc.details()}", kind)


def merge_statistics(responses: list[pb.ModelStatisticsResponse]) -> pb.ModelStatisticsResponse:
    """Every worker's ModelStatistics summed per model version (last_inference: the latest)."""
    merged = pb.ModelStatisticsResponse()
    by_key: dict[tuple[str, str], pb.ModelStatistics] = {}
    for response in responses:
        for stats in response.model_stats:
            key = (stats.name, stats.version)
            target = by_key.get(key)
            if target is None:
                target = by_key[key] = merged.model_stats.add()
                target.CopyFrom(stats)
                continue
            target.last_inference = max(target.last_inference, stats.last_inference)
            target.inference_count += stats.inference_count
            target.execution_count += stats.execution_count
            for field in INFERENCE_DURATIONS:
                _add(getattr(target.inference_stats, field), getattr(stats.inference_stats, field))
            sizes = {b.batch_size: b for b in target.batch_stats}
            for batch in stats.batch_stats:
                if batch.batch_size not in sizes:
                    target.batch_stats.add().CopyFrom(batch)
                    continue
                into = sizes[batch.batch_size]
                for field in ("compute_input", "compute_infer", "compute_output"):
                    _add(getattr(into, field), getattr(batch, field))
    return merged


def _add(target: pb.StatisticDuration, other: pb.StatisticDuration) -> None:
    target.count += other.count
    target.ns += other.ns


def merge_index(responses: list[pb.RepositoryIndexResponse]) -> pb.RepositoryIndexResponse:
    """One index for the server: a model version is READY only if every worker has it
    ready; otherwise the first other state seen, its reason naming how many disagree."""
    states: dict[tuple[str, str], list[pb.RepositoryIndexResponse.ModelIndex]] = {}
    for response in responses:
        for model in response.models:
            states.setdefault((model.name, model.version), []).append(model)
    merged = pb.RepositoryIndexResponse()
    for key in sorted(states):
        entries = states[key]
        chosen = next((m for m in entries if m.state != "READY"), entries[0])
        target = merged.models.add()
        target.CopyFrom(chosen)
        if len(entries) < len(responses) or chosen.state != entries[0].state:
            ready = sum(m.state == "READY" for m in entries)
            target.reason = (
                f"{chosen.reason or chosen.state} (ready in {ready} of {len(responses)} workers)"
            )
    return merged
