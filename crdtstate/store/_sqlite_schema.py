"""On-disk layout of a SQLite store: open, recognise, create, refuse.

A crdtstate store is a SQLite database whose header carries :data:`APPLICATION_ID` and
whose ``state`` row records :data:`FORMAT_VERSION`. Tables::

    state     one row: format_version, last_op_id (highest durable op id ever), applied_seq
    meta      caller's key/value strings
    snapshot  at most one row: the latest snapshot and tail_upto, the last tail id it covers
    tail      every update (local or remote) by tail id; rows <= tail_upto are covered by the
              snapshot and survive only while an unacknowledged outbox entry points at them
    outbox    unacknowledged local writes: op_id -> tail_id, semantic op (JSON), created_at

Imports only the error tree; must not import pycrdt or anything above the store.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from crdtstate.errors import CorruptStoreError, StoreError
from crdtstate.store._idset import OpIdSet

APPLICATION_ID: Final = 0x43525354  # "CRST" in the SQLite header
FORMAT_VERSION: Final = 1

_DDL: Final = (
    """CREATE TABLE state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        format_version INTEGER NOT NULL,
        last_op_id INTEGER NOT NULL,
        applied_seq INTEGER NOT NULL)""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE snapshot (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        data BLOB NOT NULL,
        tail_upto INTEGER NOT NULL)""",
    "CREATE TABLE tail (id INTEGER PRIMARY KEY, data BLOB NOT NULL)",
    """CREATE TABLE outbox (
        op_id INTEGER PRIMARY KEY,
        tail_id INTEGER NOT NULL,
        op TEXT NOT NULL,
        created_at REAL NOT NULL)""",
    f"INSERT INTO state VALUES (1, {FORMAT_VERSION}, 0, 0)",
    f"PRAGMA application_id = {APPLICATION_ID}",
)
_SQLITE_HEADER: Final = b"SQLite format 3\x00"
_TABLES: Final = frozenset({"state", "meta", "snapshot", "tail", "outbox"})


class StoreVersionError(StoreError):
    """The store was written by a crdtstate with another (newer) format version."""


@dataclass(frozen=True, slots=True)
class OpenedState:
    """What a store needs to know about its file right after opening it."""

    last_op_id: int
    applied_seq: int
    tail_upto: int
    last_tail_id: int
    tail_count: int
    tail_bytes: int
    unacked: OpIdSet


def connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode (transactions are explicit).

    Raises:
        CorruptStoreError: ``path`` has content that is not a SQLite database (SQLite
            would silently treat a short file as empty and overwrite it).
        StoreError: the file cannot be opened at all.
    """
    _check_header(path)
    try:
        conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=30.0
        )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from exc
    return conn


def _check_header(path: Path) -> None:
    try:
        with path.open("rb") as file:
            header = file.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return
    except IsADirectoryError as exc:
        raise StoreError(f"cannot open store {path}: it is a directory") from exc
    except OSError as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from exc
    if header and header != _SQLITE_HEADER:
        raise CorruptStoreError(
            f"{path} is not a readable SQLite database: it does not start with the SQLite header"
        )


def prepare(conn: sqlite3.Connection, path: Path) -> OpenedState:
    """Recognise (or create) the store in ``conn`` and read its counters.

    Raises:
        CorruptStoreError: not a SQLite file, not a crdtstate store, or unreadable.
        StoreVersionError: a crdtstate store of an unknown format version.
        StoreError: the file cannot be written (read-only, disk full, ...).
    """
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    except sqlite3.OperationalError as exc:
        raise StoreError(f"cannot read store {path}: {exc}") from exc
    except (sqlite3.DatabaseError, UnicodeError) as exc:
        raise CorruptStoreError(f"{path} is not a readable SQLite database: {exc}") from exc
    if app_id == 0 and not tables:
        _create(conn, path)
    elif app_id != APPLICATION_ID:
        shown = ", ".join(sorted(tables)[:8]) or "none"
        raise CorruptStoreError(
            f"{path} is not a crdtstate store (SQLite application_id {app_id:#x}, tables: {shown})"
        )
    else:
        _check_version(conn, path, tables)
    _set_pragmas(conn, path)
    return _read_state(conn, path)


def _create(conn: sqlite3.Connection, path: Path) -> None:
    try:
        # WAL first: it is a property of the file and cannot change inside a transaction.
        _set_pragmas(conn, path)
        conn.execute("BEGIN IMMEDIATE")
        for statement in _DDL:
            conn.execute(statement)
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise StoreError(f"cannot create store {path}: {exc}") from exc
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a new file's directory entry durable (a power loss could otherwise drop it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as exc:
        raise StoreError(f"cannot open directory {directory}: {exc}") from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        raise StoreError(f"cannot fsync directory {directory}: {exc}") from exc
    finally:
        os.close(fd)


def _check_version(conn: sqlite3.Connection, path: Path, tables: set[str]) -> None:
    try:
        row = conn.execute("SELECT format_version FROM state WHERE id = 1").fetchone()
    except (sqlite3.DatabaseError, UnicodeError) as exc:
        raise CorruptStoreError(f"store {path} has no readable state row: {exc}") from exc
    if row is None or not isinstance(row[0], int):
        raise CorruptStoreError(f"store {path} has no format version in its state row")
    if row[0] != FORMAT_VERSION:
        raise StoreVersionError(
            f"store {path} has format version {row[0]}; this crdtstate reads only version "
            f"{FORMAT_VERSION} (was it written by a newer crdtstate?)"
        )
    missing = _TABLES - tables
    if missing:
        raise CorruptStoreError(f"store {path} lacks tables: {', '.join(sorted(missing))}")


def _set_pragmas(conn: sqlite3.Connection, path: Path) -> None:
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        # FULL: every commit fsyncs the WAL, so a returned commit survives kill -9 and power loss.
        conn.execute("PRAGMA synchronous = FULL")
    except sqlite3.OperationalError as exc:
        raise StoreError(f"cannot configure store {path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise CorruptStoreError(f"{path} is not a readable SQLite database: {exc}") from exc
    if str(mode).lower() != "wal":
        raise StoreError(f"store {path} cannot use WAL mode (journal_mode stayed {mode!r})")


def _read_state(conn: sqlite3.Connection, path: Path) -> OpenedState:
    try:
        conn.execute("BEGIN")
        try:
            last_op_id, applied_seq = conn.execute(
                "SELECT last_op_id, applied_seq FROM state WHERE id = 1"
            ).fetchone()
            snap = conn.execute("SELECT tail_upto FROM snapshot WHERE id = 1").fetchone()
            tail_upto = int(snap[0]) if snap else 0
            count, size, max_id = conn.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0), coalesce(max(id), 0) "
                "FROM tail WHERE id > ?",
                (tail_upto,),
            ).fetchone()
            pending, low, max_op = conn.execute(
                "SELECT count(*), coalesce(min(op_id), 0), coalesce(max(op_id), 0) FROM outbox"
            ).fetchone()
            if pending == max_op - low + 1:  # one run, the usual case: no ids to read
                unacked = OpIdSet(range(low, max_op + 1))
            else:
                ids = conn.execute("SELECT op_id FROM outbox")
                unacked = OpIdSet(others=(row[0] for row in ids))
        finally:
            conn.execute("COMMIT")
    except (sqlite3.DatabaseError, TypeError, ValueError) as exc:
        raise CorruptStoreError(f"store {path} cannot be read: {exc}") from exc
    if not all(isinstance(v, int) for v in (last_op_id, applied_seq, count, size, max_id)):
        raise CorruptStoreError(f"store {path} has a malformed state row")
    return OpenedState(
        last_op_id=max(last_op_id, max_op),
        applied_seq=applied_seq,
        tail_upto=tail_upto,
        last_tail_id=max(max_id, tail_upto),
        tail_count=count,
        tail_bytes=size,
        unacked=unacked,
    )
