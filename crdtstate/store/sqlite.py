"""``SqliteStore``: the crash-safe local store of one namespace of one replica.

One SQLite file in WAL mode with ``synchronous=FULL`` (layout in ``_sqlite_schema``), an
exclusive ``flock`` on ``<path>.lock`` while open, and one writer thread that owns the write
connection and group-commits everything callers enqueue:

- SYNC: the writer commits as soon as work arrives; ``append_local`` waits for the commit
  (callers on several threads share one fsync).
- BATCH: callers only enqueue (microseconds); the writer commits at most once every
  ``batch_interval_s``, at once when someone waits (``flush``, ``set_meta``).

Op ids and tail ids are assigned in the caller's thread under one lock, so the queue order
is the append order and a snapshot's coverage ("everything appended before the call") is
exact. A failed commit is rolled back, kept and retried with backoff; until a retry
succeeds every append and flush raises ``StoreError`` naming the cause.

Must not import pycrdt nor anything above the store.
"""

from __future__ import annotations

import atexit
import errno
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from crdtstate._ids import OpId, Seq
from crdtstate.errors import CorruptStoreError, StoreClosedError, StoreError, StoreFullError
from crdtstate.store import _sqlite_schema as schema
from crdtstate.store._checks import (
    check_blob,
    check_meta,
    check_op_id,
    check_seq,
    check_timeout,
    decode_op,
    encode_op,
)
from crdtstate.store._idset import OpIdSet
from crdtstate.store._lock import FileLock
from crdtstate.store.base import NO_OP_ID, Durability, LoadedState, OutboxEntry

__all__ = ["SqliteStore", "open_store"]

_log = logging.getLogger(__name__)

# Queue item kinds; items are plain tuples because BATCH appends must cost microseconds.
_LOCAL: Final = 0  # (kind, tail_id, op_id, data, op_json, created_at)
_REMOTE: Final = 1  # (kind, tail_id, data, seq | None)
_APPLIED: Final = 2  # (kind, seq)
_ACK: Final = 3  # (kind, op_id, seq)
_SNAPSHOT: Final = 4  # (kind, tail_upto, data)
_META: Final = 5  # (kind, key, value)
_APPLIED_RESET: Final = 6  # (kind, seq)

_RETRY_DELAY_S_MAX: Final = 1.0
_CLOSE_ATTEMPTS_MAX: Final = 3


def open_store(
    path: Path, durability: Durability, *, batch_interval_s: float = 0.005
) -> SqliteStore:
    """Open (or create) the SQLite store at ``path``.

    Args:
        path: the store file, e.g. ``DATA/<namespace>.sqlite3``; its directory is created.
        durability: SYNC (fsync before ``append_local`` returns) or BATCH (group commit).
        batch_interval_s: BATCH group-commit period.

    Returns:
        The open store; close it with :meth:`SqliteStore.close`.

    Raises:
        StoreLockedError: another process, or another open store in this one, holds it.
        CorruptStoreError: the file is not a readable crdtstate store.
        StoreVersionError: the file has an unknown format version.
        StoreError: the file or its directory cannot be used.
    """
    return SqliteStore(path, durability, batch_interval_s=batch_interval_s)


class SqliteStore:
    """The :class:`~crdtstate.store.base.Store` on a SQLite file. See the module docstring.

    Attributes:
        path: the store file.
        durability: when ``append_local`` counts as durable.
    """

    path: Path | None
    durability: Durability

    def __init__(
        self,
        path: Path,
        durability: Durability,
        *,
        batch_interval_s: float = 0.005,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open the store; prefer :func:`open_store`. ``clock`` stamps outbox entries."""
        if not isinstance(path, Path):
            raise TypeError(f"path must be a pathlib.Path, not {type(path).__name__}")
        try:
            self.durability = Durability(durability)
        except ValueError:
            raise ValueError(
                f"durability must be one of {[d.value for d in Durability]}, got {durability!r}"
            ) from None
        if isinstance(batch_interval_s, bool) or not isinstance(batch_interval_s, int | float):
            raise TypeError("batch_interval_s must be a number")
        if not 0 <= batch_interval_s <= 60:
            raise ValueError(f"batch_interval_s must be in 0..60, got {batch_interval_s}")
        self.path = path
        self._path = path
        self._interval_s = float(batch_interval_s)
        self._clock = clock
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of store {path}: {exc}") from exc

        self._file_lock = FileLock.acquire(path)
        try:
            self._wconn = schema.connect(path)
            try:
                opened = schema.prepare(self._wconn, path)
                self._rconn = schema.connect(path)
            except BaseException:
                self._wconn.close()
                raise
        except BaseException:
            self._file_lock.release()
            raise
        self._rlock = threading.Lock()

        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the writer waits here
        self._done = threading.Condition(self._lock)  # callers wait here for commits
        # Caller-side state (under _lock): what has been appended, committed or not.
        self._pending: list[tuple[Any, ...]] = []
        self._ticket = 0
        self._next_op_id = opened.last_op_id
        self._last_tail_id = opened.last_tail_id
        self._unacked: OpIdSet = opened.unacked
        self._tail_count = opened.tail_count
        self._tail_bytes = opened.tail_bytes
        self._listeners: list[Callable[[OpId], None]] = []
        self._closed = False
        self._stopping = False
        self._urgent = False
        # Writer-side state: what the file holds.
        self._committed_ticket = 0
        self._attempts_started = 0  # commit attempts begun / finished, for _wait
        self._attempts_done = 0
        self._durable_op_id = opened.last_op_id
        self._error: StoreError | None = None
        self._lost = 0
        self._w_last_op_id = opened.last_op_id
        self._w_applied_seq = opened.applied_seq
        self._w_tail_upto = opened.tail_upto
        self._last_commit_at = time.monotonic()  # the first BATCH commit waits one interval

        self._writer = threading.Thread(
            target=self._run, name=f"crdtstate-store-writer:{path.name}", daemon=True
        )
        self._writer.start()
        # A process that exits without close() still commits its BATCH writes: atexit
        # runs before the interpreter stops daemon threads.
        atexit.register(self._close_at_exit)

    # ----------------------------------------------------------------- context manager

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SqliteStore {self._path} {self.durability.value} {state}>"

    # ------------------------------------------------------------------------- writes

    def append_local(self, update: bytes, op: Mapping[str, Any]) -> OpId:
        """Append a local write to the tail and the outbox in one atomic step.

        Args:
            update: the Yjs update of the write.
            op: its semantic operation; must survive a JSON round trip.

        Returns:
            The new op id (strictly increasing, from 1).

        Raises:
            TypeError, ValueError: bad ``update`` or ``op`` (nothing is stored).
            StoreError: an earlier commit failed and is not yet retried successfully.
            StoreClosedError: the store is closed.
        """
        data = check_blob(update, "update")
        op_text = encode_op(op)  # a field's EncodedOp hands over its own text
        created_at = self._clock()
        with self._lock:
            self._check_usable()
            if self.durability is Durability.SYNC:
                self._check_not_writer()
            self._next_op_id += 1
            op_id = self._next_op_id
            self._last_tail_id += 1
            self._unacked.add(op_id)
            self._tail_count += 1
            self._tail_bytes += len(data)
            ticket = self._enqueue((_LOCAL, self._last_tail_id, op_id, data, op_text, created_at))
            if self.durability is Durability.SYNC:
                self._wait(ticket, None)
        return OpId(op_id)

    def append_remote(self, update: bytes, seq: Seq | None) -> None:
        """Append a remote update (tail only); record ``seq`` with it when given.

        Never waits for the commit: a lost remote update is fetched again from the relay.

        Raises:
            TypeError, ValueError: bad ``update`` or ``seq``.
            StoreError: an earlier commit failed and is not yet retried successfully.
        """
        data = check_blob(update, "update")
        checked = None if seq is None else check_seq(seq)
        with self._lock:
            self._check_usable()
            self._last_tail_id += 1
            self._tail_count += 1
            self._tail_bytes += len(data)
            self._enqueue((_REMOTE, self._last_tail_id, data, checked))

    def note_applied(self, seq: Seq) -> None:
        """Record ``applied_seq`` without an update (our own echo). Does not wait."""
        checked = check_seq(seq)
        with self._lock:
            self._check_open()
            self._enqueue((_APPLIED, checked))

    def reset_applied(self, seq: Seq) -> None:
        """Set ``applied_seq`` to exactly ``seq`` (a new relay log). Does not wait."""
        checked = check_seq(seq)
        with self._lock:
            self._check_open()
            self._enqueue((_APPLIED_RESET, checked))

    def check_writable(self) -> None:
        """Raise the error that would refuse a write now; return if writes are taken.

        Lets a caller find out before it changes anything that the write would be refused
        (a commit is failing: disk full, read-only file). Nothing is queued.

        Raises:
            StoreFullError: the disk (or the size limit) is full; retried until it is not.
            StoreError: another commit failure, not yet retried successfully.
            StoreClosedError: the store is closed.
        """
        if self._closed or self._error is not None:  # attribute reads: no lock needed to see
            with self._lock:
                self._check_usable()

    def ack(self, op_id: OpId, seq: Seq) -> None:
        """The relay sequenced ``op_id`` as ``seq``: drop it from the outbox.

        Idempotent; unknown ids are ignored. Does not wait: a lost ack only means the
        entry is resent and the relay answers with its original sequence number.
        """
        checked_op = check_op_id(op_id)
        checked_seq = check_seq(seq)
        with self._lock:
            self._check_open()
            if checked_op not in self._unacked:
                return
            self._unacked.discard(checked_op)
            self._enqueue((_ACK, checked_op, checked_seq))

    def write_snapshot(self, snapshot: bytes) -> None:
        """Store a snapshot covering every update appended before this call.

        In the same transaction the tail rows it covers are deleted (rows of unacknowledged
        outbox entries are kept). SYNC waits for the commit; BATCH returns at once.

        Raises:
            TypeError, ValueError: ``snapshot`` is not bytes or too large.
            StoreError: an earlier commit failed and is not yet retried successfully.
        """
        data = check_blob(snapshot, "snapshot")
        with self._lock:
            self._check_usable()
            if self.durability is Durability.SYNC:
                self._check_not_writer()
            self._tail_count = 0
            self._tail_bytes = 0
            ticket = self._enqueue((_SNAPSHOT, self._last_tail_id, data))
            if self.durability is Durability.SYNC:
                self._wait(ticket, None)

    def set_meta(self, key: str, value: str) -> None:
        """Set a meta string; durable before returning (in both modes).

        Raises:
            TypeError, ValueError: key or value is not a storable string.
            StoreError: the commit failed.
        """
        check_meta(key, value)
        with self._lock:
            self._check_usable()
            self._check_not_writer()
            ticket = self._enqueue((_META, key, value))
            self._wait(ticket, None)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until everything appended before the call is durable.

        Args:
            timeout_s: give up after this many seconds (None: no limit).

        Raises:
            StoreError: the timeout passed, or a commit failed (the message names the cause).
            StoreClosedError: the store is closed.
        """
        limit = check_timeout(timeout_s)
        with self._lock:
            self._check_open()
            self._wait(self._ticket, limit)

    def add_durable_listener(self, callback: Callable[[OpId], None]) -> None:
        """Call ``callback(durable_op_id)`` from the writer thread each time it advances.

        The callback must not wait for this store (``flush``, SYNC ``append_local``,
        ``set_meta``, ``close``): those raise ``StoreError`` when called from it.
        """
        if not callable(callback):
            raise TypeError("callback must be callable")
        with self._lock:
            self._listeners.append(callback)

    # -------------------------------------------------------------------------- reads

    @property
    def durable_op_id(self) -> OpId:
        """Highest op id known durable (0 = none)."""
        return OpId(self._durable_op_id)

    def load(self) -> LoadedState:
        """Flush, then read the snapshot, the tail after it and the counters.

        Raises:
            CorruptStoreError: the file's contents cannot be read back.
            StoreError: pending writes could not be made durable.
        """
        started = time.perf_counter()
        self.flush()
        try:
            with self._rlock:
                conn = self._rconn
                conn.execute("BEGIN")
                try:
                    snap = conn.execute(
                        "SELECT data, tail_upto FROM snapshot WHERE id = 1"
                    ).fetchone()
                    upto = snap[1] if snap else 0
                    rows = conn.execute(
                        "SELECT data FROM tail WHERE id > ? ORDER BY id", (upto,)
                    ).fetchall()
                    (applied_seq,) = conn.execute(
                        "SELECT applied_seq FROM state WHERE id = 1"
                    ).fetchone()
                finally:
                    conn.execute("COMMIT")
            applied = Seq(int(applied_seq))
        except (sqlite3.DatabaseError, TypeError, ValueError) as exc:
            raise CorruptStoreError(f"store {self._path} cannot be read: {exc}") from exc
        tail = [row[0] for row in rows]
        if snap is not None and not isinstance(snap[0], bytes):
            raise CorruptStoreError(f"store {self._path}: snapshot is not a blob")
        if not all(isinstance(blob, bytes) for blob in tail):
            raise CorruptStoreError(f"store {self._path}: a tail row is not a blob")
        return LoadedState(
            snapshot=snap[0] if snap else None,
            tail=tail,
            applied_seq=applied,
            last_op_id=OpId(self._durable_op_id),
            read_seconds=time.perf_counter() - started,
        )

    def outbox(self, limit: int = 1000, after: OpId = NO_OP_ID) -> list[OutboxEntry]:
        """Unacknowledged entries with ``op_id > after`` that are durable, ascending.

        Raises:
            CorruptStoreError: an outbox row cannot be read back.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an int >= 0, got {limit!r}")
        cursor = check_op_id(after, "after")
        self._check_open()
        durable = self._durable_op_id
        entries: list[OutboxEntry] = []
        while len(entries) < limit:
            want = limit - len(entries)
            try:
                with self._rlock:
                    rows = self._rconn.execute(
                        "SELECT o.op_id, t.data, o.op, o.created_at FROM outbox o "
                        "LEFT JOIN tail t ON t.id = o.tail_id "
                        "WHERE o.op_id > ? AND o.op_id <= ? ORDER BY o.op_id LIMIT ?",
                        (cursor, durable, want),
                    ).fetchall()
            except (sqlite3.DatabaseError, UnicodeError) as exc:
                raise CorruptStoreError(f"store {self._path}: outbox unreadable: {exc}") from exc
            for op_id, data, op_text, created_at in rows:
                # An ack not yet committed already removed the id from _unacked.
                if op_id in self._unacked:
                    entries.append(self._entry(op_id, data, op_text, created_at))
            if len(rows) < want:
                break
            cursor = rows[-1][0]
        return entries

    def _entry(self, op_id: Any, data: Any, op_text: Any, created_at: Any) -> OutboxEntry:
        if not isinstance(data, bytes):
            raise CorruptStoreError(f"store {self._path}: outbox entry {op_id} has no update")
        try:
            op = decode_op(op_text)
            created = float(created_at)
        except (ValueError, TypeError) as exc:
            raise CorruptStoreError(
                f"store {self._path}: outbox entry {op_id} is malformed: {exc}"
            ) from exc
        return OutboxEntry(OpId(op_id), data, op, created)

    def outbox_len(self) -> int:
        """Number of unacknowledged entries, durable or not."""
        return len(self._unacked)

    def tail_stats(self) -> tuple[int, int]:
        """Return (updates appended since the last snapshot, their total bytes)."""
        with self._lock:
            return self._tail_count, self._tail_bytes

    def get_meta(self, key: str) -> str | None:
        """Return the meta string of ``key``, or None.

        Raises:
            CorruptStoreError: the meta table cannot be read.
        """
        check_meta(key)
        self._check_open()
        try:
            with self._rlock:
                row = self._rconn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except (sqlite3.DatabaseError, UnicodeError) as exc:
            raise CorruptStoreError(f"store {self._path}: meta unreadable: {exc}") from exc
        return None if row is None else str(row[0])

    # -------------------------------------------------------------------------- close

    def close(self) -> None:
        """Flush, stop the writer, release the lock. Idempotent.

        Raises:
            StoreError: writes could not be made durable before closing (they are lost;
                the message says how many and why). The store is closed anyway.
        """
        with self._lock:
            if self._closed:
                return
            if threading.current_thread() is self._writer:
                raise StoreError("close() cannot be called from a durable listener")
            self._closed = True
            self._stopping = True
            self._work.notify()
        self._writer.join()
        atexit.unregister(self._close_at_exit)
        with self._rlock:
            self._rconn.close()
        try:
            self._wconn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:  # the WAL stays and is replayed on the next open
            _log.warning("store %s: checkpoint at close failed: %s", self._path, exc)
        self._wconn.close()
        self._file_lock.release()
        if self._lost:
            raise StoreError(
                f"store {self._path} closed with {self._lost} writes not durable: {self._error}"
            ) from self._error

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except StoreError as exc:
            _log.error("store %s: close at exit failed: %s", self._path, exc)

    # ------------------------------------------------------------- caller-side helpers

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"store {self._path} is closed")

    def _check_usable(self) -> None:
        self._check_open()
        if self._error is not None:
            raise type(self._error)(
                f"{self._error} (no new writes accepted until it succeeds)"
            ) from self._error.__cause__

    def _check_not_writer(self) -> None:
        """Refuse (before queueing anything) a wait that would deadlock the writer."""
        if threading.current_thread() is self._writer:
            raise StoreError("waiting for the store from its durable listener would deadlock")

    def _enqueue(self, item: tuple[Any, ...]) -> int:
        """Queue ``item`` (lock held) and return its ticket."""
        if not self._pending:
            self._work.notify()
        self._pending.append(item)
        self._ticket += 1
        return self._ticket

    def _wait(self, ticket: int, timeout_s: float | None) -> None:
        """Wait (lock held) until ``ticket`` is committed.

        Raises ``StoreError`` when a commit attempt that started after this call (so one
        that includes ``ticket``) fails: a failure seen before the call does not count,
        which lets ``flush()`` retry after the cause (disk full) was fixed.
        """
        if self._committed_ticket >= ticket:
            return
        self._check_not_writer()
        self._urgent = True
        self._work.notify()
        first_attempt = self._attempts_started + 1
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._committed_ticket < ticket:
            if self._error is not None and self._attempts_done >= first_attempt:
                raise type(self._error)(str(self._error)) from self._error.__cause__
            if not self._writer.is_alive():
                raise StoreError(f"store {self._path}: writer stopped; writes not durable")
            if deadline is None:
                self._done.wait()
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreError(
                    f"store {self._path}: flush timed out after {timeout_s}s with "
                    f"{ticket - self._committed_ticket} writes not yet durable"
                )
            self._done.wait(remaining)

    # ------------------------------------------------------------------------- writer

    def _run(self) -> None:
        batch: list[tuple[Any, ...]] = []
        failures = 0
        while True:
            with self._lock:
                if failures:
                    if not (self._stopping or self._urgent):
                        self._work.wait(min(0.01 * 2**failures, _RETRY_DELAY_S_MAX))
                else:
                    self._wait_for_work()
                batch.extend(self._pending)
                self._pending = []
                end_ticket = self._ticket
                self._urgent = False
                stopping = self._stopping
                if batch:
                    self._attempts_started += 1
            if not batch:
                if stopping:
                    return
                continue
            self._last_commit_at = time.monotonic()
            try:
                durable = self._commit(batch)
            except Exception as exc:
                failures += 1
                # A malformed file (SQLITE_CORRUPT, NOTADB) is corruption, a full disk (or
                # size limit) is StoreFullError; the rest (read-only, I/O) is the environment.
                kind = _error_kind(exc)
                error = kind(
                    f"store {self._path}: commit of {len(batch)} writes failed: "
                    f"{_describe(exc)}; they are kept and retried"
                )
                error.__cause__ = exc
                if failures == 1 or failures % 20 == 0:
                    _log.error("%s (attempt %d)", error, failures)
                with self._lock:
                    self._attempts_done += 1
                    self._error = error
                    self._done.notify_all()
                    if stopping and failures >= _CLOSE_ATTEMPTS_MAX:
                        self._lost = len(batch)
                        return
                continue
            failures = 0
            batch = []
            with self._lock:
                self._attempts_done += 1
                self._committed_ticket = end_ticket
                self._error = None
                advanced = durable > self._durable_op_id
                self._durable_op_id = durable
                listeners = list(self._listeners) if advanced else []
                self._done.notify_all()
            for callback in listeners:
                try:
                    callback(OpId(durable))
                except Exception:  # a listener's bug must not stop durability
                    _log.exception("store %s: durable listener %r failed", self._path, callback)

    def _wait_for_work(self) -> None:
        """Block (lock held) until there is a batch to commit, or a stop."""
        while not self._pending and not self._stopping:
            self._work.wait()
        if self.durability is Durability.BATCH:
            deadline = self._last_commit_at + self._interval_s
            while not (self._stopping or self._urgent):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._work.wait(remaining)

    def _commit(self, batch: list[tuple[Any, ...]]) -> int:
        """Write ``batch`` in one transaction; return the highest durable op id.

        Writes are idempotent (explicit ids, INSERT OR REPLACE), so a batch whose COMMIT
        reported failure after all can be retried safely.
        """
        conn = self._wconn
        last_op_id = self._w_last_op_id
        applied_seq = self._w_applied_seq
        tail_upto = self._w_tail_upto
        tail_rows: list[tuple[int, bytes]] = []
        outbox_rows: list[tuple[int, int, str, float]] = []

        def write_rows() -> None:
            if tail_rows:
                conn.executemany("INSERT OR REPLACE INTO tail (id, data) VALUES (?, ?)", tail_rows)
                tail_rows.clear()
            if outbox_rows:
                conn.executemany(
                    "INSERT OR REPLACE INTO outbox (op_id, tail_id, op, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    outbox_rows,
                )
                outbox_rows.clear()

        conn.execute("BEGIN IMMEDIATE")
        try:
            for item in batch:
                kind = item[0]
                if kind == _LOCAL:
                    _, tail_id, op_id, data, op_text, created_at = item
                    tail_rows.append((tail_id, data))
                    outbox_rows.append((op_id, tail_id, op_text, created_at))
                    last_op_id = max(last_op_id, op_id)
                elif kind == _REMOTE:
                    _, tail_id, data, seq = item
                    tail_rows.append((tail_id, data))
                    if seq is not None:
                        applied_seq = max(applied_seq, seq)
                elif kind == _APPLIED:
                    applied_seq = max(applied_seq, item[1])
                elif kind == _APPLIED_RESET:
                    applied_seq = item[1]
                elif kind == _ACK:
                    write_rows()
                    op_id = item[1]
                    # A row the snapshot covers was kept only for this entry.
                    conn.execute(
                        "DELETE FROM tail WHERE id <= ? AND id = "
                        "(SELECT tail_id FROM outbox WHERE op_id = ?)",
                        (tail_upto, op_id),
                    )
                    conn.execute("DELETE FROM outbox WHERE op_id = ?", (op_id,))
                elif kind == _SNAPSHOT:
                    write_rows()
                    _, tail_upto, data = item
                    conn.execute(
                        "INSERT OR REPLACE INTO snapshot (id, data, tail_upto) VALUES (1, ?, ?)",
                        (data, tail_upto),
                    )
                    conn.execute(
                        "DELETE FROM tail WHERE id <= ? AND id NOT IN (SELECT tail_id FROM outbox)",
                        (tail_upto,),
                    )
                elif kind == _META:
                    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", item[1:])
                else:  # pragma: no cover - the enqueue sites are above
                    raise AssertionError(f"unknown queue item kind {kind}")
            write_rows()
            if last_op_id != self._w_last_op_id or applied_seq != self._w_applied_seq:
                conn.execute(
                    "UPDATE state SET last_op_id = ?, applied_seq = ? WHERE id = 1",
                    (last_op_id, applied_seq),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as exc:
                    _log.warning("store %s: rollback failed: %s", self._path, exc)
            raise
        self._w_last_op_id = last_op_id
        self._w_applied_seq = applied_seq
        self._w_tail_upto = tail_upto
        return last_op_id


def _error_kind(exc: BaseException) -> type[StoreError]:
    """The error class a failed commit is reported as."""
    if type(exc) is sqlite3.DatabaseError:
        return CorruptStoreError
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_FULL:
        return StoreFullError
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return StoreFullError
    return StoreError


def _describe(exc: BaseException) -> str:
    """Name a commit failure for a person: SQLite's error name says disk full vs I/O."""
    name = getattr(exc, "sqlite_errorname", None)
    detail = f"{type(exc).__name__}: {exc}"
    return f"{detail} ({name})" if name else detail
