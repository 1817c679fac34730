"""``MemoryStore``: the store protocol in memory, for the deterministic simulation.

No files, no threads, no wall clock (unless a ``clock`` is given). It keeps the same
durable boundary as ``SqliteStore`` so a simulated crash loses exactly what a real one
would: SYNC appends are durable at once; BATCH appends, remote updates, acks and BATCH
snapshots stay pending until :meth:`MemoryStore.flush` or :meth:`MemoryStore.commit_pending`;
:meth:`MemoryStore.crash` discards what is pending. :meth:`MemoryStore.fail_commits` makes
commits fail as a full disk would.

Must not import pycrdt nor anything above the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crdtstate._ids import OpId, Seq
from crdtstate.errors import StoreClosedError, StoreError, StoreFullError
from crdtstate.store._checks import (
    check_blob,
    check_meta,
    check_op_id,
    check_seq,
    check_timeout,
    decode_op,
    encode_op,
)
from crdtstate.store.base import NO_OP_ID, Durability, LoadedState, OutboxEntry

__all__ = ["MemoryStore"]

_log = logging.getLogger(__name__)


@dataclass
class _Durable:
    """What survives a crash."""

    snapshot: bytes | None = None
    tail_upto: int = 0
    tail: dict[int, bytes] = field(default_factory=dict)  # tail id -> update, ids ascending
    outbox: dict[int, tuple[int, str, float]] = field(default_factory=dict)  # op id -> row
    last_op_id: int = 0
    applied_seq: int = 0
    meta: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Local:
    tail_id: int
    op_id: int
    data: bytes
    op_json: str
    created_at: float


@dataclass(frozen=True, slots=True)
class _Remote:
    tail_id: int
    data: bytes
    seq: int | None


@dataclass(frozen=True, slots=True)
class _Applied:
    seq: int
    reset: bool = False


@dataclass(frozen=True, slots=True)
class _Ack:
    op_id: int


@dataclass(frozen=True, slots=True)
class _Snapshot:
    tail_upto: int
    data: bytes


@dataclass(frozen=True, slots=True)
class _Meta:
    key: str
    value: str


_Item = _Local | _Remote | _Applied | _Ack | _Snapshot | _Meta


class MemoryStore:
    """The :class:`~crdtstate.store.base.Store` in memory. See the module docstring.

    Attributes:
        path: always None.
        durability: when ``append_local`` counts as durable.
    """

    path: Path | None
    durability: Durability

    def __init__(
        self,
        durability: Durability = Durability.SYNC,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """Create an empty store.

        Args:
            durability: SYNC (each append durable at once) or BATCH (pending until flush).
            clock: stamps outbox entries; without it they are stamped 0.0.
        """
        try:
            self.durability = Durability(durability)
        except ValueError:
            raise ValueError(
                f"durability must be one of {[d.value for d in Durability]}, got {durability!r}"
            ) from None
        self.path = None
        self._clock = clock
        self._durable = _Durable()
        self._failure: str | None = None
        self._failure_full = False
        self._restart()

    def _restart(self) -> None:
        """Rebuild the caller-side state from what is durable, as opening a file would."""
        d = self._durable
        self._pending: list[_Item] = []
        self._next_op_id = max(d.last_op_id, max(d.outbox, default=0))
        self._last_tail_id = max(d.tail_upto, max(d.tail, default=0))
        self._unacked: set[int] = set(d.outbox)
        live = [data for tail_id, data in d.tail.items() if tail_id > d.tail_upto]
        self._tail_count = len(live)
        self._tail_bytes = sum(len(data) for data in live)
        self._durable_op_id = self._next_op_id
        self._listeners: list[Callable[[OpId], None]] = []
        self._error: StoreError | None = None
        self._closed = False

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<MemoryStore {self.durability.value} {state} pending={len(self._pending)}>"

    # ------------------------------------------------------------------ simulation

    def commit_pending(self) -> None:
        """Make everything pending durable, as one group commit.

        Raises:
            StoreError: commits are failing (see :meth:`fail_commits`); nothing is lost,
                the pending writes stay pending.
        """
        if not self._pending:
            # Nothing to commit, nothing that can fail (as SqliteStore's flush returns at
            # once): an error reported here would stick with no write left to retry.
            self._error = None
            return
        if self._failure is not None:
            kind = StoreFullError if self._failure_full else StoreError
            self._error = kind(
                f"memory store: commit of {len(self._pending)} writes failed: {self._failure}; "
                "they are kept and retried"
            )
            raise self._error
        self._error = None
        items, self._pending = self._pending, []
        for item in items:
            self._apply(item)
        if self._durable.last_op_id > self._durable_op_id:
            self._durable_op_id = self._durable.last_op_id
            for callback in list(self._listeners):
                try:
                    callback(OpId(self._durable_op_id))
                except Exception:  # a listener's bug must not stop durability
                    _log.exception("memory store: durable listener %r failed", callback)

    def pending_count(self) -> int:
        """Number of writes not yet durable."""
        return len(self._pending)

    def crash(self) -> None:
        """Lose everything not durable, as kill -9 would, and reopen.

        Listeners are dropped (they belonged to the dead process); the store is open again
        and :meth:`load` gives what survived.
        """
        self._restart()

    def reopen(self) -> None:
        """Open again after :meth:`close` (a clean restart); listeners are dropped."""
        if not self._closed:
            raise StoreError("memory store: reopen() needs close() first (or use crash())")
        self._restart()

    def fail_commits(self, cause: str | None, *, full: bool = False) -> None:
        """Make every commit fail with ``cause`` (e.g. "disk full"); None heals.

        ``full``: the failure is a full disk, reported as :class:`StoreFullError`.
        """
        self._failure = cause
        self._failure_full = full

    # ------------------------------------------------------------------------ writes

    def append_local(self, update: bytes, op: Mapping[str, Any]) -> OpId:
        """Append a local write to the tail and the outbox atomically; return its op id.

        Raises:
            TypeError, ValueError: bad ``update`` or ``op`` (nothing is stored).
            StoreError: a commit failed (SYNC: this one; both: an earlier one not yet retried).
        """
        data = check_blob(update, "update")
        op_text = encode_op(op)
        created_at = 0.0 if self._clock is None else float(self._clock())
        self._check_usable()
        self._next_op_id += 1
        self._last_tail_id += 1
        self._unacked.add(self._next_op_id)
        self._tail_count += 1
        self._tail_bytes += len(data)
        op_id = self._next_op_id
        self._pending.append(_Local(self._last_tail_id, op_id, data, op_text, created_at))
        if self.durability is Durability.SYNC:
            self.commit_pending()
        return OpId(op_id)

    def append_remote(self, update: bytes, seq: Seq | None) -> None:
        """Append a remote update (tail only), recording ``seq`` with it; stays pending."""
        data = check_blob(update, "update")
        checked = None if seq is None else check_seq(seq)
        self._check_usable()
        self._last_tail_id += 1
        self._tail_count += 1
        self._tail_bytes += len(data)
        self._pending.append(_Remote(self._last_tail_id, data, checked))

    def check_writable(self) -> None:
        """Raise the error that would refuse a write now (see the Store protocol)."""
        self._check_usable()

    def note_applied(self, seq: Seq) -> None:
        """Record ``applied_seq`` without an update; stays pending."""
        checked = check_seq(seq)
        self._check_open()
        self._pending.append(_Applied(checked))

    def reset_applied(self, seq: Seq) -> None:
        """Set ``applied_seq`` to exactly ``seq`` (a new relay log); stays pending."""
        checked = check_seq(seq)
        self._check_open()
        self._pending.append(_Applied(checked, reset=True))

    def ack(self, op_id: OpId, seq: Seq) -> None:
        """Drop ``op_id`` from the outbox (idempotent, unknown ids ignored); stays pending."""
        checked = check_op_id(op_id)
        check_seq(seq)
        self._check_open()
        if checked in self._unacked:
            self._unacked.discard(checked)
            self._pending.append(_Ack(checked))

    def write_snapshot(self, snapshot: bytes) -> None:
        """Store a snapshot covering everything appended before; SYNC commits at once."""
        data = check_blob(snapshot, "snapshot")
        self._check_usable()
        self._tail_count = 0
        self._tail_bytes = 0
        self._pending.append(_Snapshot(self._last_tail_id, data))
        if self.durability is Durability.SYNC:
            self.commit_pending()

    def set_meta(self, key: str, value: str) -> None:
        """Set a meta string; durable before returning."""
        check_meta(key, value)
        self._check_usable()
        self._pending.append(_Meta(key, value))
        self.commit_pending()

    def flush(self, timeout_s: float | None = None) -> None:
        """Commit everything pending (``timeout_s`` is accepted for the protocol).

        Raises:
            StoreError: commits are failing.
        """
        check_timeout(timeout_s)
        self._check_open()
        self.commit_pending()

    def add_durable_listener(self, callback: Callable[[OpId], None]) -> None:
        """Call ``callback(durable_op_id)`` inline each time a commit advances it."""
        if not callable(callback):
            raise TypeError("callback must be callable")
        self._listeners.append(callback)

    # ------------------------------------------------------------------------- reads

    @property
    def durable_op_id(self) -> OpId:
        """Highest op id known durable (0 = none)."""
        return OpId(self._durable_op_id)

    def load(self) -> LoadedState:
        """Commit what is pending, then return the snapshot, tail and counters."""
        self.flush()
        d = self._durable
        return LoadedState(
            snapshot=d.snapshot,
            tail=[data for tail_id, data in d.tail.items() if tail_id > d.tail_upto],
            applied_seq=Seq(d.applied_seq),
            last_op_id=OpId(self._durable_op_id),
            read_seconds=0.0,
        )

    def outbox(self, limit: int = 1000, after: OpId = NO_OP_ID) -> list[OutboxEntry]:
        """Unacknowledged durable entries with ``op_id > after``, ascending."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an int >= 0, got {limit!r}")
        start = check_op_id(after, "after")
        self._check_open()
        d = self._durable
        entries: list[OutboxEntry] = []
        for op_id in sorted(d.outbox):
            if len(entries) >= limit:
                break
            if op_id <= start or op_id not in self._unacked:
                continue
            tail_id, op_text, created_at = d.outbox[op_id]
            entries.append(
                OutboxEntry(OpId(op_id), d.tail[tail_id], decode_op(op_text), created_at)
            )
        return entries

    def outbox_len(self) -> int:
        """Number of unacknowledged entries, durable or not."""
        return len(self._unacked)

    def tail_stats(self) -> tuple[int, int]:
        """Return (updates appended since the last snapshot, their total bytes)."""
        return self._tail_count, self._tail_bytes

    def get_meta(self, key: str) -> str | None:
        """Return the meta string of ``key``, or None."""
        check_meta(key)
        self._check_open()
        return self._durable.meta.get(key)

    def close(self) -> None:
        """Commit what is pending and close. Idempotent.

        Raises:
            StoreError: commits are failing; the pending writes are lost (as with a file).
        """
        if self._closed:
            return
        self._closed = True
        try:
            self.commit_pending()
        except StoreError as exc:
            lost = len(self._pending)
            self._pending = []
            raise StoreError(f"memory store closed with {lost} writes not durable: {exc}") from exc

    # ----------------------------------------------------------------------- helpers

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("memory store is closed")

    def _check_usable(self) -> None:
        self._check_open()
        if self._error is not None:
            raise type(self._error)(f"{self._error} (no new writes accepted until it succeeds)")

    def _apply(self, item: _Item) -> None:
        """Apply one committed item to the durable state (mirrors SqliteStore._commit)."""
        d = self._durable
        if isinstance(item, _Local):
            d.tail[item.tail_id] = item.data
            d.outbox[item.op_id] = (item.tail_id, item.op_json, item.created_at)
            d.last_op_id = max(d.last_op_id, item.op_id)
        elif isinstance(item, _Remote):
            d.tail[item.tail_id] = item.data
            if item.seq is not None:
                d.applied_seq = max(d.applied_seq, item.seq)
        elif isinstance(item, _Applied):
            d.applied_seq = item.seq if item.reset else max(d.applied_seq, item.seq)
        elif isinstance(item, _Ack):
            row = d.outbox.pop(item.op_id, None)
            if row is not None and row[0] <= d.tail_upto:
                d.tail.pop(row[0], None)
        elif isinstance(item, _Snapshot):
            d.snapshot = item.data
            d.tail_upto = item.tail_upto
            held = {row[0] for row in d.outbox.values()}
            d.tail = {
                tail_id: data
                for tail_id, data in d.tail.items()
                if tail_id > item.tail_upto or tail_id in held
            }
        else:
            d.meta[item.key] = item.value
