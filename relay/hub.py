"""Live namespaces: the materialized doc, subscribers, fan-out, catch-up, takeovers.

A :class:`LiveNamespace` is loaded (snapshot + log tail) on first use and holds the pycrdt
doc every accepted update is applied to, the connections subscribed to it, a ring of recently
encoded broadcasts for cheap catch-up, awareness states and the latest heartbeat of each
replica. The doc is built from the stored bytes only when something needs it (a write, a
state-vector diff, a snapshot) or once catch-up traffic went quiet after the load: until
then a late joiner with an empty state vector gets the stored snapshot as is, followed by
the stored tail as broadcasts, and a large namespace is ready for it without decoding the
snapshot first. Updates are checked and applied here, then committed by the namespace's
:class:`~relay.sequencer.Sequencer`; only after the commit are they acknowledged and fanned
out (each broadcast encoded once, its bytes queued on every other subscriber).

The :class:`Hub` owns the set of live namespaces: loading, the cap on namespaces in memory,
idle eviction, periodic snapshots and draining on shutdown.

Must not import ``crdtstate.sync.client``, ``crdtstate.replica`` or aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from pycrdt import Doc

from crdtstate._ids import Namespace, OpId, ReplicaId, Seq
from crdtstate.sync import wire
from relay.auth import SignatureVerifier, TokenBucket
from relay.backend.base import (
    AppendResult,
    Backend,
    BackendError,
    LogEntry,
    NewEntry,
    StoredSnapshot,
)
from relay.compaction import SnapshotOutcome, take_snapshot
from relay.config import Access, RelaySettings, ResolvedPolicy
from relay.metrics import RelayMetrics
from relay.peer import Peer, PeerKind
from relay.sequencer import Pending, Sequencer

__all__ = ["Hub", "LiveNamespace", "OverloadedError", "Refusal"]

_log = logging.getLogger("relay.hub")

_SPLIT_BRAIN_WINDOW_S: Final = 60.0
_TAKEOVER_HISTORY: Final = 8
_LOAD_CHUNK: Final = 10000
_HEARTBEAT_BYTES_MAX: Final = 64 * 1024
_COMMIT_TIMES_MAX: Final = 1024
_NO_OP: Final = OpId(0)
_EMPTY_STATE_VECTOR: Final = b"\x00"
_BUILD_AT_LOAD_BYTES_MAX: Final = 256 * 1024
"""A namespace whose stored snapshot is smaller builds its doc at load (a few ms): only a
large one is worth serving from the stored bytes while its doc is not built."""
_BUILD_QUIET_S: Final = 2.0
"""The doc of a namespace loaded from storage is built in the background (blocking the event
loop while pycrdt decodes it) once the stored bytes were not served for this long and every
connection's writes drained..."""
_BUILD_WAIT_S_MAX: Final = 30.0
"""... or this long after the load at the latest (anything needing it builds it sooner)."""
_BUILD_POLL_S: Final = 0.02


class OverloadedError(Exception):
    """No room for another namespace in memory (every loaded one is in use)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a frame was refused, and what to do to the connection.

    Attributes:
        code: the error code sent in an error frame.
        message: for a person.
        reason: metric label.
        close: close the connection with this code after the error frame, or None.
        op_id: the refused update's op id.
    """

    code: wire.ErrorCode
    message: str
    reason: str
    close: wire.CloseCode | None = None
    op_id: OpId = _NO_OP


def _apply(doc: Doc[Any], update: bytes) -> str | None:
    """Apply ``update``; return why it failed, or None. The doc is unchanged on failure."""
    try:
        doc.apply_update(update)
    except (KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit):
        raise
    except BaseException as exc:  # pycrdt raises ValueError; a Rust panic is a BaseException
        return f"{type(exc).__name__}: {exc}"[:300]
    return None


class LiveNamespace:
    """One loaded namespace. Created by :meth:`Hub.acquire`."""

    def __init__(
        self,
        name: Namespace,
        incarnation: str,
        head: Seq,
        snapshot: StoredSnapshot | None,
        tail: list[LogEntry],
        settings: RelaySettings,
        backend: Backend,
        metrics: RelayMetrics,
        verifier: SignatureVerifier,
    ) -> None:
        self.name = name
        self.incarnation = incarnation
        self.head = head
        # Stored bytes estimate the document's size without encoding it again.
        self.doc_bytes = (0 if snapshot is None else len(snapshot.update)) + sum(
            len(entry.update) for entry in tail
        )
        self.snapshot_seq = snapshot.seq if snapshot is not None else Seq(0)
        self.snapshot_at = time.monotonic()
        self.settings = settings
        self._yjs_fanout_accepted = settings.yjs_fanout == "accepted"
        self.policy: ResolvedPolicy = settings.policy_for(name)
        self.backend = backend
        self.metrics = metrics
        self.verifier = verifier
        self.peers: set[Peer] = set()
        self.replicas_live: dict[ReplicaId, Peer] = {}
        self.keys: dict[ReplicaId, bytes] = {}
        self.heartbeats: dict[ReplicaId, dict[str, Any]] = {}
        # (last seq of a commit, wall time): when each update was sequenced, for lag in
        # seconds in the drift view. Seeded with the loaded head: sequenced at or before now.
        self.commit_times: deque[tuple[int, float]] = deque(
            [(int(head), time.time())], maxlen=_COMMIT_TIMES_MAX
        )
        self.refs = 0
        self.last_active = time.monotonic()
        self.failed = False
        limits = settings.limits
        self._ring: deque[tuple[int, bytes]] = deque()
        self._ring_bytes = 0
        self._ring_entries_max = limits.catchup_ring_entries
        self._ring_bytes_max = limits.catchup_ring_bytes
        self._awareness: dict[int, tuple[int, str, Peer]] = {}
        self._full_frame: tuple[int, int, bytes] | None = None
        # The doc, built at first need from what the load read (snapshot, then the log
        # entries after it, in seq order); until then connections are owed a sync step 1.
        self._doc: Doc[Any] | None = None
        self._stored: tuple[StoredSnapshot | None, list[LogEntry]] | None = (snapshot, tail)
        self._stored_origins = frozenset(entry.origin for entry in tail)
        self._stored_frame: bytes | None = None
        self._build_error: str | None = None
        self._builder: asyncio.Task[None] | None = None
        self._step1_owed: set[Peer] = set()
        self._served_stored_at = time.monotonic()
        self._takeovers: dict[ReplicaId, deque[tuple[str, float]]] = {}
        self._bucket = TokenBucket(
            self.policy.updates_per_s, self.policy.updates_burst, time.monotonic()
        )
        self.sequencer = Sequencer(
            name,
            backend,
            self._on_committed,
            self._on_failed,
            metrics,
            batch_max=limits.commit_batch_max,
            pending_max=limits.pending_updates_max,
            commit_delay_s=limits.commit_delay_s,
        )
        self.on_failure: Callable[[LiveNamespace], None] = lambda _ns: None
        if tail and tail[-1].seq == head:
            # The stored tail is the newest part of the log: catch-up can use it as is.
            for entry in tail:
                self._remember(
                    int(entry.seq), wire.encode_broadcast(entry.seq, entry.origin, entry.update)
                )

    # -- the document -----------------------------------------------------------------------

    @property
    def doc(self) -> Doc[Any]:
        """The namespace document, built from the stored bytes at first use.

        Raises:
            BackendError: the stored snapshot cannot be read; the namespace has failed.
        """
        doc = self._doc
        if doc is None:
            doc = self._build()
        return doc

    def build(self) -> None:
        """Build the doc now if it is not built yet.

        Raises:
            BackendError: the stored snapshot cannot be read; the namespace has failed.
        """
        if self._doc is None:
            self._build()

    def _build(self) -> Doc[Any]:
        if self._build_error is not None:
            raise BackendError(self._build_error)
        stored = self._stored
        assert stored is not None
        snapshot, tail = stored
        started = time.monotonic()
        doc: Doc[Any] = Doc()
        if snapshot is not None:
            problem = _apply(doc, snapshot.update)
            if problem is not None:
                self._build_error = (
                    f"namespace {self.name!r}: stored snapshot unreadable: {problem}"
                )
                _log.error(
                    "stored snapshot unreadable", extra={"namespace": self.name, "error": problem}
                )
                self._fail()
                raise BackendError(self._build_error)
        for entry in tail:
            problem = _apply(doc, entry.update)
            if problem is not None:
                _log.error(
                    "stored update unreadable",
                    extra={"namespace": self.name, "seq": entry.seq, "error": problem},
                )
        self._doc = doc
        self._stored = None
        if snapshot is not None and not tail and snapshot.seq == self.head:
            # The stored snapshot is the whole document: late joiners keep getting it as is,
            # with no re-encoding of a large doc.
            frame = self._stored_frame or wire.encode(wire.Snapshot(snapshot.seq, snapshot.update))
            self._full_frame = (snapshot.seq, self.doc_bytes, frame)
        self._stored_frame = None
        if self._step1_owed:
            step1 = wire.encode(wire.SyncStep1(doc.get_state()))
            for peer in self._step1_owed:
                peer.send(step1)
            self._step1_owed.clear()
        _log.info(
            "namespace doc built",
            extra={
                "namespace": self.name,
                "tail": len(tail),
                "seconds": round(time.monotonic() - started, 4),
            },
        )
        return doc

    def start(self) -> None:
        """Start committing, and building the doc in the background once things are quiet."""
        self.sequencer.start()
        if self._doc is None and self._builder is None:
            self._builder = asyncio.create_task(self._build_when_quiet(), name=f"build:{self.name}")

    async def stop(self) -> None:
        """Stop the background build and the sequencer (committing what is queued)."""
        builder = self._builder
        if builder is not None and not builder.done():
            builder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await builder
        await self.sequencer.stop()

    async def _build_when_quiet(self) -> None:
        deadline = time.monotonic() + _BUILD_WAIT_S_MAX
        while self._doc is None and not self.failed:
            now = time.monotonic()
            if now >= deadline or (
                now - self._served_stored_at >= _BUILD_QUIET_S
                and all(peer.idle for peer in self.peers)
            ):
                with contextlib.suppress(BackendError):
                    self._build()
                return
            await asyncio.sleep(_BUILD_POLL_S)

    def _stored_catch_up(self, replica_id: str | None) -> list[bytes] | None:
        """Catch-up for an empty state vector from the stored bytes, without the doc: the
        stored snapshot frame, then the stored tail's broadcasts; None when that cannot
        serve (doc already built, no snapshot, a tail not reaching the head or too large
        for the send queue, or holding updates of ``replica_id``, which a replica notes as
        applied without applying them)."""
        stored = self._stored
        if self._doc is not None or stored is None or stored[0] is None:
            return None
        snapshot = stored[0]
        missing = int(self.head) - int(snapshot.seq)
        if missing < 0 or (replica_id is not None and replica_id in self._stored_origins):
            return None
        frames: list[bytes] = []
        if missing:
            ring = self._ring
            limits = self.settings.limits
            if not (
                ring
                and ring[-1][0] == self.head
                and ring[0][0] <= snapshot.seq + 1
                and missing <= limits.queue_frames_max // 2
            ):
                return None
            frames = [ring[index][1] for index in range(len(ring) - missing, len(ring))]
            if sum(map(len, frames)) > limits.queue_bytes_max // 2:
                return None
        base = self._stored_frame
        if base is None:
            base = wire.encode(wire.Snapshot(snapshot.seq, snapshot.update))
            self._stored_frame = base
        self._served_stored_at = time.monotonic()
        return [base, *frames]

    def full_state(self) -> bytes:
        """The whole document as a Yjs update: the stored snapshot as is while the doc is
        not built and no stored update follows it, else encoded from the doc.

        Raises:
            BackendError: the stored snapshot cannot be read; the namespace has failed.
        """
        stored = self._stored
        if self._doc is None and stored is not None and stored[0] is not None and not stored[1]:
            self._served_stored_at = time.monotonic()
            return stored[0].update
        return self.doc.get_update()

    # -- connections ------------------------------------------------------------------------

    def attach(self, peer: Peer) -> None:
        """Add a connection: send it our sync step 1 and the awareness states, like
        y-websocket's server does on connect."""
        self.peers.add(peer)
        self.refs += 1
        self.last_active = time.monotonic()
        peer.head_seq = lambda: self.head
        if self._doc is not None:
            peer.send(wire.encode(wire.SyncStep1(self._doc.get_state())))
        else:
            self._step1_owed.add(peer)  # sent when the doc is built
        if self._awareness:
            peer.send(self._awareness_frame(None))

    def detach(self, peer: Peer) -> None:
        """Remove a connection; announce its awareness clients as gone."""
        self.peers.discard(peer)
        self._step1_owed.discard(peer)
        self.refs -= 1
        self.last_active = time.monotonic()
        if peer.replica_id is not None and self.replicas_live.get(peer.replica_id) is peer:
            del self.replicas_live[peer.replica_id]
        gone = [
            wire.AwarenessEntry(cid, self._awareness[cid][0] + 1, "null")
            for cid in peer.awareness_ids
            if cid in self._awareness and self._awareness[cid][2] is peer
        ]
        for entry in gone:
            del self._awareness[entry.client_id]
        if gone:
            frame = wire.encode(wire.Awareness(wire.encode_awareness_update(gone)))
            for other in self.peers:
                if other.kind is not PeerKind.PENDING:
                    other.send(frame)

    def answer_step1(self, peer: Peer, state_vector: bytes) -> Refusal | None:
        """Answer a sync step 1 with our diff; a pending connection becomes a Yjs one."""
        try:
            if state_vector == _EMPTY_STATE_VECTOR:
                diff = self.full_state()
            else:
                diff = self.doc.get_update(state_vector)
        except ValueError as exc:
            return Refusal(
                wire.ErrorCode.MALFORMED, f"bad state vector: {exc}"[:200], "bad_state_vector"
            )
        except BackendError as exc:
            return Refusal(wire.ErrorCode.INTERNAL, f"storage: {exc}"[:200], "storage")
        self.mark_yjs(peer)
        peer.send(wire.encode(wire.SyncStep2(diff)))
        return None

    def mark_yjs(self, peer: Peer) -> None:
        """A pending connection that speaks y-protocols starts receiving Yjs updates."""
        if peer.kind is PeerKind.PENDING:
            peer.kind = PeerKind.YJS
            self.metrics.connections.labels("pending").dec()
            self.metrics.connections.labels("yjs").inc()
            if self._awareness:
                # Presence forwarded while it was pending skipped it; y-websocket clients
                # would not learn it before the next renewal (15 s), so send it all now.
                peer.send(self._awareness_frame(None))

    async def hello(self, peer: Peer, hello: wire.Hello) -> Refusal | None:
        """Make ``peer`` a replica subscriber: bind its key, take over, send catch-up."""
        version = wire.negotiate_version(hello.version)
        if version is None:
            return Refusal(
                wire.ErrorCode.UNSUPPORTED_VERSION,
                f"protocol version {hello.version} unsupported; relay speaks "
                f"{wire.PROTOCOL_VERSION_MIN}..{wire.PROTOCOL_VERSION}",
                "unsupported_version",
                wire.CloseCode.UNSUPPORTED_VERSION,
            )
        if peer.replica_id is not None and (
            peer.replica_id != hello.replica_id or peer.public_key != hello.public_key
        ):
            return Refusal(
                wire.ErrorCode.IDENTITY_CONFLICT,
                "a second hello on a connection must repeat its replica id and key",
                "identity_conflict",
                wire.CloseCode.IDENTITY_CONFLICT,
            )
        bound = self.keys.get(hello.replica_id)
        if bound is None:
            try:
                bound = await self.backend.bind_replica(
                    self.name, hello.replica_id, hello.public_key, time.time()
                )
            except BackendError as exc:
                return Refusal(wire.ErrorCode.INTERNAL, f"storage: {exc}"[:200], "storage")
            self.keys[hello.replica_id] = bound
        if bound != hello.public_key:
            return Refusal(
                wire.ErrorCode.IDENTITY_CONFLICT,
                f"replica id {hello.replica_id!r} is bound to another public key",
                "identity_conflict",
                wire.CloseCode.IDENTITY_CONFLICT,
            )
        if peer.closing or self.failed:
            return None
        self._take_over(peer, hello)
        if peer.kind is not PeerKind.REPLICA:
            self.metrics.connections.labels(peer.kind.value).dec()
            self.metrics.connections.labels("replica").inc()
        peer.kind = PeerKind.REPLICA
        peer.replica_id = hello.replica_id
        peer.public_key = hello.public_key
        peer.instance = hello.instance
        # From here to the end no await: the catch-up and the live stream join exactly at
        # ``head`` because commits (which advance head) cannot run in between.
        peer.reset_queue()
        peer.send(wire.encode(wire.Welcome(version, self.head, self.incarnation)))
        self._catch_up(peer, hello)
        self.last_active = time.monotonic()
        try:
            await self.backend.record_replica(
                self.name, hello.replica_id, hello.last_seq, None, time.time()
            )
        except BackendError as exc:
            _log.warning("cannot record replica", extra={"namespace": self.name, "error": str(exc)})
        return None

    def _take_over(self, peer: Peer, hello: wire.Hello) -> None:
        existing = self.replicas_live.get(hello.replica_id)
        self.replicas_live[hello.replica_id] = peer
        if existing is None or existing is peer:
            return
        now = time.monotonic()
        self.metrics.takeovers.inc()
        history = self._takeovers.setdefault(hello.replica_id, deque(maxlen=_TAKEOVER_HISTORY))
        fighting = any(
            instance == hello.instance and now - at < _SPLIT_BRAIN_WINDOW_S
            for instance, at in history
        )
        history.append((existing.instance, now))
        if fighting and existing.instance != hello.instance:
            self.metrics.split_brain.inc()
            _log.error(
                "split brain: two live instances of one replica id take over from each other",
                extra={
                    "namespace": self.name,
                    "replica": hello.replica_id,
                    "instances": [existing.instance, hello.instance],
                },
            )
        existing.request_close(wire.CloseCode.REPLACED, "replaced by a newer connection")

    def _catch_up(self, peer: Peer, hello: wire.Hello) -> None:
        last = int(hello.last_seq)
        if hello.incarnation == self.incarnation and last >= self.head:
            return
        ring = self._ring
        missing = self.head - last
        limits = self.settings.limits
        if (
            hello.incarnation == self.incarnation
            and ring
            and ring[0][0] <= last + 1
            and missing <= len(ring)
            # Catch-up must fit easily in the send queue, or it would overflow at once.
            and missing <= limits.queue_frames_max // 2
        ):
            frames = [ring[index][1] for index in range(len(ring) - missing, len(ring))]
            if sum(map(len, frames)) <= limits.queue_bytes_max // 2:
                for frame in frames:
                    peer.broadcast(frame)
                return
        empty = hello.state_vector == _EMPTY_STATE_VECTOR
        try:
            if empty or (not hello.incarnation and last == 0):
                # A replica that never synced with a relay holds at most its own writes (and
                # none of ours): a diff would be nearly everything, so it gets the stored
                # bytes as they are rather than wait for the doc to be built.
                stored = self._stored_catch_up(hello.replica_id)
                if stored is not None:
                    # Bounded above (half the queue), like the ring: sent whatever the queue.
                    for frame in stored:
                        peer.send_catch_up(frame)
                    return
            if empty:
                peer.send_catch_up(self._full_snapshot_frame())
                return
            try:
                diff = self.doc.get_update(hello.state_vector)
            except ValueError:
                # A state vector we cannot read: send everything (always correct, just larger).
                peer.send_catch_up(self._full_snapshot_frame())
                return
        except BackendError:
            return  # the stored state is unreadable: the namespace failed, peers are closing
        peer.send_catch_up(wire.encode(wire.Snapshot(self.head, diff)))

    def _full_snapshot_frame(self) -> bytes:
        """The whole document as a snapshot frame, encoded once per head: a crowd of late
        joiners (a reconnect storm of fresh replicas) shares one buffer."""
        cached = self._full_frame
        if cached is not None and cached[0] == self.head and cached[1] == self.doc_bytes:
            return cached[2]
        frame = wire.encode(wire.Snapshot(self.head, self.doc.get_update()))
        self._full_frame = (self.head, self.doc_bytes, frame)
        return frame

    # -- updates ----------------------------------------------------------------------------

    def accept_update(
        self, peer: Peer, update: bytes, op_id: OpId, signature: bytes, extension: bool
    ) -> Refusal | None:
        """Check, apply and queue one update for commit; or say why it was refused.

        Args:
            peer: the sender.
            update: Yjs update bytes.
            op_id: the sender's op id (0 = not deduplicated).
            signature: ed25519 signature or b"".
            extension: True for an extension update frame, False for a Yjs sync message.
        """
        if self.failed:
            return Refusal(
                wire.ErrorCode.INTERNAL, "namespace storage failed", "storage", None, op_id
            )
        if peer.access is not Access.WRITE:
            return Refusal(
                wire.ErrorCode.FORBIDDEN,
                "this token is read-only for the namespace",
                "forbidden",
                wire.CloseCode.FORBIDDEN,
                op_id,
            )
        limits = self.settings.limits
        size = len(update)
        if size > limits.update_bytes_max:
            return Refusal(
                wire.ErrorCode.UPDATE_TOO_LARGE,
                f"update is {size} bytes, limit {limits.update_bytes_max}",
                "too_large",
                None,
                op_id,
            )
        now = time.monotonic()
        if not peer.update_bucket.take(now) or not peer.byte_bucket.take(now, size):
            return Refusal(
                wire.ErrorCode.RATE_LIMITED, "connection rate limit", "rate_conn", None, op_id
            )
        if not self._bucket.take(now):
            return Refusal(
                wire.ErrorCode.RATE_LIMITED, "namespace rate limit", "rate_namespace", None, op_id
            )
        if signature:
            if peer.kind is not PeerKind.REPLICA or not self.verifier.verify(
                peer.public_key, self.name, peer.origin, op_id, update, signature
            ):
                return Refusal(
                    wire.ErrorCode.BAD_SIGNATURE,
                    "signature does not verify against the replica's key",
                    "bad_signature",
                    None,
                    op_id,
                )
        elif self.policy.require_signatures:
            return Refusal(
                wire.ErrorCode.MISSING_SIGNATURE,
                "this namespace requires signed updates",
                "missing_signature",
                wire.CloseCode.FORBIDDEN if peer.kind is not PeerKind.REPLICA else None,
                op_id,
            )
        if self.doc_bytes + size > self.policy.doc_bytes_max:
            return Refusal(
                wire.ErrorCode.QUOTA_EXCEEDED,
                f"namespace document quota of {self.policy.doc_bytes_max} bytes reached",
                "quota",
                None,
                op_id,
            )
        try:
            doc = self.doc
        except BackendError as exc:
            return Refusal(wire.ErrorCode.INTERNAL, f"storage: {exc}"[:200], "storage", None, op_id)
        problem = _apply(doc, update)
        if problem is not None:
            return Refusal(
                wire.ErrorCode.INVALID_UPDATE,
                f"cannot apply update: {problem}",
                "invalid_update",
                None,
                op_id,
            )
        self.doc_bytes += size
        self.last_active = now
        # Plain Yjs clients carry no sequence numbers and sync by state vector (which serves
        # this update from the document already): when the namespace is quiet, waiting for
        # the commit would only add the fsync to their latency (docs/protocol.md). Under load
        # they get it with its commit batch, one write per subscriber for the whole batch.
        sent_to_yjs = self._yjs_fanout_accepted and self.sequencer.quiet
        if sent_to_yjs:
            self._fan_out_yjs([(wire.encode_sync_update(update), peer)])
        replica_id = peer.replica_id
        self.sequencer.submit(
            Pending(
                NewEntry(peer.origin, replica_id, op_id if extension else OpId(0), update),
                peer,
                ack=peer.kind is PeerKind.REPLICA,
                sent_to_yjs=sent_to_yjs,
            )
        )
        return None

    def _on_committed(self, batch: list[Pending], results: list[AppendResult]) -> None:
        peers = self.peers
        metrics = self.metrics
        sequenced = 0
        sequenced_bytes = 0
        # Plain Yjs subscribers get the whole batch at once (one queue call per subscriber,
        # not one per update and subscriber): each update encoded once, with its sender.
        yjs_frames: list[tuple[bytes, Peer]] | None = None
        if any(peer.kind is PeerKind.YJS for peer in peers):
            yjs_frames = []
        replicas = [peer for peer in peers if peer.kind is PeerKind.REPLICA]
        for pending, result in zip(batch, results, strict=True):
            sender = pending.peer
            entry = pending.entry
            if result.duplicate:
                metrics.duplicates.inc()
                if pending.ack:
                    sender.send(wire.encode_ack(entry.op_id, result.seq, True))
                continue
            seq = int(result.seq)
            if seq > self.head:
                self.head = Seq(seq)
            sequenced += 1
            sequenced_bytes += len(entry.update)
            frame = wire.encode_broadcast(seq, entry.origin, entry.update)
            self._remember(seq, frame)
            if yjs_frames is not None and not pending.sent_to_yjs:
                yjs_frames.append((wire.encode_sync_update(entry.update), sender))
            if pending.ack and sender in peers:
                sender.send(wire.encode_ack(entry.op_id, seq, False))
            for peer in replicas:
                if peer is not sender:
                    peer.broadcast(frame)
        if yjs_frames:
            self._fan_out_yjs(yjs_frames)
        if sequenced:
            self.commit_times.append((int(self.head), time.time()))
            metrics.updates_sequenced.inc(sequenced)
            metrics.update_bytes.inc(sequenced_bytes)

    def _fan_out_yjs(self, frames: list[tuple[bytes, Peer]]) -> None:
        """Send (or queue) sync-update frames to every plain Yjs subscriber,
        except each update to its own sender (the relay never echoes)."""
        everything = [frame for frame, _ in frames]
        size = sum(map(len, everything))
        # Every subscriber gets the same list; a sender also gets the indices of its own
        # updates to leave out (cut from the batch framed once, see relay/ws.py).
        own: dict[Peer, list[int]] = {}
        for index, (_, sender) in enumerate(frames):
            indices = own.get(sender)
            if indices is None:
                own[sender] = [index]
            else:
                indices.append(index)
        written = 0
        for peer in self.peers:
            if peer.kind is not PeerKind.YJS:
                continue
            skip = own.get(peer)
            if skip is None:
                written += peer.broadcast_many(everything, size)
            elif len(skip) < len(everything):
                left = size - sum(len(everything[index]) for index in skip)
                written += peer.broadcast_many(everything, left, skip)
        if written:
            self.metrics.sent_bytes.inc(written)

    def _remember(self, seq: int, frame: bytes) -> None:
        if self._ring_entries_max == 0:
            return
        ring = self._ring
        if ring and ring[-1][0] != seq - 1:
            # Not contiguous (another relay sequenced in between): start over.
            ring.clear()
            self._ring_bytes = 0
        ring.append((seq, frame))
        self._ring_bytes += len(frame)
        while ring and (
            len(ring) > self._ring_entries_max or self._ring_bytes > self._ring_bytes_max
        ):
            self._ring_bytes -= len(ring.popleft()[1])

    def _on_failed(self, batch: list[Pending], exc: Exception) -> None:
        # The doc holds updates that are not stored: it must not serve anyone any more.
        self.failed = True
        for pending in batch:
            if pending.ack:
                pending.peer.send(
                    wire.encode(
                        wire.ErrorFrame(
                            wire.ErrorCode.INTERNAL,
                            "storage failed; not sequenced, resend later",
                            pending.entry.op_id,
                        )
                    )
                )
        self._fail()

    def _fail(self) -> None:
        self.failed = True
        for peer in list(self.peers):
            peer.request_close(wire.CloseCode.INTERNAL_ERROR, "namespace storage failed")
        self.on_failure(self)

    # -- awareness and heartbeats -------------------------------------------------------------

    def awareness(self, peer: Peer, frame_bytes: bytes, payload: bytes) -> Refusal | None:
        """Record and forward an awareness update (never persisted)."""
        try:
            entries = wire.decode_awareness_update(
                payload, self.settings.limits.awareness_clients_per_connection_max
            )
        except wire.FrameError as exc:
            return Refusal(exc.code, str(exc), "malformed")
        cap = self.settings.limits.awareness_clients_per_connection_max
        for entry in entries:
            known = self._awareness.get(entry.client_id)
            if known is not None and known[2] is not peer:
                continue  # another connection owns this client id
            if entry.state == "null":
                self._awareness.pop(entry.client_id, None)
                peer.awareness_ids.discard(entry.client_id)
                continue
            if entry.client_id not in peer.awareness_ids and len(peer.awareness_ids) >= cap:
                return Refusal(wire.ErrorCode.MALFORMED, "too many awareness clients", "awareness")
            peer.awareness_ids.add(entry.client_id)
            self._awareness[entry.client_id] = (entry.clock, entry.state, peer)
        for other in self.peers:
            if other is not peer and other.kind is not PeerKind.PENDING:
                other.send(frame_bytes)
        return None

    def _awareness_frame(self, only: Peer | None) -> bytes:
        entries = [
            wire.AwarenessEntry(cid, clock, state)
            for cid, (clock, state, owner) in self._awareness.items()
            if only is None or owner is only
        ]
        return wire.encode(wire.Awareness(wire.encode_awareness_update(entries)))

    def query_awareness(self, peer: Peer) -> None:
        """Answer a query-awareness frame with every known state."""
        peer.send(self._awareness_frame(None))

    async def heartbeat(self, peer: Peer, payload: str) -> Refusal | None:
        """Keep a replica's heartbeat (for the drift view) and its applied seq."""
        if peer.kind is not PeerKind.REPLICA or peer.replica_id is None:
            return Refusal(wire.ErrorCode.NOT_READY, "heartbeat before hello", "not_ready")
        if len(payload) > _HEARTBEAT_BYTES_MAX:
            return Refusal(wire.ErrorCode.MALFORMED, "heartbeat too large", "malformed")
        try:
            data = json.loads(payload)
        except ValueError as exc:
            return Refusal(wire.ErrorCode.MALFORMED, f"heartbeat is not JSON: {exc}", "malformed")
        if not isinstance(data, dict):
            return Refusal(wire.ErrorCode.MALFORMED, "heartbeat must be a JSON object", "malformed")
        applied = data.get("applied_seq", 0)
        if not isinstance(applied, int) or isinstance(applied, bool) or applied < 0:
            return Refusal(wire.ErrorCode.MALFORMED, "applied_seq must be an int >= 0", "malformed")
        data["received_at"] = time.time()
        self.heartbeats[peer.replica_id] = data
        try:
            await self.backend.record_replica(
                self.name, peer.replica_id, Seq(applied), payload, time.time()
            )
        except BackendError as exc:
            _log.warning(
                "cannot record heartbeat", extra={"namespace": self.name, "error": str(exc)}
            )
        return None

    # -- snapshots ------------------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        """True when updates were sequenced since the last snapshot."""
        return self.head > self.snapshot_seq

    def snapshot_due(self, now: float) -> bool:
        """True when the snapshot policy asks for one now."""
        policy = self.settings.snapshot
        behind = self.head - self.snapshot_seq
        return behind >= policy.every_updates or (
            behind > 0 and now - self.snapshot_at >= policy.every_s
        )

    async def snapshot(self) -> SnapshotOutcome:
        """Store a snapshot at the committed head and trim the log below the watermark."""
        # Read head and encode the state with no await in between: the state holds 1..head.
        seq = self.head
        state = self.full_state()
        outcome = await take_snapshot(
            self.backend, self.name, seq, state, self.settings.snapshot, time.time()
        )
        self.snapshot_seq = outcome.seq
        self.snapshot_at = time.monotonic()
        self.doc_bytes = outcome.bytes
        self.metrics.snapshots.inc()
        return outcome


class Hub:
    """Every live namespace of the relay.

    Args:
        settings: relay settings.
        backend: opened storage.
        metrics: relay metrics.
    """

    def __init__(self, settings: RelaySettings, backend: Backend, metrics: RelayMetrics) -> None:
        self.settings = settings
        self.backend = backend
        self.metrics = metrics
        self.verifier = SignatureVerifier()
        self.namespaces: dict[Namespace, LiveNamespace] = {}
        self._loading: dict[Namespace, asyncio.Lock] = {}
        self.draining = False
        self.connections = 0
        self._maintenance: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start idle eviction and periodic snapshots."""
        self._maintenance = asyncio.create_task(self._maintain(), name="relay-maintenance")

    async def acquire(self, name: Namespace) -> LiveNamespace:
        """The live namespace ``name``, loaded if needed; the caller must :meth:`release`.

        Raises:
            OverloadedError: the namespace cap is reached and no loaded one is idle.
            BackendError: the namespace cannot be loaded.
        """
        live = self.namespaces.get(name)
        if live is None:
            lock = self._loading.setdefault(name, asyncio.Lock())
            async with lock:
                live = self.namespaces.get(name)
                if live is None:
                    await self._make_room()
                    live = await self._load(name)
                    self.namespaces[name] = live
                    self.metrics.namespaces_loaded.set(len(self.namespaces))
            self._loading.pop(name, None)
        live.last_active = time.monotonic()
        return live

    async def _make_room(self) -> None:
        if len(self.namespaces) < self.settings.limits.namespaces_in_memory_max:
            return
        idle = [ns for ns in self.namespaces.values() if ns.refs == 0]
        if not idle:
            raise OverloadedError(
                f"{len(self.namespaces)} namespaces in memory, all in use "
                f"(namespaces_in_memory_max={self.settings.limits.namespaces_in_memory_max})"
            )
        await self._unload(min(idle, key=lambda ns: ns.last_active))

    async def _load(self, name: Namespace) -> LiveNamespace:
        started = time.monotonic()
        meta = await self.backend.open_namespace(name)
        snapshot = await self.backend.read_snapshot(name)
        after = snapshot.seq if snapshot is not None else Seq(0)
        # Only read here: the doc is built from these bytes when first needed.
        tail: list[LogEntry] = []
        while True:
            entries = await self.backend.read_after(name, after, _LOAD_CHUNK)
            if not entries:
                break
            tail.extend(entries)
            after = entries[-1].seq
        head = max(meta.head, after)
        live = LiveNamespace(
            name,
            meta.incarnation,
            head,
            snapshot,
            tail,
            self.settings,
            self.backend,
            self.metrics,
            self.verifier,
        )
        live.on_failure = self._failed
        if snapshot is None or len(snapshot.update) <= _BUILD_AT_LOAD_BYTES_MAX:
            live.build()
        live.start()
        _log.info(
            "namespace loaded",
            extra={
                "namespace": name,
                "head": head,
                "tail": len(tail),
                "seconds": round(time.monotonic() - started, 4),
            },
        )
        return live

    def release(self, live: LiveNamespace) -> None:
        """Forget nothing: an idle namespace stays loaded until eviction."""
        live.last_active = time.monotonic()

    def _failed(self, live: LiveNamespace) -> None:
        if self.namespaces.get(live.name) is live:
            del self.namespaces[live.name]
            self.metrics.namespaces_loaded.set(len(self.namespaces))
        asyncio.get_running_loop().create_task(live.stop())

    async def _unload(self, live: LiveNamespace) -> None:
        if self.namespaces.get(live.name) is live:
            del self.namespaces[live.name]
        self.metrics.namespaces_loaded.set(len(self.namespaces))
        await live.stop()
        if live.dirty and not live.failed:
            try:
                await live.snapshot()
            except BackendError as exc:
                _log.warning(
                    "snapshot on unload failed", extra={"namespace": live.name, "error": str(exc)}
                )
        self.metrics.evictions.inc()
        _log.info("namespace unloaded", extra={"namespace": live.name})

    async def snapshot(self, name: Namespace) -> SnapshotOutcome:
        """Take a snapshot of ``name`` now (the admin endpoint)."""
        live = await self.acquire(name)
        await live.sequencer.flush()
        return await live.snapshot()

    async def _maintain(self) -> None:
        limits = self.settings.limits
        interval = min(1.0, limits.namespace_idle_s / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for live in list(self.namespaces.values()):
                try:
                    if live.refs == 0 and now - live.last_active > limits.namespace_idle_s:
                        await self._unload(live)
                    elif not live.failed and live.snapshot_due(now):
                        await live.snapshot()
                except BackendError as exc:
                    _log.warning(
                        "maintenance failed", extra={"namespace": live.name, "error": str(exc)}
                    )

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Stop taking updates, commit what was accepted, flush acks, close every client
        with 1001 going away, snapshot dirty namespaces."""
        self.draining = True
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        deadline = time.monotonic() + timeout_s
        lives = list(self.namespaces.values())
        for live in lives:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    live.sequencer.flush(), max(0.1, deadline - time.monotonic())
                )
        # Let writers send the acks just produced before the close frames.
        while time.monotonic() < deadline and any(
            p.queue_len for live in lives for p in live.peers if not p.closed
        ):
            await asyncio.sleep(0.01)
        for live in lives:
            for peer in list(live.peers):
                peer.request_close(wire.CloseCode.GOING_AWAY, "relay shutting down")
        while time.monotonic() < deadline and any(live.peers for live in lives):
            await asyncio.sleep(0.01)
        for live in lives:
            await live.stop()
            if live.dirty and not live.failed:
                try:
                    await live.snapshot()
                except BackendError as exc:
                    _log.warning(
                        "snapshot at drain failed",
                        extra={"namespace": live.name, "error": str(exc)},
                    )
        self.namespaces.clear()
        self.metrics.namespaces_loaded.set(0)
