"""Hybrid logical clock (HLC) for last-writer-wins ordering.

A timestamp is ``(wall_ms, counter)``; ties between replicas are broken by replica id at
the comparison site (:class:`Stamp`). The clock is monotonic even when the wall clock steps
back: it never issues a timestamp below one it issued or observed. The physical time source
is injectable so the simulation can run on virtual time and chaos tests can skew a replica.

Imports nothing from the project.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple


def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch from the system clock."""
    return time.time_ns() // 1_000_000


class Stamp(NamedTuple):
    """A total order on writes: HLC first, replica id breaks ties.

    Tuples compare field by field, so ``max(stamps)`` is the last writer.
    """

    wall_ms: int
    counter: int
    replica_id: str

    def __str__(self) -> str:
        return f"{self.wall_ms}.{self.counter}@{self.replica_id}"


class HybridClock:
    """Issues strictly increasing ``(wall_ms, counter)`` pairs.

    ``tick`` is used for a local write; ``observe`` folds in a timestamp seen in the
    document so that a write made after observing a value always orders after it.

    Args:
        now_ms: physical time source in milliseconds; defaults to the system clock.
        offset_ms: added to every physical reading (chaos: clock skew on one replica).
    """

    __slots__ = ("_last", "_lock", "_now_ms", "offset_ms")

    def __init__(self, now_ms: Callable[[], int] = wall_clock_ms, offset_ms: int = 0) -> None:
        self._now_ms = now_ms
        self.offset_ms = offset_ms
        # One tuple, replaced whole: a reader without the lock sees a pair that was issued.
        self._last = (0, 0)
        self._lock = threading.Lock()

    def physical_ms(self) -> int:
        """The (possibly skewed) physical time the clock reads."""
        return self._now_ms() + self.offset_ms

    def tick(self) -> tuple[int, int]:
        """Return a timestamp greater than every one issued or observed so far."""
        physical = self._now_ms() + self.offset_ms  # physical_ms(), inlined: every write ticks
        with self._lock:
            wall_ms, counter = self._last
            issued = (physical, 0) if physical > wall_ms else (wall_ms, counter + 1)
            self._last = issued
            return issued

    def observe(self, wall_ms: int, counter: int) -> None:
        """Fold a timestamp seen elsewhere into the clock (no new timestamp is issued)."""
        seen = (wall_ms, counter)
        if seen <= self._last:  # the usual case (our own last write): no lock needed,
            return  # since the clock only moves forward
        with self._lock:
            if seen > self._last:
                self._last = seen

    @property
    def last(self) -> tuple[int, int]:
        """The latest timestamp issued or observed."""
        return self._last

    def drift_ms(self) -> int:
        """How far the logical time runs ahead of the physical clock (0 when in step).

        A large value means some replica's clock is ahead of ours, or ours stepped back.
        """
        return max(0, self._last[0] - self.physical_ms())
