"""A set of op ids kept as one contiguous run plus the ids outside it.

The outbox's unacknowledged ids are nearly always one run: new ids are the next integer,
and the relay acknowledges in order. Holding the run as two integers lets a store with a
million pending writes open without reading a million ids (see ``_read_state``), and keeps
add, discard, membership and length O(1) in the usual case. Imports nothing.
"""

from __future__ import annotations

from collections.abc import Iterable


class OpIdSet:
    """Set of non-negative ints, optimised for ``add(max + 1)`` and ``discard(min)``."""

    __slots__ = ("_hi", "_lo", "_others")

    def __init__(self, run: range = range(0), others: Iterable[int] = ()) -> None:
        if run.step != 1:
            raise ValueError("the run must have step 1")
        self._lo = run.start
        self._hi = max(run.start, run.stop)
        self._others = {x for x in others if not self._lo <= x < self._hi}

    def __contains__(self, op_id: object) -> bool:
        if isinstance(op_id, int) and self._lo <= op_id < self._hi:
            return True
        return op_id in self._others

    def __len__(self) -> int:
        return self._hi - self._lo + len(self._others)

    def add(self, op_id: int) -> None:
        """Add ``op_id``; the next integer after the run extends it."""
        if self._lo == self._hi and not self._others:
            self._lo, self._hi = op_id, op_id + 1
        elif op_id == self._hi and op_id not in self._others:
            self._hi += 1
        elif not self._lo <= op_id < self._hi:
            self._others.add(op_id)

    def discard(self, op_id: int) -> None:
        """Remove ``op_id`` if present; a removal inside the run moves its shorter side out."""
        lo, hi = self._lo, self._hi
        if not lo <= op_id < hi:
            self._others.discard(op_id)
        elif op_id == lo:
            self._lo += 1
        elif op_id == hi - 1:
            self._hi -= 1
        elif op_id - lo <= hi - op_id:
            self._others.update(range(lo, op_id))
            self._lo = op_id + 1
        else:
            self._others.update(range(op_id + 1, hi))
            self._hi = op_id
