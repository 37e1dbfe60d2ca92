"""The paged KV cache's bookkeeping and the iteration-level scheduler, without a model."""

from __future__ import annotations

import pytest
from tensorgate.errors import InvalidArgument, ResourceExhausted
from tensorgate.generation.kv_blocks import BlockPool, KVCacheManager, block_hashes
from tensorgate.generation.sampling_params import SamplingParams
from tensorgate.generation.scheduler import Scheduler, Sequence, Status


def manager(blocks: int = 8, size: int = 4, prefix: bool = True) -> KVCacheManager:
    return KVCacheManager(BlockPool(blocks, size), prefix)


def seq(name: str, prompt: list[int], max_tokens: int = 4) -> Sequence:
    return Sequence(name, prompt, SamplingParams(max_tokens=max_tokens, temperature=0))


def test_a_block_hash_depends_on_everything_before_it() -> None:
    a = block_hashes([1, 2, 3, 4, 5, 6, 7, 8], 4)
    b = block_hashes([9, 2, 3, 4, 5, 6, 7, 8], 4)
    assert len(a) == 2 and a[0] != b[0] and a[1] != b[1]
    assert block_hashes([1, 2, 3], 4) == []


def test_a_new_prompt_reuses_the_cached_blocks_of_a_finished_one() -> None:
    kv = manager()
    first = list(range(1, 10))  # two full blocks and one token
    assert kv.allocate("a", len(first))
    kv.cache_full_blocks("a", first, len(first))
    kept = kv.block_ids("a")[:2]
    kv.free("a")
    prefix = kv.cached_prefix([*first[:8], 42, 43])
    assert [b.id for b in prefix] == kept
    assert kv.allocate("b", 10, prefix)
    assert kv.block_ids("b")[:2] == kept
    assert kv.stats.hit == 8


def test_the_last_token_is_never_taken_from_the_cache() -> None:
    kv = manager()
    tokens = list(range(8))
    kv.allocate("a", 8)
    kv.cache_full_blocks("a", tokens, 8)
    assert len(kv.cached_prefix(tokens)) == 1  # the second block holds the last token


def test_allocation_that_does_not_fit_changes_nothing() -> None:
    kv = manager(blocks=2)
    assert kv.allocate("a", 8)
    assert not kv.allocate("b", 1)
    assert "b" not in kv.tables and kv.pool.num_free == 0


def test_freed_cached_blocks_are_evicted_oldest_first() -> None:
    kv = manager(blocks=2, size=2)
    kv.allocate("a", 2)
    kv.cache_full_blocks("a", [1, 2], 2)
    kv.free("a")
    kv.allocate("b", 2)  # takes the free, uncached block first
    assert kv.pool.cached
    kv.allocate("c", 2)  # now the cached one must go
    assert not kv.pool.cached


def test_a_long_prompt_is_prefilled_in_chunks_within_the_token_budget() -> None:
    scheduler = Scheduler(manager(blocks=16), max_tokens_per_step=5)
    sequence = seq("a", list(range(12)))
    scheduler.add(sequence)
    counts = []
    for _ in range(3):
        plan = scheduler.schedule()
        counts.append([c.count for c in plan.chunks])
        scheduler.update(plan, {"a": 99})
    assert counts == [[5], [5], [2]]
    assert sequence.output == [99]  # sampled only once the whole prompt was computed


def test_decoding_sequences_come_before_new_prompts() -> None:
    scheduler = Scheduler(manager(blocks=16), max_tokens_per_step=4)
    running = seq("a", [1, 2, 3])
    scheduler.add(running)
    scheduler.update(scheduler.schedule(), {"a": 7})
    scheduler.add(seq("b", list(range(10))))
    plan = scheduler.schedule()
    assert [(c.sequence.id, c.count) for c in plan.chunks] == [("a", 1), ("b", 3)]


def test_without_blocks_the_newest_sequence_is_preempted_and_recomputed_later() -> None:
    scheduler = Scheduler(manager(blocks=3, size=2), max_tokens_per_step=16)
    old, new = seq("old", [1, 2, 3], max_tokens=3), seq("new", [4, 5], max_tokens=3)
    scheduler.add(old)
    scheduler.add(new)
    plan = scheduler.schedule()  # old takes 2 blocks, new 1
    scheduler.update(plan, {"old": 10, "new": 11})
    plan = scheduler.schedule()  # both need a new block; only the oldest keeps going
    assert [c.sequence.id for c in plan.chunks] == ["old"]
    assert plan.preempted == [new] and new.status is Status.WAITING and new.computed == 0
    scheduler.update(plan, {"old": 12})
    while scheduler.has_work:
        plan = scheduler.schedule()
        scheduler.update(plan, {c.sequence.id: 13 for c in plan.chunks})
    assert len(old.output) == 3 and len(new.output) == 3


def test_finished_and_aborted_sequences_free_their_blocks() -> None:
    kv = manager(blocks=8)
    scheduler = Scheduler(kv)
    a, b = seq("a", [1, 2, 3], max_tokens=1), seq("b", [4, 5, 6])
    scheduler.add(a)
    scheduler.add(b)
    finished = scheduler.update(scheduler.schedule(), {"a": 1, "b": 2})
    assert finished == [a] and a.finish_reason == "length"
    scheduler.abort(b)
    assert b.finish_reason == "abort" and kv.usage == 0.0 and not scheduler.has_work


def test_a_stop_token_ends_a_sequence() -> None:
    scheduler = Scheduler(manager())
    sequence = Sequence("a", [1, 2], SamplingParams(max_tokens=9, stop_token_ids=(5,)))
    scheduler.add(sequence)
    assert scheduler.update(scheduler.schedule(), {"a": 5}) == [sequence]
    assert sequence.finish_reason == "stop"


def test_requests_that_cannot_fit_are_refused_at_once() -> None:
    scheduler = Scheduler(manager(blocks=4, size=4), max_model_len=12, max_waiting=1)
    with pytest.raises(InvalidArgument, match="exceeds the context"):
        scheduler.add(seq("long", list(range(10)), max_tokens=4))
    with pytest.raises(InvalidArgument, match="empty"):
        scheduler.add(seq("empty", []))
    scheduler.add(seq("a", [1]))
    with pytest.raises(ResourceExhausted):
        scheduler.add(seq("b", [1]))


@pytest.mark.parametrize(
    "params", [{"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"top_k": -1}]
)
def test_bad_sampling_parameters_are_invalid(params: dict[str, float]) -> None:
    with pytest.raises(InvalidArgument):
        SamplingParams(**params)  # type: ignore[arg-type]


def test_static_batching_admits_no_one_while_a_batch_runs() -> None:
    scheduler = Scheduler(manager(blocks=16), static=True)
    scheduler.add(seq("a", [1, 2], max_tokens=2))
    scheduler.update(scheduler.schedule(), {"a": 3})
    scheduler.add(seq("b", [4, 5]))
    plan = scheduler.schedule()
    assert [c.sequence.id for c in plan.chunks] == ["a"]
    scheduler.update(plan, {"a": 3})  # a finishes
    assert [c.sequence.id for c in scheduler.schedule().chunks] == ["b"]
