"""The batching policy on its own: batch formation, priorities, timeouts, queue limits."""

from __future__ import annotations

import pytest
from tensorgate.batching.policy import (
    DELAYED,
    BatchingPolicy,
    BatchQueue,
    Pending,
    QueuePolicy,
)
from tensorgate.errors import InvalidArgument, ModelLoadError, ResourceExhausted
from tensorgate.repository.config import parse_config

US = 1000


def _policy(text: str, cap: int = 64) -> BatchingPolicy:
    return BatchingPolicy.from_config(parse_config(text), cap)


def _item(
    rows: int = 1, key: object = "a", level: int = 0, at: int = 0, timeout: int = 0
) -> Pending:
    return Pending(rows, key, level, at, timeout)


def _rows(batch: list[Pending]) -> list[int]:
    return [p.rows for p in batch]


def test_batch_counts_rows_not_requests() -> None:
    queue = BatchQueue(_policy("max_batch_size: 8 dynamic_batching {}"))
    for rows in (3, 4, 2):
        queue.push(_item(rows))
    plan = queue.plan(0)
    assert _rows(plan.batch) == [3, 4]  # 3 + 4 + 2 would exceed 8 rows


def test_requests_with_different_shapes_never_share_a_batch() -> None:
    queue = BatchQueue(_policy("max_batch_size: 8 dynamic_batching {}"))
    queue.push(_item(key="3x4"))
    queue.push(_item(key="3x4"))
    queue.push(_item(key="5x4"))
    queue.push(_item(key="3x4"))
    first = queue.plan(0).batch
    assert [p.key for p in first] == ["3x4", "3x4"]  # stops at the first other shape
    queue.take(first)
    assert [p.key for p in queue.plan(0).batch] == ["5x4", "3x4"][:1]


@pytest.mark.parametrize(
    ("inputs", "vary"),
    [
        ('{ name: "A" data_type: TYPE_FP32 dims: [4] }', False),
        ('{ name: "A" data_type: TYPE_FP32 dims: [-1] }', True),
        ('{ name: "A" data_type: TYPE_FP32 dims: [4] optional: true }', True),
    ],
    ids=["static-dims", "variable-dim", "optional-input"],
)
def test_only_variable_dims_or_optional_inputs_need_a_shape_key(inputs: str, vary: bool) -> None:
    policy = _policy(f"max_batch_size: 8 input [{inputs}] dynamic_batching {{}}")
    assert policy.shapes_vary is vary


def test_delay_holds_a_small_batch_until_the_oldest_request_has_waited() -> None:
    queue = BatchQueue(
        _policy("max_batch_size: 8 dynamic_batching { max_queue_delay_microseconds: 500 }")
    )
    queue.push(_item(at=0))
    queue.push(_item(at=100 * US))
    plan = queue.plan(200 * US)
    assert plan.batch == [] and plan.wait_until_ns == 500 * US
    assert _rows(queue.plan(500 * US).batch) == [1, 1]


def test_full_batch_goes_before_the_delay() -> None:
    queue = BatchQueue(
        _policy("max_batch_size: 4 dynamic_batching { max_queue_delay_microseconds: 500000 }")
    )
    for _ in range(5):
        queue.push(_item())
    assert _rows(queue.plan(0).batch) == [1, 1, 1, 1]


def test_largest_reachable_preferred_size_goes_at_once() -> None:
    queue = BatchQueue(
        _policy(
            "max_batch_size: 16 dynamic_batching { preferred_batch_size: [2, 4] "
            "max_queue_delay_microseconds: 500000 }"
        )
    )
    for _ in range(3):
        queue.push(_item())
    assert _rows(queue.plan(0).batch) == [1, 1]  # 2 is preferred, 3 is not
    queue.push(_item())
    assert _rows(queue.plan(0).batch) == [1, 1, 1, 1]


def test_without_preferred_size_a_partial_batch_waits_for_the_delay() -> None:
    queue = BatchQueue(
        _policy(
            "max_batch_size: 16 dynamic_batching { preferred_batch_size: [4] "
            "max_queue_delay_microseconds: 1000 }"
        )
    )
    for _ in range(3):
        queue.push(_item())
    assert queue.plan(0).batch == []
    assert _rows(queue.plan(1000 * US).batch) == [1, 1, 1]


def test_model_without_dynamic_batching_runs_one_request_at_a_time() -> None:
    queue = BatchQueue(_policy("max_batch_size: 8"))
    queue.push(_item(2))
    queue.push(_item(2))
    assert _rows(queue.plan(0).batch) == [2]


def test_higher_priority_level_is_batched_first() -> None:
    queue = BatchQueue(
        _policy(
            "max_batch_size: 2 dynamic_batching { priority_levels: 3 default_priority_level: 2 }"
        )
    )
    policy = queue.policy
    low, default, high = (_item(level=policy.level_for(p)) for p in (3, 0, 1))
    for item in (low, default, high):
        queue.push(item)
    assert queue.plan(0).batch == [high, default]


def test_priority_outside_the_levels_is_invalid() -> None:
    policy = _policy(
        "max_batch_size: 2 dynamic_batching { priority_levels: 2 default_priority_level: 1 }"
    )
    with pytest.raises(InvalidArgument, match="priority 3 is out of range"):
        policy.level_for(3)
    single = _policy("max_batch_size: 2 dynamic_batching {}")
    assert single.level_for(7) == 0  # no levels configured: priorities are ignored


def test_full_level_rejects_at_once_and_others_still_accept() -> None:
    queue = BatchQueue(
        _policy(
            "max_batch_size: 2 dynamic_batching { priority_levels: 2 default_priority_level: 1 "
            "priority_queue_policy { key: 2 value { max_queue_size: 1 } } }"
        )
    )
    queue.push(_item(level=1))
    with pytest.raises(ResourceExhausted, match="queue is full"):
        queue.push(_item(level=1))
    queue.push(_item(level=0))
    assert queue.live == 2


def test_server_cap_bounds_a_queue_the_config_leaves_unlimited() -> None:
    queue = BatchQueue(_policy("max_batch_size: 2 dynamic_batching {}", cap=2))
    queue.push(_item())
    queue.push(_item())
    with pytest.raises(ResourceExhausted):
        queue.push(_item())


def test_reject_timeout_removes_the_request() -> None:
    queue = BatchQueue(_policy("max_batch_size: 2 dynamic_batching {}"))
    late = _item(at=0, timeout=100)
    queue.push(late)
    assert queue.expire(99) == []
    assert queue.expire(100) == [late]
    assert queue.live == 0 and queue.plan(100).batch == []


def test_delay_timeout_moves_the_request_behind_its_level() -> None:
    queue = BatchQueue(
        _policy(
            "max_batch_size: 1 dynamic_batching { default_queue_policy "
            "{ timeout_action: DELAY default_timeout_microseconds: 1 } }"
        )
    )
    late = _item(at=0, timeout=100)
    fresh = _item(at=50)
    queue.push(late)
    queue.push(fresh)
    assert queue.expire(100) == []
    assert late.state == DELAYED
    assert queue.plan(100).batch == [fresh]
    queue.take([fresh])
    assert queue.plan(100).batch == [late]


def test_request_may_only_shorten_the_default_timeout() -> None:
    policy = QueuePolicy(8, default_timeout_ns=1000 * US, allow_timeout_override=True)
    assert policy.timeout_ns(10) == 10 * US
    assert policy.timeout_ns(5000) == 1000 * US
    assert QueuePolicy(8, default_timeout_ns=1000 * US).timeout_ns(10) == 1000 * US
    assert QueuePolicy(8, allow_timeout_override=True).timeout_ns(10) == 10 * US


def test_removed_request_is_skipped_and_frees_its_place() -> None:
    queue = BatchQueue(_policy("max_batch_size: 4 dynamic_batching {}", cap=2))
    gone, kept = _item(), _item()
    queue.push(gone)
    queue.push(kept)
    assert queue.remove(gone)
    queue.push(_item())
    assert queue.plan(0).batch[0] is kept


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch_size: 4 dynamic_batching { preferred_batch_size: 8 }", "preferred"),
        (
            "max_batch_size: 4 dynamic_batching { priority_levels: 2 default_priority_level: 3 }",
            "default_priority_level",
        ),
        (
            "max_batch_size: 4 dynamic_batching { priority_levels: 2 default_priority_level: 1 "
            "priority_queue_policy { key: 5 value {} } }",
            "level 5",
        ),
    ],
)
def test_inconsistent_batching_config_fails_the_load(text: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        _policy(text)
