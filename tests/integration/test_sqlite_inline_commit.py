"""The SQLite backend commits appends on the event loop while the disk is fast, and on its
thread otherwise (relay/backend/sqlite.py): real SQLite files, real fsync, real locks."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from pathlib import Path

from crdtstate._ids import Namespace, OpId, Seq
from relay.backend.base import NewEntry
from relay.backend.sqlite import SqliteBackend

NS = Namespace("inline")


def _entry(i: int, size: int = 20) -> NewEntry:
    return NewEntry(f"yjs:{i % 3}", None, OpId(0), bytes([i % 251]) * size)


async def _opened(path: Path, **options: float | bool) -> SqliteBackend:
    backend = SqliteBackend(path, **options)  # type: ignore[arg-type]
    await backend.open()
    await backend.open_namespace(NS)
    return backend


async def test_appends_commit_on_the_loop_when_the_disk_is_fast(tmp_path: Path) -> None:
    path = tmp_path / "relay.sqlite3"
    backend = await _opened(path, inline_commit_s=10.0)
    try:
        seqs = [(await backend.append(NS, [_entry(i)]))[0].seq for i in range(40)]
        assert seqs == [Seq(i) for i in range(1, 41)]
        assert (backend.commits_inline, backend.commits_threaded) == (40, 0)
        # The thread's connection sees every commit made on the loop's connection.
        assert await backend.head(NS) == Seq(40)
    finally:
        await backend.close()
    reopened = await _opened(path)
    try:
        entries = await reopened.read_after(NS, Seq(0), 100)
        assert [e.seq for e in entries] == [Seq(i) for i in range(1, 41)]
        assert [e.update for e in entries] == [_entry(i).update for i in range(40)]
    finally:
        await reopened.close()


async def test_a_slow_commit_moves_the_next_appends_to_the_thread(tmp_path: Path) -> None:
    # Every real commit takes longer than a nanosecond: only the first one runs on the loop.
    backend = await _opened(tmp_path / "relay.sqlite3", inline_commit_s=1e-9)
    try:
        results = [await backend.append(NS, [_entry(i), _entry(i + 100)]) for i in range(10)]
        assert [r.seq for batch in results for r in batch] == [Seq(i) for i in range(1, 21)]
        assert (backend.commits_inline, backend.commits_threaded) == (1, 9)
    finally:
        await backend.close()


async def test_zero_commits_everything_on_the_thread(tmp_path: Path) -> None:
    backend = await _opened(tmp_path / "relay.sqlite3", inline_commit_s=0.0)
    try:
        for i in range(5):
            await backend.append(NS, [_entry(i)])
        assert (backend.commits_inline, backend.commits_threaded) == (0, 5)
    finally:
        await backend.close()


async def test_a_held_write_lock_is_waited_for_on_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "relay.sqlite3"
    backend = await _opened(path, inline_commit_s=10.0)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    locked = threading.Event()
    release = threading.Event()

    def hold_lock() -> None:
        other.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(10)
        other.execute("COMMIT")

    holder = threading.Thread(target=hold_lock)
    holder.start()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        assert locked.wait(10)
        append = asyncio.create_task(backend.append(NS, [_entry(1)]))
        await asyncio.sleep(0.3)
        # The append waits for the lock on the thread; the loop kept running meanwhile.
        assert not append.done()
        assert ticks >= 5
        release.set()
        results = await asyncio.wait_for(append, 10)
        assert [r.seq for r in results] == [Seq(1)]
        assert (backend.commits_inline, backend.commits_threaded) == (0, 1)
        # The lock is free again: the next append is back on the loop.
        assert (await backend.append(NS, [_entry(2)]))[0].seq == Seq(2)
        assert backend.commits_inline == 1
    finally:
        release.set()
        ticker.cancel()
        holder.join(10)
        other.close()
        await backend.close()


async def test_the_wal_is_checkpointed_for_commits_on_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "relay.sqlite3"
    backend = await _opened(path, fsync=False, inline_commit_s=10.0)
    try:
        for i in range(3000):
            await backend.append(NS, [_entry(i, 100)])
            await asyncio.sleep(0)  # let a finished checkpoint report back
        for _ in range(100):
            if backend.checkpoints >= 1 and backend._checkpoint is None:
                break
            await asyncio.sleep(0.05)
        # An append that finds a checkpoint holding the lock commits on the thread.
        assert backend.commits_inline + backend.commits_threaded == 3000
        assert backend.commits_inline >= 2900
        assert backend.checkpoints >= 1
        # Each commit adds at least one page to the WAL (about two here): unchecked it would
        # hold 3,000 frames or more; it starts over after each checkpoint instead.
        log_frames = -1  # what SQLite answers while another checkpoint runs
        with contextlib.closing(sqlite3.connect(path)) as conn:
            for _ in range(100):
                log_frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
                if log_frames >= 0:
                    break
                await asyncio.sleep(0.05)
        assert 0 <= log_frames < 3000
        assert len(await backend.read_after(NS, Seq(0), 5000)) == 3000

    finally:
        await backend.close()
