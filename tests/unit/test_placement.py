"""Execution `auto`'s choice between the event loop and the instance threads."""

from __future__ import annotations

from tensorgate.batching.placement import WINDOW, AutoPlacement

BOUND = 100_000  # ns
FAST, SLOW = 20_000, 150_000


def test_one_slow_batch_among_the_first_hundred_leaves_the_loop() -> None:
    auto = AutoPlacement(BOUND)
    assert not any(auto.ran_inline(FAST) for _ in range(50))
    assert auto.ran_inline(SLOW)
    assert not auto.inline


def test_a_full_window_tolerates_one_slow_batch_and_leaves_at_the_second() -> None:
    auto = AutoPlacement(BOUND)
    for _ in range(WINDOW):
        assert not auto.ran_inline(FAST)
    assert not auto.ran_inline(SLOW)  # one over the bound in the window: p99 still under
    assert auto.inline
    assert auto.ran_inline(SLOW)
    assert not auto.inline


def test_a_slow_batch_leaves_the_window_after_a_window_of_batches() -> None:
    auto = AutoPlacement(BOUND)
    for _ in range(WINDOW):
        auto.ran_inline(FAST)
    auto.ran_inline(SLOW)
    for _ in range(WINDOW):
        assert not auto.ran_inline(FAST)
    assert not auto.ran_inline(SLOW)  # the first one is out of the window by now
    assert auto.inline


def _leave(auto: AutoPlacement) -> None:
    for _ in range(WINDOW):
        auto.ran_inline(FAST)
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
    assert auto.ran_inline(SLOW)  # the first batch, e.g. a cold first run
    waits = []
    for _ in range(3):
        count = 1
        while not auto.ran_threaded(FAST):
            count += 1
        waits.append(count)
        assert auto.ran_inline(SLOW)  # back on the loop, and too slow there again
    assert waits == [WINDOW, 2 * WINDOW, 4 * WINDOW]
