"""Group commit of one namespace: accepted updates -> one backend append per batch -> seqs.

Accepted updates queue up while a commit is in flight; the next commit takes all of them
(up to ``batch_max``) in one transaction, so throughput grows with load while an idle
namespace commits each update at once. Under load (the previous commit took more than one
update) the oldest waiting update waits until it is ``commit_delay_s`` old before its commit
starts, so that the updates arriving meanwhile share its fsync and its fan-out (PostgreSQL's
``commit_delay``): a commit with fsync, and one socket write per subscriber after it, cost
far more CPU than the updates in it; without the delay, clients that write in rounds get
one commit for the first update of a round and another for the rest, and a quiet disk
commits every update or two on its own. While commits hold one update each (paced or
idle), nothing waits; updates that already waited for a slower commit do not wait again.

The backend assigns sequence numbers and deduplicates by (replica id, op id); results come
back in submission order and are handed to ``on_committed`` (acks and fan-out happen there,
after durability). A failed append hands the batch to ``on_failed``: nothing of it is
acknowledged.

Owns batching and backpressure. Imports the backend interface; knows nothing of websockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crdtstate._ids import Namespace
from relay.backend.base import AppendResult, Backend, BackendError, NewEntry
from relay.metrics import RelayMetrics

__all__ = ["Pending", "Sequencer"]

_log = logging.getLogger("relay.sequencer")


@dataclass(slots=True)
class Pending:
    """An accepted update waiting for its commit.

    Attributes:
        entry: what to append.
        peer: the connection that sent it (an opaque hub object), or None.
        ack: whether the sender gets an ack frame (replica connections do).
        sent_to_yjs: already sent to plain Yjs subscribers when it was accepted.
    """

    entry: NewEntry
    peer: Any
    ack: bool
    sent_to_yjs: bool = False


class Sequencer:
    """Commits one namespace's accepted updates in batches, in submission order.

    Args:
        namespace: the namespace.
        backend: where to append.
        on_committed: called with each committed batch and its results (same order).
        on_failed: called with a batch whose append failed and the error.
        metrics: relay metrics.
        batch_max: most updates per commit.
        pending_max: above this many waiting updates, :attr:`full` is true (callers stop
            reading from their sockets until :meth:`wait_room`).
        commit_delay_s: under load, how long the oldest waiting update waits for company
            before its commit starts (0 = commit as soon as the previous commit returns).
    """

    def __init__(
        self,
        namespace: Namespace,
        backend: Backend,
        on_committed: Callable[[list[Pending], list[AppendResult]], None],
        on_failed: Callable[[list[Pending], Exception], None],
        metrics: RelayMetrics,
        *,
        batch_max: int,
        pending_max: int,
        commit_delay_s: float = 0.0,
    ) -> None:
        self.namespace = namespace
        self._backend = backend
        self._on_committed = on_committed
        self._on_failed = on_failed
        self._metrics = metrics
        self._batch_max = batch_max
        self._pending_max = pending_max
        self._commit_delay_s = commit_delay_s
        self._last_batch = 0
        self._held_from_yjs = 0
        self._first_at = 0.0
        self._pending: list[Pending] = []
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._progress = asyncio.Condition()
        self._submitted = 0
        self._done = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def pending_count(self) -> int:
        """Updates accepted but not yet committed (including the batch in flight)."""
        return self._submitted - self._done

    @property
    def full(self) -> bool:
        """True when callers should wait for :meth:`wait_room` before submitting more."""
        return len(self._pending) >= self._pending_max

    def start(self) -> None:
        """Start the commit task."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"sequencer:{self.namespace}")

    def submit(self, pending: Pending) -> None:
        """Queue an accepted update for the next commit (never blocks)."""
        if not self._pending:
            self._first_at = time.monotonic()  # once per batch, not per update
        self._pending.append(pending)
        self._submitted += 1
        if not pending.sent_to_yjs:
            self._held_from_yjs += 1
        if len(self._pending) >= self._pending_max:
            self._room.clear()
        self._wake.set()

    @property
    def quiet(self) -> bool:
        """The last commit held one update at most and every update not yet committed was
        already sent to plain Yjs subscribers: an update accepted now has no load to be
        batched with, and sending it at once keeps them in accept order.

        Updates that merely wait behind one slow commit (an fsync that stalls) do not end
        quiet: they were sent on arrival, and holding the next ones for that commit would
        only add the stall to their latency. Load shows as a commit of several updates.
        """
        return self._held_from_yjs == 0 and self._last_batch <= 1

    async def wait_room(self) -> None:
        """Wait until fewer than ``pending_max`` updates wait."""
        await self._room.wait()

    async def flush(self) -> None:
        """Wait until everything submitted before the call is committed (or failed)."""
        target = self._submitted
        async with self._progress:
            await self._progress.wait_for(lambda: self._done >= target)

    async def stop(self) -> None:
        """Commit what is queued, then stop the commit task."""
        if self._task is None:
            return
        if not self._task.done():
            await self.flush()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                if (
                    self._commit_delay_s
                    and self._last_batch > 1
                    and len(self._pending) < self._batch_max
                ):
                    # Under load: let the updates arriving meanwhile share this commit.
                    wait = self._first_at + self._commit_delay_s - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                batch = self._pending[: self._batch_max]
                del self._pending[: self._batch_max]
                if len(self._pending) < self._pending_max:
                    self._room.set()
                await self._commit(batch)

    async def _commit(self, batch: list[Pending]) -> None:
        started = time.monotonic()
        self._last_batch = len(batch)
        try:
            results = await self._backend.append(self.namespace, [p.entry for p in batch])
        except (BackendError, OSError) as exc:
            self._metrics.storage_failures.inc()
            _log.error(
                "commit failed",
                extra={"namespace": self.namespace, "batch": len(batch), "error": str(exc)},
            )
            results = None
            failure: Exception | None = exc
        else:
            failure = None
            self._metrics.commit_seconds.observe(time.monotonic() - started)
            self._metrics.commit_batch.observe(len(batch))
        self._finish(batch, results, failure)
        async with self._progress:
            self._progress.notify_all()

    def _finish(
        self, batch: list[Pending], results: list[AppendResult] | None, exc: Exception | None
    ) -> None:
        try:
            if results is not None:
                self._on_committed(batch, results)
            else:
                assert exc is not None
                self._on_failed(batch, exc)
        except Exception:
            # A bug in fan-out must not stop sequencing for everyone.
            _log.exception("commit callback failed", extra={"namespace": self.namespace})
        finally:
            self._done += len(batch)
            self._held_from_yjs -= sum(1 for p in batch if not p.sent_to_yjs)
