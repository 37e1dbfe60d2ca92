"""Execution `auto`'s choice between the event loop and the instance threads."""

from __future__ import annotations

from tensorgate.batching.placement import FAR_OVER, TOLERATED, WINDOW, AutoPlacement

BOUND = 100_000  # ns
FAST, SLOW, FAR = 20_000, 150_000, BOUND * FAR_OVER + 1


def test_a_batch_far_over_the_bound_leaves_the_loop_at_once() -> None:
    auto = AutoPlacement(BOUND)
    assert not any(auto.ran_inline(FAST) for _ in range(50))
    assert auto.ran_inline(FAR)
    assert not auto.inline


def test_a_cold_first_batch_does_not_send_a_fast_model_to_its_threads() -> None:
    auto = AutoPlacement(BOUND)
    assert not auto.ran_inline(BOUND * FAR_OVER)  # over the bound, not far over it
    assert not any(auto.ran_inline(FAST) for _ in range(WINDOW))
    assert auto.inline


def test_a_model_slow_on_every_batch_leaves_the_loop_past_the_tolerated_few() -> None:
    auto = AutoPlacement(BOUND)
    assert not any(auto.ran_inline(SLOW) for _ in range(TOLERATED))
    assert auto.ran_inline(SLOW)
    assert not auto.inline


def test_a_full_window_tolerates_one_slow_batch_in_a_hundred_and_leaves_at_the_next() -> None:
    auto = AutoPlacement(BOUND)
    for _ in range(WINDOW):
        assert not auto.ran_inline(FAST)
    for _ in range(TOLERATED):  # one in a hundred over the bound: the p99 is still under
        assert not auto.ran_inline(SLOW)
    assert auto.inline
    assert auto.ran_inline(SLOW)
    assert not auto.inline


def test_slow_batches_leave_the_window_after_a_window_of_batches() -> None:
    auto = AutoPlacement(BOUND)
    for _ in range(WINDOW):
        auto.ran_inline(FAST)
    for _ in range(TOLERATED):
        auto.ran_inline(SLOW)
    for _ in range(WINDOW):
        assert not auto.ran_inline(FAST)
    for _ in range(TOLERATED):  # the first ones are out of the window by now
        assert not auto.ran_inline(SLOW)
    assert auto.inline


def _leave(auto: AutoPlacement) -> None:
    for _ in range(WINDOW):
        auto.ran_inline(FAST)
    for _ in range(TOLERATED):
        auto.ran_inline(SLOW)
    assert auto.ran_inline(SLOW)


def test_threaded_batches_come_back_after_a_window_of_little_cpu_time() -> None:
    auto = AutoPlacement(BOUND)
    _leave(auto)
    assert not any(auto.ran_threaded(FAST) for _ in range(WINDOW - 1))
    assert auto.ran_threaded(FAST)
    assert auto.inline


def test_threaded_batches_with_a_slow_p99_stay_in_threads() -> None:
    auto = AutoPlacement(BOUND)
    _leave(auto)
    for index in range(10 * WINDOW):
        assert not auto.ran_threaded(SLOW if index % 50 == 0 else FAST)
    assert not auto.inline


def test_each_fall_back_doubles_the_threaded_batches_before_the_next_try() -> None:
    auto = AutoPlacement(BOUND)
    assert auto.ran_inline(FAR)  # the first batch, far too slow for the loop
    waits = []
    for _ in range(3):
        count = 1
        while not auto.ran_threaded(FAST):
            count += 1
        waits.append(count)
        assert auto.ran_inline(FAR)  # back on the loop, and far too slow there again
    assert waits == [WINDOW, 2 * WINDOW, 4 * WINDOW]
