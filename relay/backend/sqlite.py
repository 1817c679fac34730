"""SQLite backend: the relay's embedded default storage (one file, WAL mode).

Every call but ``append`` runs on one dedicated thread that owns a connection, so the event
loop never waits for a read, a snapshot or a trim. ``append`` is one transaction per batch
(group commit); with ``fsync=True`` (``synchronous=FULL``) a returned append survives power
loss, with ``fsync=False`` (``NORMAL``) it survives a process crash (kill -9) but maybe not a
power cut.

``append`` commits on the event loop itself, through a second connection, while the disk
is fast (recent commits, fsync included, took less than ``inline_commit_s``). A commit of
one small update then costs a fraction of a millisecond, less than handing it to the thread
and back (a queue, two wake-ups, the GIL passed back and forth several times), which was
most of the relay's CPU per update at a steady rate and most of its fan-out latency. When a
commit is slow (a slow disk, a large batch) appends move to the thread until commits are
fast again, so a slow disk stalls the loop once, not on every commit. The loop's connection
never waits for a lock: when a write on the thread holds it, that append waits on the
thread instead. Its checkpoints (copying the WAL back into the database) run on the thread,
and appends wait behind them there.

Owns the schema and the SQL. Imports only the backend interface and ``crdtstate._ids``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, TypeVar

from crdtstate._ids import Namespace, OpId, ReplicaId, Seq
from relay.backend.base import (
    AppendResult,
    BackendError,
    LogEntry,
    NamespaceMeta,
    NewEntry,
    ReplicaRecord,
    StoredSnapshot,
)

__all__ = ["SqliteBackend"]

_T = TypeVar("_T")

_log = logging.getLogger("relay.backend.sqlite")

_COMMIT_PEAK_DECAY: Final = 0.9
"""Each commit lowers the remembered slowest commit by this factor: after one slow commit
(or a slow run of them) about twenty fast ones bring appends back onto the loop."""
_CHECKPOINT_COMMITS: Final = 500
_CHECKPOINT_BYTES: Final = 4 * 1024 * 1024
"""Loop commits (or update bytes) after which a checkpoint is started on the thread: every
commit adds at least one page to the WAL, and without checkpoints it would grow forever."""

_SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS namespaces (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    incarnation TEXT NOT NULL,
    created_at REAL NOT NULL,
    head INTEGER NOT NULL DEFAULT 0,
    trimmed_below INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS log (
    ns INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    origin TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (ns, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ops (
    ns INTEGER NOT NULL,
    replica TEXT NOT NULL,
    op INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (ns, replica, op)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    ns INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS replicas (
    ns INTEGER NOT NULL,
    replica TEXT NOT NULL,
    public_key BLOB NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    applied_seq INTEGER NOT NULL DEFAULT 0,
    heartbeat TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (ns, replica)
) WITHOUT ROWID;
"""


class SqliteBackend:
    """:class:`relay.backend.base.Backend` over one SQLite file.

    Args:
        path: the database file (its directory is created).
        fsync: ``synchronous=FULL`` when True, ``NORMAL`` otherwise.
        inline_commit_s: appends commit on the event loop while recent commits took less
            than this (seconds); 0 commits every append on the thread.
    """

    def __init__(self, path: Path, *, fsync: bool = True, inline_commit_s: float = 0.002) -> None:
        self.path = path
        self._fsync = fsync
        self._inline_commit_s = inline_commit_s
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._ns_ids: dict[str, int] = {}
        self._commit_peak_s = 0.0
        self._since_checkpoint = (0, 0)
        self._checkpoint: asyncio.Future[None] | None = None
        self.commits_inline = 0
        """Appends committed on the event loop (for tests and diagnosis)."""
        self.commits_threaded = 0
        """Appends committed on the thread."""
        self.checkpoints = 0
        """WAL checkpoints started for the loop's commits that completed."""

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        executor = self._executor
        if executor is None:
            raise BackendError("sqlite backend is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._conn
        if conn is None:
            raise BackendError("sqlite backend is closed")
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            raise self._failed(conn, exc) from exc

    def _failed(self, conn: sqlite3.Connection, exc: sqlite3.Error) -> BackendError:
        """Roll back what ``conn`` left open; the error to raise in its place."""
        if conn.in_transaction:
            conn.rollback()
        return BackendError(f"sqlite {self.path}: {exc}")

    def _ns_id(self, conn: sqlite3.Connection, namespace: str) -> int:
        ns_id = self._ns_ids.get(namespace)
        if ns_id is not None:
            return ns_id
        row = conn.execute("SELECT id FROM namespaces WHERE name = ?", (namespace,)).fetchone()
        if row is None:
            raise BackendError(f"namespace {namespace!r} has no storage (open_namespace first)")
        self._ns_ids[namespace] = int(row[0])
        return int(row[0])

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Open (and create) the database; see :meth:`Backend.open`."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-sqlite")
        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._executor, self._connect)
            if self._inline_commit_s > 0:
                self._writer = self._connect_writer()
        except (sqlite3.Error, OSError) as exc:
            if self._conn is not None:
                await loop.run_in_executor(self._executor, self._conn.close)
                self._conn = None
            self._executor.shutdown(wait=False)
            self._executor = None
            raise BackendError(f"cannot open {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if self._fsync else 'NORMAL'}")
        conn.execute("PRAGMA busy_timeout=5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, _SCHEMA_VERSION):
            conn.close()
            raise sqlite3.DatabaseError(
                f"schema version {version}, this relay understands {_SCHEMA_VERSION}"
            )
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        return conn

    def _connect_writer(self) -> sqlite3.Connection:
        """The event loop's connection (appends only): it never waits for a lock
        (``busy_timeout=0``) and never checkpoints (the thread does, see :meth:`append`).
        The database is already in WAL mode, which is a property of the file."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        try:
            conn.execute(f"PRAGMA synchronous={'FULL' if self._fsync else 'NORMAL'}")
            conn.execute("PRAGMA busy_timeout=0")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            # Appends touch the right edge of a few b-trees: a small page cache holds them.
            conn.execute("PRAGMA cache_size=-512")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        """Close the database; see :meth:`Backend.close`."""
        executor = self._executor
        if executor is None:
            return
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

        def _close(conn: sqlite3.Connection) -> None:
            conn.close()

        try:
            await self._run(_close)
        finally:
            self._conn = None
            self._executor = None
            executor.shutdown(wait=True)

    # -- namespaces -------------------------------------------------------------------------

    async def open_namespace(self, namespace: Namespace) -> NamespaceMeta:
        """See :meth:`Backend.open_namespace`."""

        def _open(conn: sqlite3.Connection) -> NamespaceMeta:
            row = conn.execute(
                "SELECT id, incarnation, head, trimmed_below FROM namespaces WHERE name = ?",
                (namespace,),
            ).fetchone()
            if row is None:
                incarnation = secrets.token_hex(16)
                conn.execute("BEGIN IMMEDIATE")
                cur = conn.execute(
                    "INSERT INTO namespaces (name, incarnation, created_at) VALUES (?, ?, ?)",
                    (namespace, incarnation, time.time()),
                )
                conn.execute("COMMIT")
                assert cur.lastrowid is not None
                self._ns_ids[namespace] = cur.lastrowid
                return NamespaceMeta(incarnation, Seq(0), Seq(0))
            self._ns_ids[namespace] = int(row[0])
            return NamespaceMeta(str(row[1]), Seq(int(row[2])), Seq(int(row[3])))

        return await self._run(_open)

    async def namespaces(self) -> list[Namespace]:
        """See :meth:`Backend.namespaces`."""

        def _list(conn: sqlite3.Connection) -> list[Namespace]:
            rows = conn.execute("SELECT name FROM namespaces ORDER BY name").fetchall()
            return [Namespace(str(r[0])) for r in rows]

        return await self._run(_list)

    # -- log --------------------------------------------------------------------------------

    async def append(self, namespace: Namespace, entries: Sequence[NewEntry]) -> list[AppendResult]:
        """See :meth:`Backend.append`."""
        if not entries:
            return []

        def _append(conn: sqlite3.Connection) -> list[AppendResult]:
            ns_id = self._ns_id(conn, namespace)
            conn.execute("BEGIN IMMEDIATE")
            head = int(
                conn.execute("SELECT head FROM namespaces WHERE id = ?", (ns_id,)).fetchone()[0]
            )
            results: list[AppendResult] = []
            seen: dict[tuple[str, int], int] = {}
            log_rows: list[tuple[int, int, str, bytes]] = []
            op_rows: list[tuple[int, str, int, int]] = []
            lookup = "SELECT seq FROM ops WHERE ns = ? AND replica = ? AND op = ?"
            for entry in entries:
                if entry.op_id > 0 and entry.replica_id is not None:
                    key = (entry.replica_id, entry.op_id)
                    original = seen.get(key)
                    if original is None:
                        row = conn.execute(lookup, (ns_id, *key)).fetchone()
                        original = None if row is None else int(row[0])
                    if original is not None:
                        results.append(AppendResult(Seq(original), True))
                        continue
                    head += 1
                    seen[key] = head
                    op_rows.append((ns_id, entry.replica_id, entry.op_id, head))
                else:
                    head += 1
                log_rows.append((ns_id, head, entry.origin, entry.update))
                results.append(AppendResult(Seq(head), False))
            conn.executemany(
                "INSERT INTO log (ns, seq, origin, data) VALUES (?, ?, ?, ?)", log_rows
            )
            if op_rows:
                conn.executemany(
                    "INSERT INTO ops (ns, replica, op, seq) VALUES (?, ?, ?, ?)", op_rows
                )
            conn.execute("UPDATE namespaces SET head = ? WHERE id = ?", (head, ns_id))
            conn.execute("COMMIT")
            return results

        writer = self._writer
        if (
            writer is not None
            and self._checkpoint is None
            and self._commit_peak_s < self._inline_commit_s
        ):
            started = time.perf_counter()
            inline = self._append_inline(writer, _append)
            if inline is not None:
                self._commit_took(time.perf_counter() - started)
                self.commits_inline += 1
                self._after_inline_commit(entries)
                return inline

        def _timed_append(conn: sqlite3.Connection) -> list[AppendResult]:
            started = time.perf_counter()
            results = _append(conn)
            self._commit_took(time.perf_counter() - started)
            return results

        results = await self._run(_timed_append)
        self.commits_threaded += 1
        return results

    def _append_inline(
        self,
        writer: sqlite3.Connection,
        fn: Callable[[sqlite3.Connection], list[AppendResult]],
    ) -> list[AppendResult] | None:
        """``fn`` on the loop's connection; None (nothing written) when another connection
        holds the write lock, so the caller waits for it on the thread instead."""
        try:
            return fn(writer)
        except sqlite3.Error as exc:
            failure = self._failed(writer, exc)
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                return None
            raise failure from exc

    def _commit_took(self, seconds: float) -> None:
        # A decaying peak: one slow commit sends the next ones to the thread.
        self._commit_peak_s = max(seconds, self._commit_peak_s * _COMMIT_PEAK_DECAY)

    def _after_inline_commit(self, entries: Sequence[NewEntry]) -> None:
        """Start a WAL checkpoint on the thread after enough commits on the loop's
        connection (which never checkpoints itself)."""
        commits, size = self._since_checkpoint
        commits += 1
        for entry in entries:
            size += len(entry.update)
        executor = self._executor
        if (
            (commits < _CHECKPOINT_COMMITS and size < _CHECKPOINT_BYTES)
            or self._checkpoint is not None
            or executor is None
        ):
            self._since_checkpoint = (commits, size)
            return
        self._since_checkpoint = (0, 0)
        loop = asyncio.get_running_loop()
        checkpoint = loop.run_in_executor(executor, self._call, _checkpoint_wal)
        checkpoint.add_done_callback(self._checkpoint_done)
        self._checkpoint = checkpoint

    def _checkpoint_done(self, future: asyncio.Future[None]) -> None:
        self._checkpoint = None
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            self.checkpoints += 1
        else:
            # Not fatal: the WAL keeps every commit; the next checkpoint tries again.
            _log.warning("wal checkpoint failed", extra={"path": str(self.path), "error": str(exc)})

    async def read_after(self, namespace: Namespace, seq: Seq, limit: int) -> list[LogEntry]:
        """See :meth:`Backend.read_after`."""

        def _read(conn: sqlite3.Connection) -> list[LogEntry]:
            ns_id = self._ns_id(conn, namespace)
            rows = conn.execute(
                "SELECT seq, origin, data FROM log WHERE ns = ? AND seq > ? ORDER BY seq LIMIT ?",
                (ns_id, seq, limit),
            ).fetchall()
            return [LogEntry(Seq(int(r[0])), str(r[1]), bytes(r[2])) for r in rows]

        return await self._run(_read)

    async def head(self, namespace: Namespace) -> Seq:
        """See :meth:`Backend.head`."""

        def _head(conn: sqlite3.Connection) -> Seq:
            ns_id = self._ns_id(conn, namespace)
            row = conn.execute("SELECT head FROM namespaces WHERE id = ?", (ns_id,)).fetchone()
            return Seq(int(row[0]))

        return await self._run(_head)

    async def lookup_op(
        self, namespace: Namespace, replica_id: ReplicaId, op_id: OpId
    ) -> Seq | None:
        """The seq an op was sequenced as, or None (used by tests and tools)."""

        def _lookup(conn: sqlite3.Connection) -> Seq | None:
            ns_id = self._ns_id(conn, namespace)
            row = conn.execute(
                "SELECT seq FROM ops WHERE ns = ? AND replica = ? AND op = ?",
                (ns_id, replica_id, op_id),
            ).fetchone()
            return None if row is None else Seq(int(row[0]))

        return await self._run(_lookup)

    # -- snapshots --------------------------------------------------------------------------

    async def write_snapshot(self, namespace: Namespace, snapshot: StoredSnapshot) -> None:
        """See :meth:`Backend.write_snapshot`."""

        def _write(conn: sqlite3.Connection) -> None:
            ns_id = self._ns_id(conn, namespace)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO snapshots (ns, seq, data, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (ns) DO UPDATE SET seq = excluded.seq, data = excluded.data, "
                "created_at = excluded.created_at WHERE excluded.seq >= snapshots.seq",
                (ns_id, snapshot.seq, snapshot.update, time.time()),
            )
            conn.execute("COMMIT")

        await self._run(_write)

    async def read_snapshot(self, namespace: Namespace) -> StoredSnapshot | None:
        """See :meth:`Backend.read_snapshot`."""

        def _read(conn: sqlite3.Connection) -> StoredSnapshot | None:
            ns_id = self._ns_id(conn, namespace)
            row = conn.execute("SELECT seq, data FROM snapshots WHERE ns = ?", (ns_id,)).fetchone()
            return None if row is None else StoredSnapshot(Seq(int(row[0])), bytes(row[1]))

        return await self._run(_read)

    async def trim_below(self, namespace: Namespace, seq: Seq) -> int:
        """See :meth:`Backend.trim_below`."""

        def _trim(conn: sqlite3.Connection) -> int:
            ns_id = self._ns_id(conn, namespace)
            row = conn.execute("SELECT seq FROM snapshots WHERE ns = ?", (ns_id,)).fetchone()
            # Never drop what no snapshot covers: the log is then the only copy.
            limit = min(int(seq), int(row[0]) + 1 if row is not None else 0)
            if limit <= 1:
                return 0
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.execute("DELETE FROM log WHERE ns = ? AND seq < ?", (ns_id, limit))
            conn.execute(
                "UPDATE namespaces SET trimmed_below = MAX(trimmed_below, ?) WHERE id = ?",
                (limit, ns_id),
            )
            conn.execute("COMMIT")
            return cur.rowcount

        return await self._run(_trim)

    # -- replicas ---------------------------------------------------------------------------

    async def bind_replica(
        self, namespace: Namespace, replica_id: ReplicaId, public_key: bytes, now: float
    ) -> bytes:
        """See :meth:`Backend.bind_replica`."""

        def _bind(conn: sqlite3.Connection) -> bytes:
            ns_id = self._ns_id(conn, namespace)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO replicas (ns, replica, public_key, first_seen, last_seen) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (ns, replica) DO NOTHING",
                (ns_id, replica_id, public_key, now, now),
            )
            row = conn.execute(
                "SELECT public_key FROM replicas WHERE ns = ? AND replica = ?",
                (ns_id, replica_id),
            ).fetchone()
            conn.execute("COMMIT")
            return bytes(row[0])

        return await self._run(_bind)

    async def record_replica(
        self,
        namespace: Namespace,
        replica_id: ReplicaId,
        applied_seq: Seq,
        heartbeat: str | None,
        now: float,
    ) -> None:
        """See :meth:`Backend.record_replica`."""

        def _record(conn: sqlite3.Connection) -> None:
            ns_id = self._ns_id(conn, namespace)
            if heartbeat is None:
                conn.execute(
                    "UPDATE replicas SET applied_seq = ?, last_seen = ? "
                    "WHERE ns = ? AND replica = ?",
                    (applied_seq, now, ns_id, replica_id),
                )
            else:
                conn.execute(
                    "UPDATE replicas SET applied_seq = ?, last_seen = ?, heartbeat = ? "
                    "WHERE ns = ? AND replica = ?",
                    (applied_seq, now, heartbeat, ns_id, replica_id),
                )

        await self._run(_record)

    async def replicas(self, namespace: Namespace) -> list[ReplicaRecord]:
        """See :meth:`Backend.replicas`."""

        def _list(conn: sqlite3.Connection) -> list[ReplicaRecord]:
            ns_id = self._ns_id(conn, namespace)
            rows = conn.execute(
                "SELECT replica, public_key, applied_seq, last_seen, heartbeat FROM replicas "
                "WHERE ns = ? ORDER BY replica",
                (ns_id,),
            ).fetchall()
            return [
                ReplicaRecord(
                    ReplicaId(str(r[0])), bytes(r[1]), Seq(int(r[2])), float(r[3]), str(r[4])
                )
                for r in rows
            ]

        return await self._run(_list)


def _checkpoint_wal(conn: sqlite3.Connection) -> None:
    """Copy the WAL into the database so that the next commit starts the WAL over (RESTART).

    A PASSIVE checkpoint would not wait for writers, and with commits arriving all the time
    it never catches up: the WAL would only grow. RESTART needs the write lock; appends go
    to the thread while a checkpoint is running (behind it, so it never starves), and the
    loop never waits for it.
    """
    conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
