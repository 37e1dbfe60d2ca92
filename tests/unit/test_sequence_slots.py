"""The sequence batcher's slot policy, without threads or an event loop."""

from __future__ import annotations

import pytest
from tensorgate.batching.sequences import BatchWait, SequenceRequest, SequenceSlots
from tensorgate.errors import InvalidArgument, ResourceExhausted

MS = 1_000_000


def slots(instances: int = 1, per_instance: int = 2, backlog: int = 2) -> SequenceSlots:
    return SequenceSlots("m", instances, per_instance, per_instance, 100 * MS, backlog, True)


def req(start: bool = False, end: bool = False, at: int = 0) -> SequenceRequest:
    return SequenceRequest(start, end, at)


def test_sequences_take_the_lowest_free_slot_and_free_it_at_their_end() -> None:
    policy = slots()
    a = policy.add(1, req(start=True), 0)
    b = policy.add(2, req(start=True), 0)
    assert (a.slot, b.slot) == (0, 1)
    policy.taken([a])
    policy.finished([a], 1)
    policy.add(1, req(end=True), 2)
    policy.taken([a])
    policy.finished([a], 3)
    c = policy.add(3, req(start=True), 4)
    assert c.slot == 0 and 1 not in policy.sequences


def test_a_batch_takes_one_request_per_sequence_in_slot_order() -> None:
    policy = slots()
    b = policy.add(2, req(start=True), 0)
    a = policy.add(1, req(start=True), 1)
    policy.add(1, req(), 2)
    batch = policy.ready(0)
    assert batch == [b, a]  # b started first and holds slot 0
    policy.taken(batch)
    assert policy.ready(0) == []  # a's second request waits for its first
    policy.finished(batch, 3)
    assert policy.ready(0) == [a]


def test_sequences_spread_over_instances() -> None:
    policy = slots(instances=2, per_instance=1)
    a = policy.add(1, req(start=True), 0)
    b = policy.add(2, req(start=True), 0)
    assert {a.instance, b.instance} == {0, 1}


def test_a_sequence_without_a_free_slot_waits_in_the_backlog_then_gets_one() -> None:
    policy = slots(per_instance=1)
    a = policy.add(1, req(start=True, end=True), 0)
    waiting = policy.add(2, req(start=True), 0)
    assert waiting.instance == -1 and policy.ready(0) == [a]
    policy.taken([a])
    assert policy.finished([a], 1) == [0]
    assert waiting.instance == 0 and policy.ready(0) == [waiting]


def test_a_full_backlog_refuses_new_sequences() -> None:
    policy = slots(per_instance=1, backlog=1)
    policy.add(1, req(start=True), 0)
    policy.add(2, req(start=True), 0)
    with pytest.raises(ResourceExhausted):
        policy.add(3, req(start=True), 0)


@pytest.mark.parametrize(
    ("corrid", "request_", "reason"),
    [
        (1, req(start=True), "already running"),
        (5, req(), "has not started"),
    ],
)
def test_requests_that_break_a_sequence_are_invalid(
    corrid: int, request_: SequenceRequest, reason: str
) -> None:
    policy = slots()
    policy.add(1, req(start=True), 0)
    with pytest.raises(InvalidArgument, match=reason):
        policy.add(corrid, request_, 0)


def test_no_request_is_taken_after_a_sequence_ends() -> None:
    policy = slots()
    policy.add(1, req(start=True, end=True), 0)
    with pytest.raises(InvalidArgument, match="has ended"):
        policy.add(1, req(), 0)


def test_an_idle_sequence_expires_and_its_slot_goes_to_the_backlog() -> None:
    policy = slots(per_instance=1)
    a = policy.add(1, req(start=True), 0)
    policy.taken([a])
    policy.finished([a], 0)
    waiting = policy.add(2, req(start=True), 1)
    assert policy.next_expiry_ns() == 100 * MS
    assert policy.expire(99 * MS) == []
    assert policy.expire(100 * MS) == [0]
    assert 1 not in policy.sequences and waiting.instance == 0


def test_a_sequence_with_work_queued_never_expires() -> None:
    policy = slots()
    a = policy.add(1, req(start=True), 0)
    policy.taken([a])
    assert policy.expire(10_000 * MS) == [] and 1 in policy.sequences


def test_oldest_batches_take_the_longest_waiting_requests_first() -> None:
    policy = SequenceSlots("m", 1, 4, 2, 100 * MS, 4, direct=False)
    a = policy.add(1, req(start=True, at=30), 30)
    b = policy.add(2, req(start=True, at=10), 10)
    c = policy.add(3, req(start=True, at=20), 20)
    assert {a.slot, b.slot, c.slot} == {0, 1, 2}
    assert policy.ready(0) == [b, c]  # the two oldest, up to max_batch 2


def test_a_running_request_whose_caller_left_stays_until_its_batch_finishes() -> None:
    policy = slots()
    first = req(start=True)
    a = policy.add(1, first, 0)
    second = req()
    policy.add(1, second, 1)
    policy.taken([a])
    policy.drop(a, first)  # its caller left while it ran
    assert list(a.pending) == [first, second]
    policy.finished([a], 2)
    assert list(a.pending) == [second]


# Waiting for more sequences --------------------------------------------------------------


def test_direct_waits_for_the_slot_utilization_until_the_delay_passes() -> None:
    wait = BatchWait(10 * MS, min_utilization=0.5)
    policy = SequenceSlots("m", 1, 4, 4, 100 * MS, 2, True, wait)
    a = policy.add(1, req(start=True, at=0), 0)
    assert policy.due([a], 3 * MS) == (0, 7 * MS)  # 1 of 4 slots: wait from a's arrival
    assert policy.due([a], 10 * MS) == (1, 0)  # the delay has passed
    b = policy.add(2, req(start=True, at=4 * MS), 4 * MS)
    assert policy.due([a, b], 4 * MS) == (2, 0)  # 2 of 4 slots: half, it goes


def test_direct_without_a_minimum_utilization_never_waits() -> None:
    policy = SequenceSlots("m", 1, 4, 4, 100 * MS, 2, True, BatchWait(10 * MS))
    a = policy.add(1, req(start=True), 0)
    assert policy.due([a], 0) == (1, 0)


def test_oldest_sends_a_preferred_size_at_once_and_waits_below_it() -> None:
    wait = BatchWait(10 * MS, preferred=(2, 3))
    policy = SequenceSlots("m", 1, 8, 4, 100 * MS, 2, False, wait)
    a = policy.add(1, req(start=True, at=0), 0)
    assert policy.due([a], 1 * MS) == (0, 9 * MS)
    b = policy.add(2, req(start=True, at=1 * MS), 1 * MS)
    c = policy.add(3, req(start=True, at=2 * MS), 2 * MS)
    d = policy.add(4, req(start=True, at=2 * MS), 2 * MS)
    assert policy.due([a, b], 2 * MS) == (2, 0)
    assert policy.due([a, b, c, d], 2 * MS) == (4, 0)  # the maximum batch goes whole
    assert policy.due([a, b, c], 2 * MS) == (3, 0)


def test_a_rescheduled_request_stays_at_its_sequences_head_and_keeps_its_slot() -> None:
    policy = slots(per_instance=1)
    a = policy.add(1, req(start=True, end=True), 0)
    waiting = policy.add(2, req(start=True, end=True), 0)
    assert waiting.instance == -1  # the only slot is a's
    for now in (1, 2):
        policy.taken([a])
        assert policy.finished([a], now, again=[a]) == []
        assert policy.ready(0) == [a] and a.last_ns == now
    policy.taken([a])
    assert policy.finished([a], 3) == [0]  # released at last: the waiting one takes the slot
    assert 1 not in policy.sequences and waiting.slot == 0


def test_a_dropped_request_that_was_a_whole_sequence_frees_its_slot_at_once() -> None:
    policy = slots(per_instance=1)
    only = req(start=True, end=True)
    a = policy.add(1, only, 0)
    waiting = policy.add(2, req(start=True), 0)
    assert policy.drop(a, only) == [0]
    assert 1 not in policy.sequences and waiting.instance == 0
    # A dropped END of a longer sequence only reopens it, as before.
    end = req(end=True)
    policy.add(2, end, 1)
    assert policy.drop(waiting, end) == [] and not waiting.ended
