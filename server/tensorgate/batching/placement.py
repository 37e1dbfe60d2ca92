"""Execution `auto`: whether a model's next batch runs on the event loop or in a thread.

Batches run on the loop while the recent ones held it briefly: while the p99 of the last
thousand batches' times on the loop stays under the bound (`--inline-max-us`), that is, no
more than ten of them went over it. The batch past that sends the model's batches to its
instance threads at once, and so does a single batch ten times over the bound: a model far
too slow for the loop holds it once. The window is long because a micro-model's batches on
a busy machine have a tail of their own (add_sub over HTTP at c=8 on two cores: 93 µs p50,
166 µs p99, 217 µs p99.9 on the loop, its CPU time as long as its wall time): judged over a
hundred batches, a few slow ones close together would send it to its threads every few
seconds.

Threaded batches come back when their own CPU time has a p99 under the bound over a whole
window: their CPU time, not their wall time, which includes the wait for the GIL that a
busy loop stretches past any bound. A model whose batches wait rather than compute (a
runtime with threads of its own) looks cheap by its CPU time and falls back as soon as it
is back, so each fall-back doubles how many threaded batches must pass before the next try.

Pure and synchronous, with times passed in, so that every rule is testable alone.
"""

from __future__ import annotations

from collections import deque

WINDOW = 1024  # batches a p99 is taken over
TOLERATED = WINDOW // 100  # batches of a window that may be over the bound
FAR_OVER = 10  # a batch this many times over the bound leaves the loop by itself
MAX_THREADED_BEFORE_RETRY = 65_536


class AutoPlacement:
    """Where `auto` runs the next batch: `inline` says the loop."""

    def __init__(self, bound_ns: int) -> None:
        self.bound_ns = bound_ns
        self.inline = True
        self._samples: deque[int] = deque(maxlen=WINDOW)
        self._over = 0  # samples in the window above the bound
        self._threaded = 0  # batches run in threads since the last fall-back
        self._retry_after = WINDOW // 2  # doubled at each fall-back: one window the first time

    def ran_inline(self, took_ns: int) -> bool:
        """Record a batch's time on the loop; True when it sent batches to the threads."""
        self._add(took_ns)
        if took_ns <= self.bound_ns * FAR_OVER and not self._p99_over():
            return False
        self.inline = False
        self._restart()
        self._threaded = 0
        self._retry_after = min(self._retry_after * 2, MAX_THREADED_BEFORE_RETRY)
        return True

    def ran_threaded(self, cpu_ns: int) -> bool:
        """Record a threaded batch's CPU time; True when it sent batches back to the loop."""
        self._add(cpu_ns)
        self._threaded += 1
        if self._threaded < self._retry_after or len(self._samples) < WINDOW:
            return False
        if self._p99_over():
            return False
        self.inline = True
        self._restart()
        return True

    def _add(self, value_ns: int) -> None:
        samples = self._samples
        if len(samples) == WINDOW and samples[0] > self.bound_ns:
            self._over -= 1  # about to leave the window
        samples.append(value_ns)
        if value_ns > self.bound_ns:
            self._over += 1

    def _p99_over(self) -> bool:
        return self._over > TOLERATED

    def _restart(self) -> None:
        self._samples.clear()
        self._over = 0
