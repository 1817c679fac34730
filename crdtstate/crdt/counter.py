"""Counters: :class:`GCounter` (grow only) and :class:`PNCounter` (with decrements).

Layout in the doc: one root ``Map`` per field, one slot per replica holding that replica's
running total as canonical JSON (an integer). A replica only ever overwrites its own slot,
with a total that includes every increment it made before, so Yjs resolves nothing and
the value is the sum of the slots. A PN-counter is two G-counters in one map: slots
``+<replica id>`` and ``-<replica id>``.

This relies on the store invariants of DESIGN.md: a replica's local doc holds every update
it ever sent (it sends only durable updates), and one replica id is live in one process at
a time. Two processes sharing a replica id would overwrite each other's slot: the relay
raises a split-brain alarm for that.
"""

from __future__ import annotations

from typing import Any

from crdtstate import _codec
from crdtstate.crdt.base import Field, FieldKind, locked, short_repr
from crdtstate.errors import SchemaViolation, ValidationError

MAX_STEP = 1 << 53
"""Largest single increment: totals stay exact in JavaScript clients too."""


def _parse_total(slot: Any) -> int | None:
    if not isinstance(slot, str):
        return None
    try:
        value = _codec.loads(slot)
    except ValueError:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


class _SlotCounter(Field[int]):
    """Shared code: per-replica slots holding running totals."""

    _prefixes: tuple[str, ...] = ("",)

    def __init__(self, *, doc: str = "") -> None:
        super().__init__(int, 0, doc=doc)

    def default_json(self) -> Any:
        return 0

    def _bind_root(self) -> None:
        self._root = self.ctx.root_map(self.name)
        self._own: dict[str, int] = {}

    def invalidate(self) -> None:
        """Forget cached values, own slot totals included (a remote update may hold an
        older incarnation's slot that recovery merges back)."""
        super().invalidate()
        self._own = {}

    def _totals(self) -> tuple[dict[str, int], list[SchemaViolation]]:
        totals = dict.fromkeys(self._prefixes, 0)
        problems: list[SchemaViolation] = []
        for key, slot in self._root.items():
            prefix = key[:1] if self._prefixes != ("",) else ""
            total = _parse_total(slot)
            if prefix not in totals or total is None or len(key) <= len(prefix):
                problems.append(SchemaViolation(self.name, "foreign counter slot", key=key))
                continue
            totals[prefix] += total
        return totals, problems

    def _own_total(self, prefix: str) -> int:
        """This replica's running total in slot ``prefix``: read once, then kept, because
        only this replica writes its slot (the hot path of every increment)."""
        own = self._own.get(prefix)
        if own is None:
            own = _parse_total(self._root.get(prefix + self.ctx.replica_id)) or 0
            self._own[prefix] = own
        return own

    def _bump(self, prefix: str, n: int, op: str) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= MAX_STEP:
            raise ValidationError(
                self.name, f"{op} takes an integer from 1 to {MAX_STEP}, got {short_repr(n)}"
            )
        ctx = self.ctx
        value, violations = self._materialized()
        key = prefix + ctx.replica_id
        if violations:  # a foreign own slot is overwritten
            violations = [v for v in violations if v.key != key]
        total = self._own_total(prefix) + n
        encoded = _codec.dumps(total)
        root = self._root

        def mutate() -> None:
            root[key] = encoded

        delta = n if prefix != "-" else -n

        def after() -> None:
            self._own[prefix] = total
            self._cache = (value + delta, violations)
            self._typed_cache = None

        self._commit({"field": self.name, "op": op, "n": n}, mutate, after)

    @property
    @locked
    def value(self) -> int:
        """The counter's value: the sum over every replica's slot."""
        return int(self._typed())

    @locked
    def by_replica(self) -> dict[str, int]:
        """Each replica's contribution (net, for a PN-counter); for debugging."""
        out: dict[str, int] = {}
        for key, slot in self._root.items():
            total = _parse_total(slot)
            if total is None:
                continue
            if self._prefixes == ("",):
                out[key] = out.get(key, 0) + total
            elif key[:1] in self._prefixes:
                sign = -1 if key[0] == "-" else 1
                out[key[1:]] = out.get(key[1:], 0) + sign * total
        return out


class GCounter(_SlotCounter):
    """Grow-only counter. Merge: per-slot max via causal overwrite; value = sum of slots."""

    kind = FieldKind.GCOUNTER

    def _materialize(self) -> tuple[Any, list[SchemaViolation]]:
        totals, problems = self._totals()
        return totals[""], problems

    @locked
    def inc(self, n: int = 1) -> None:
        """Add ``n`` (1 <= n <= 2**53)."""
        self._bump("", n, "inc")


class PNCounter(_SlotCounter):
    """Counter with increments and decrements: two G-counters (``+`` and ``-`` slots)."""

    kind = FieldKind.PNCOUNTER
    _prefixes = ("+", "-")

    def _materialize(self) -> tuple[Any, list[SchemaViolation]]:
        totals, problems = self._totals()
        return totals["+"] - totals["-"], problems

    @locked
    def inc(self, n: int = 1) -> None:
        """Add ``n`` (1 <= n <= 2**53)."""
        self._bump("+", n, "inc")

    @locked
    def dec(self, n: int = 1) -> None:
        """Subtract ``n`` (1 <= n <= 2**53)."""
        self._bump("-", n, "dec")
