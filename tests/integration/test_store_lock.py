"""The store's guarantees that need real processes: the exclusive lock across processes,
kill -9 at random moments (SYNC appends and flushed BATCH appends survive, nothing half
written is loaded), and a real write failure (a file size limit) reported then recovered.

The child is ``_store_writer.py``; every child is killed by pid in a ``finally``.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from crdtstate.errors import StoreLockedError
from crdtstate.store import Durability, open_store

_WRITER = Path(__file__).with_name("_store_writer.py")
_LINE_TIMEOUT_S = 30.0


class Child:
    """A ``_store_writer.py`` process whose stdout lines are read with a deadline."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(_WRITER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self, timeout_s: float = _LINE_TIMEOUT_S) -> str:
        try:
            line = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"child printed nothing for {timeout_s}s") from None
        if line is None:
            raise AssertionError(f"child exited early: {self.stderr()}")
        return line

    def rest(self) -> list[str]:
        """Every line until the child exits (it must exit within the timeout)."""
        lines: list[str] = []
        deadline = time.monotonic() + _LINE_TIMEOUT_S
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                return lines
            lines.append(line)
        raise AssertionError(f"child did not finish; got {lines}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=_LINE_TIMEOUT_S)
        self._reader.join(timeout=_LINE_TIMEOUT_S)

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read()[-2000:]

    def close(self) -> None:
        """Stop the child whatever state it is in, and release its pipes."""
        try:
            self.kill()
        finally:
            for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in started:
            child.close()


def _spawn(children: list[Child], *args: str) -> Child:
    child = Child(*args)
    children.append(child)
    return child


# ----------------------------------------------------------------------------- the lock


def test_second_process_is_refused_with_the_holders_pid(
    tmp_path: Path, children: list[Child]
) -> None:
    path = tmp_path / "ns.sqlite3"
    holder = _spawn(children, "hold", str(path))
    assert holder.next_line() == f"locked {holder.proc.pid}"
    with pytest.raises(StoreLockedError) as info:
        open_store(path, Durability.SYNC)
    assert str(path) in str(info.value)
    assert f"pid {holder.proc.pid}" in str(info.value)
    assert holder.proc.stdin is not None
    holder.proc.stdin.close()  # the holder closes cleanly...
    assert holder.rest() == ["closed"]
    with open_store(path, Durability.SYNC) as store:  # ...and the store is free again
        store.append_local(b"u", {"n": 1})


def test_a_killed_holder_releases_the_lock(tmp_path: Path, children: list[Child]) -> None:
    path = tmp_path / "ns.sqlite3"
    holder = _spawn(children, "hold", str(path))
    assert holder.next_line().startswith("locked")
    holder.kill()
    with open_store(path, Durability.SYNC) as store:
        assert store.load().tail == []


def test_a_child_process_is_refused_while_we_hold_the_store(
    tmp_path: Path, children: list[Child]
) -> None:
    path = tmp_path / "ns.sqlite3"
    with open_store(path, Durability.SYNC):
        (line,) = _spawn(children, "try", str(path)).rest()
    assert line.startswith("error StoreLockedError")
    assert f"pid {os.getpid()}" in line
    assert _spawn(children, "try", str(path)).rest() == ["opened"]


# ------------------------------------------------------------------------------ kill -9


@dataclass
class Survivors:
    """What a store file holds after a crash, by op id."""

    last_op_id: int
    present: set[int]


def _survivors(path: Path) -> Survivors:
    with open_store(path, Durability.SYNC) as store:
        state = store.load()
        outbox = store.outbox(limit=1_000_000)
    snapshot_ids = set(json.loads(state.snapshot)) if state.snapshot else set()
    tail_ids = [int(u[1:]) for u in state.tail if u.startswith(b"L")]
    assert len(tail_ids) == len(set(tail_ids)), "an update was loaded twice"
    for entry in outbox:  # every outbox entry is whole: its update and its op
        assert entry.update == b"L%d" % entry.op_id
        assert entry.op == {"n": entry.op_id}
    present = snapshot_ids | set(tail_ids) | {e.op_id for e in outbox}
    return Survivors(state.last_op_id, present)


def _kill_rounds(
    path: Path, children: list[Child], durability: Durability, rounds: int, seed: int
) -> int:
    """Run ``rounds`` writer processes, SIGKILL each at a random moment, check each time.

    Returns the number of op ids confirmed across all rounds.
    """
    rng = random.Random(seed)
    confirmed: set[int] = set()  # returned by a SYNC append or covered by a returned flush
    for round_no in range(rounds):
        child = _spawn(children, "crash", str(path), durability.value, str(seed + round_no))
        start = child.next_line()
        assert start.startswith("start "), start
        assert int(start.split()[1]) >= max(confirmed, default=0)
        for _ in range(rng.randint(0, 60)):
            kind, value = child.next_line().split()
            if kind == "ok" and durability is Durability.SYNC:
                confirmed.add(int(value))
            elif kind == "flushed":
                confirmed.update(range(1, int(value) + 1))
        child.kill()
        after = _survivors(path)
        missing = confirmed - after.present
        assert not missing, f"round {round_no}: confirmed op ids lost: {sorted(missing)[:10]}"
        # Nothing half written: the survivors are exactly op ids 1..last, no gaps.
        assert after.present == set(range(1, after.last_op_id + 1)), f"round {round_no}"
    return len(confirmed)


def test_sync_appends_survive_kill_9_at_random_moments(
    tmp_path: Path, children: list[Child]
) -> None:
    confirmed = _kill_rounds(tmp_path / "ns.sqlite3", children, Durability.SYNC, 24, seed=1)
    assert confirmed > 0


def test_flushed_batch_appends_survive_kill_9_at_random_moments(
    tmp_path: Path, children: list[Child]
) -> None:
    _kill_rounds(tmp_path / "ns.sqlite3", children, Durability.BATCH, 12, seed=100)


def test_a_process_exiting_without_close_still_commits_batch_writes(
    tmp_path: Path, children: list[Child]
) -> None:
    path = tmp_path / "ns.sqlite3"
    child = _spawn(children, "exit", str(path))
    assert child.rest() == ["appended 0"]  # nothing was durable when the script ended
    assert child.proc.wait(timeout=_LINE_TIMEOUT_S) == 0
    assert _survivors(path).present == set(range(1, 51))


# ---------------------------------------------------------------------- a failing disk


@pytest.mark.parametrize("durability", [Durability.SYNC, Durability.BATCH])
def test_a_write_failure_is_reported_then_recovered_without_loss(
    tmp_path: Path, children: list[Child], durability: Durability
) -> None:
    path = tmp_path / "ns.sqlite3"
    lines = _spawn(children, "full", str(path), durability.value).rest()
    by_kind: dict[str, list[str]] = {}
    for line in lines:
        kind, _, rest = line.partition(" ")
        by_kind.setdefault(kind, []).append(rest)
    assert "never-failed" not in by_kind, lines[-3:]
    (error,) = by_kind["error"]
    assert "commit of" in error and "SQLITE_" in error, error  # names the cause
    assert by_kind["flush-error"] != ["none"]
    assert by_kind["append-error"] != ["none"]
    assert by_kind["closed"] == [""]
    ok = [int(v) for v in by_kind["ok"]]
    (after,) = (int(v) for v in by_kind["ok-after"])
    with open_store(path, Durability.SYNC) as store:
        entries = {int(e.op_id): e for e in store.outbox(limit=10_000)}
    assert set(ok) | {after} <= set(entries)
    assert sorted(entries) == list(range(1, after + 1))  # the failed writes were kept
    assert entries[after].update == b"after"
