"""Deliberately broken variants of the system, to prove the simulation finds bugs.

A simulation that never fails proves nothing by itself; one that catches known bugs, in a
measured number of seeds, shows its faults and checkers reach the places bugs hide. Each
variant here is a small, plausible mistake in production code, switched on only for the
duration of one :func:`planted` block (the ``--plant`` option of ``crdtstate-chaos
simulate``, and the tests); outside it the real code is untouched.

- ``ack-before-durable``: the relay's storage returns from an append before it is durable
  (a disk that lies about fsync), so the relay acknowledges and fans out updates a crash can
  still lose.
- ``send-before-durable``: a replica sends outbox entries its store has not made durable;
  after a crash its state lacks writes the others have, and a counter slot written again
  from the shorter total loses increments.
- ``orset-remove-wins``: an OR-set remove also leaves a tombstone that hides every add older
  (by HLC) than the remove, including concurrent adds the remove never observed.
- ``counter-shared-slot``: every replica writes one shared counter slot instead of its own,
  so concurrent increments overwrite each other.
- ``session-claims-gaps``: the sync session skips over a gap in sequence numbers instead of
  catching up, so it never receives the updates it missed.

Owns the variants. Imports what it patches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from crdtstate import _codec
from crdtstate._ids import OpId, Seq
from crdtstate.crdt.counter import _SlotCounter
from crdtstate.crdt.orset import ORSet
from crdtstate.replica import Replica
from crdtstate.store.base import OutboxEntry
from crdtstate.sync.session import SyncSession

__all__ = ["PLANTED", "PlantOptions", "planted"]

PLANTED: Final[dict[str, str]] = {
    "ack-before-durable": "relay acknowledges appends before they are durable",
    "send-before-durable": "replica sends outbox entries before they are durable",
    "orset-remove-wins": "OR-set remove hides concurrent adds older than it (remove wins)",
    "counter-shared-slot": "every replica increments one shared counter slot",
    "session-claims-gaps": "sync session skips sequence gaps instead of catching up",
}
"""Name -> one-line description of every planted bug."""

_TOMBSTONE: Final = "\x1e\x1d"
"""Prefix of the remove-wins tombstones; ``ORSet`` skips keys starting with ``\\x1e``."""

_SHARED_SLOT: Final = "shared"


@dataclass(frozen=True, slots=True)
class PlantOptions:
    """What the world must build differently for a planted bug (beyond patched code)."""

    relay_durable_appends: bool = True


def _counter_shared_slot() -> list[tuple[object, str, Any]]:
    original = _SlotCounter._bump

    def bump(self: _SlotCounter, prefix: str, n: int, op: str) -> None:
        ctx: Any = self.ctx
        real = ctx.replica_id
        ctx.replica_id = _SHARED_SLOT  # the slot key and the own total both use this id
        try:
            original(self, prefix, n, op)
        finally:
            ctx.replica_id = real

    return [(_SlotCounter, "_bump", bump)]


def _orset_remove_wins() -> list[tuple[object, str, Any]]:
    original_remove = ORSet.remove
    original_add = ORSet.add
    original_materialize = ORSet._materialize

    def remove(self: ORSet[Any], element: Any) -> bool:
        text = _codec.dumps(self.to_json(element))
        commit = self._commit
        root = self._root

        def commit_with_tombstone(
            op: dict[str, Any], mutate: Callable[[], None], after: Callable[[], None]
        ) -> None:
            wall_ms, counter = self.ctx.clock.tick()
            stamp = _codec.dumps([wall_ms, counter])

            def both() -> None:
                mutate()
                root[_TOMBSTONE + text] = stamp

            commit(op, both, self.invalidate)

        self._commit = commit_with_tombstone  # type: ignore[method-assign]
        try:
            return original_remove(self, element)
        finally:
            del self._commit

    def add(self: ORSet[Any], element: Any) -> str:
        tag = original_add(self, element)
        self.invalidate()
        return tag

    def materialize(self: ORSet[Any]) -> tuple[Any, list[Any]]:
        values, problems = original_materialize(self)
        root = self._root
        hidden: set[str] = set()
        for element, keys in self._index.items():
            tomb = root.get(_TOMBSTONE + element)
            if not isinstance(tomb, str):
                continue
            newest = max(_codec.loads(str(root.get(key))) for key in keys)
            if newest <= _codec.loads(tomb):
                hidden.add(element)
        if hidden:
            self._index = {e: k for e, k in self._index.items() if e not in hidden}
            values = [v for v in values if _codec.dumps(v) not in hidden]
        return values, problems

    return [(ORSet, "remove", remove), (ORSet, "add", add), (ORSet, "_materialize", materialize)]


def _send_before_durable() -> list[tuple[object, str, Any]]:
    original = Replica.pending_outbox

    def pending_outbox(self: Replica[Any], limit: int, after: OpId) -> list[OutboxEntry]:
        entries = original(self, limit, after)
        pending = getattr(self.store, "_pending", None)
        if pending is None or len(entries) >= limit:
            return entries
        floor = max(int(after), int(entries[-1].op_id) if entries else 0)
        extra = [
            OutboxEntry(OpId(item.op_id), item.data, {}, item.created_at)
            for item in pending
            if type(item).__name__ == "_Local" and item.op_id > floor
        ]
        return [*entries, *extra][:limit]

    return [(Replica, "pending_outbox", pending_outbox)]


def _session_claims_gaps() -> list[tuple[object, str, Any]]:
    original = SyncSession._on_seq

    def on_seq(self: SyncSession, seq: Seq, update: bytes | None) -> list[bytes]:
        if seq > self.applied_seq + 1:
            self.applied_seq = Seq(seq - 1)  # "the gap is nothing": claim what was missed
        return original(self, seq, update)

    return [(SyncSession, "_on_seq", on_seq)]


_PATCHES: Final[dict[str, Callable[[], list[tuple[object, str, Any]]]]] = {
    "send-before-durable": _send_before_durable,
    "orset-remove-wins": _orset_remove_wins,
    "counter-shared-slot": _counter_shared_slot,
    "session-claims-gaps": _session_claims_gaps,
}


@contextlib.contextmanager
def planted(name: str | None) -> Iterator[PlantOptions]:
    """Run the block with bug ``name`` planted (None: nothing); the code is restored after.

    Raises:
        ValueError: unknown name.
    """
    if name is None:
        yield PlantOptions()
        return
    if name not in PLANTED:
        raise ValueError(f"unknown planted bug {name!r}; known: {', '.join(sorted(PLANTED))}")
    if name == "ack-before-durable":
        yield PlantOptions(relay_durable_appends=False)
        return
    patches = _PATCHES[name]()
    saved = [(target, attr, vars(target)[attr]) for target, attr, _ in patches]
    for target, attr, replacement in patches:
        setattr(target, attr, replacement)
    try:
        yield PlantOptions()
    finally:
        for target, attr, original in saved:
            setattr(target, attr, original)
