"""Group commit: a lone update commits at once; under load an update waits for company."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence

from crdtstate._ids import Namespace, Seq
from relay.backend.base import AppendResult, NewEntry
from relay.metrics import RelayMetrics
from relay.sequencer import Pending, Sequencer


class _Backend:
    """Appends in memory, taking ``commit_s`` of wall time per commit."""

    def __init__(self, commit_s: float) -> None:
        self.commit_s = commit_s
        self.head = 0
        self.batches: list[tuple[float, int]] = []

    async def append(self, namespace: Namespace, entries: Sequence[NewEntry]) -> list[AppendResult]:
        self.batches.append((time.monotonic(), len(entries)))
        await asyncio.sleep(self.commit_s)
        results = []
        for _ in entries:
            self.head += 1
            results.append(AppendResult(Seq(self.head), False))
        return results


def _sequencer(backend: _Backend, delay_s: float, done: list[int]) -> Sequencer:
    return Sequencer(
        Namespace("ns"),
        backend,  # type: ignore[arg-type]
        lambda batch, results: done.extend(int(r.seq) for r in results),
        lambda batch, exc: None,
        RelayMetrics(),
        batch_max=1000,
        pending_max=10000,
        commit_delay_s=delay_s,
    )


def _pending(n: int, sent_to_yjs: bool = False) -> Pending:
    entry = NewEntry(f"o{n}", None, 0, b"u")  # type: ignore[arg-type]
    return Pending(entry, None, ack=False, sent_to_yjs=sent_to_yjs)


async def test_lone_updates_do_not_wait() -> None:
    backend = _Backend(commit_s=0.0)
    done: list[int] = []
    seq = _sequencer(backend, delay_s=0.5, done=done)
    seq.start()
    try:
        started = time.monotonic()
        for n in range(3):
            seq.submit(_pending(n))
            await seq.flush()
        assert time.monotonic() - started < 0.25
        assert [size for _, size in backend.batches] == [1, 1, 1]
        assert done == [1, 2, 3]
    finally:
        await seq.stop()


async def test_under_load_updates_wait_for_company() -> None:
    backend = _Backend(commit_s=0.001)
    done: list[int] = []
    seq = _sequencer(backend, delay_s=0.05, done=done)
    seq.start()
    try:
        seq.submit(_pending(0))
        seq.submit(_pending(1))  # the first commit takes two: the namespace is busy
        await asyncio.sleep(0)
        for n in range(2, 12):
            seq.submit(_pending(n))
            await asyncio.sleep(0.002)
        await seq.flush()
    finally:
        await seq.stop()
    assert done == list(range(1, 13))  # every update, in order
    starts = [at for at, _ in backend.batches]
    assert all(b - a >= 0.045 for a, b in itertools.pairwise(starts))
    assert len(backend.batches) <= 3  # not one commit per update


async def test_a_round_after_a_pause_commits_once() -> None:
    """Clients writing in rounds: the first update of a round waits for the rest of it."""
    backend = _Backend(commit_s=0.003)
    done: list[int] = []
    seq = _sequencer(backend, delay_s=0.1, done=done)
    seq.start()
    try:
        for round_ in range(3):
            for n in range(5):
                seq.submit(_pending(round_ * 5 + n))
                await asyncio.sleep(0.001)  # the round trickles in
            await seq.flush()
            await asyncio.sleep(0.15)  # the clients are busy elsewhere
    finally:
        await seq.stop()
    assert done == list(range(1, 16))
    # The first round commits its first update alone (nothing says the namespace is busy
    # yet), the rest of it together; every later round is one commit.
    assert [size for _, size in backend.batches][-2:] == [5, 5]


async def test_quiet_only_while_updates_come_alone() -> None:
    # What decides whether plain Yjs clients get an update before its commit (relay/hub.py).
    backend = _Backend(commit_s=0.0)
    done: list[int] = []
    seq = _sequencer(backend, delay_s=0.0, done=done)
    seq.start()
    try:
        assert seq.quiet
        seq.submit(_pending(0))
        assert not seq.quiet  # an update waits for its commit
        await seq.flush()
        assert seq.quiet  # the last commit held one update
        seq.submit(_pending(1))
        seq.submit(_pending(2))
        await seq.flush()
        assert [size for _, size in backend.batches] == [1, 2]
        assert not seq.quiet  # under load the next update goes with its commit batch
        seq.submit(_pending(3))
        await seq.flush()
        assert seq.quiet
        assert done == [1, 2, 3, 4]
    finally:
        await seq.stop()


async def test_updates_sent_on_arrival_behind_a_slow_commit_stay_quiet() -> None:
    # A commit that stalls (an fsync taking 20 ms) with updates arriving one by one: they
    # were each sent to Yjs clients on arrival, so the next one is sent on arrival too.
    backend = _Backend(commit_s=0.05)
    done: list[int] = []
    seq = _sequencer(backend, delay_s=0.0, done=done)
    seq.start()
    try:
        seq.submit(_pending(0, sent_to_yjs=True))
        await asyncio.sleep(0.01)  # its commit is in flight
        assert seq.quiet
        seq.submit(_pending(1, sent_to_yjs=True))
        seq.submit(_pending(2, sent_to_yjs=True))
        assert seq.quiet
        # One held back (not sent on arrival): later ones wait too, to keep accept order.
        seq.submit(_pending(3))
        assert not seq.quiet
        await seq.flush()
        assert [size for _, size in backend.batches] == [1, 3]
        assert not seq.quiet  # the last commit held several updates: load
        seq.submit(_pending(4))
        await seq.flush()
        assert seq.quiet
        assert done == [1, 2, 3, 4, 5]
    finally:
        await seq.stop()
