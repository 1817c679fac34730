"""``Replica``: the facade an agent instance holds: doc, store, identity and sync client.

Every write goes through a replica (there is no second path): a field write runs one
transaction on the namespace doc, whose Yjs update the replica appends to its store (tail
and outbox, with the semantic operation) before anything else sees it. Remote updates are
applied to the doc and appended to the tail. The sync client, when a relay is configured,
runs on a background event loop and drives the replica through the
:class:`~crdtstate.sync.target.SyncTarget` seam, which this class implements.

Start-up invariants (DESIGN.md "The local store"): a fresh Yjs client id for every process
start, state recovered from snapshot + tail before any write, and an exclusive store lock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from crdtstate._ids import Namespace, OpId, ReplicaId, Seq, validate_namespace
from crdtstate.crdt.base import Field
from crdtstate.doc import Change, ChangeCallback, NamespaceDoc
from crdtstate.errors import (
    CorruptStoreError,
    CrdtStateError,
    InvalidUpdate,
    SchemaViolation,
    StoreClosedError,
    StoreError,
    SyncTimeout,
)
from crdtstate.hlc import HybridClock
from crdtstate.identity import Identity, load_or_create_identity
from crdtstate.schema import Schema
from crdtstate.store import Durability, OutboxEntry, Store, open_store

if TYPE_CHECKING:
    from crdtstate.sync.client import SyncClient

S = TypeVar("S", bound=Schema)

SNAPSHOT_EVERY_UPDATES = 20_000
"""Local snapshot once the tail holds this many updates: bounds restart time."""

SNAPSHOT_EVERY_BYTES = 16 << 20
"""... or this many bytes."""

_log = logging.getLogger("crdtstate")

_PROCESS_START = time.time()
_RELAY_INCARNATION_KEY = "relay_incarnation"


def fresh_client_id() -> int:
    """A random 32-bit Yjs client id (never reuse one across process starts)."""
    return secrets.randbits(32) or 1


class Replica(Generic[S]):
    """One replica of one namespace. Open it with :meth:`open`.

    Attributes:
        state: the schema object; its attributes are the bound fields
            (``replica.state.karma.inc(3)``).
        recovery_seconds: time the last open took to rebuild state from the store.
    """

    def __init__(
        self,
        *,
        namespace: Namespace,
        doc: NamespaceDoc,
        store: Store,
        identity: Identity,
        applied_seq: Seq,
        recovery_seconds: float,
    ) -> None:
        self._namespace = namespace
        self._doc = doc
        self._store = store
        self._identity = identity
        self._applied_seq = applied_seq
        self.recovery_seconds = recovery_seconds
        self._closed = False
        self._last_op_id = OpId(0)
        self._tail_updates, self._tail_bytes = _tail_stats(store)
        self._outbox_listener: Callable[[], None] | None = None
        self._sync: _SyncRunner | None = None
        # Updates the doc holds and the store refused (its commits began failing between
        # the check before the doc changed and the append): stored, in order, before
        # anything else once the store takes writes again. Local ones: (update, op);
        # remote ones: (update, None), stored without their seq (the relay resends those).
        self._unstored: list[tuple[bytes, dict[str, Any] | None]] = []
        self.state: S = cast(S, doc.state)
        store.add_durable_listener(self._on_durable)
        doc.recorder = self._record
        # A closed replica, or a store refusing writes (disk full), refuses a write before
        # the doc changes: the doc never holds a local write the store does not.
        doc.write_guard = self._check_writable

    # -- opening and closing ---------------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        namespace: str,
        schema: type[S] | None = None,
        *,
        durability: Durability | str = Durability.BATCH,
        relay: str | Sequence[str] | None = None,
        token: str | None = None,
        replica_id: str | None = None,
        clock: HybridClock | None = None,
        store: Store | None = None,
        client_id: int | None = None,
        sync_settings: Any = None,
        identity: Identity | None = None,
    ) -> Replica[S]:
        """Open (creating on first use) the replica of ``namespace`` kept in ``data_dir``.

        Args:
            data_dir: directory holding the identity and one store file per namespace.
            namespace: the namespace (``[A-Za-z0-9._-]``, at most 128 characters).
            schema: the namespace's schema class; ``None`` reads whatever the doc declares.
            durability: ``"sync"`` (a write returns after fsync) or ``"batch"`` (group
                commit every few ms; :meth:`flush` waits for it).
            relay: websocket URL of a relay (or several, tried in turn); ``None`` = offline.
            token: access token for the relay (defaults to ``CRDTSTATE_TOKEN``).
            replica_id: fix the replica id on first open (random otherwise).
            clock: hybrid logical clock to use (tests and chaos inject skew here).
            store: an already open store (the simulation passes a ``MemoryStore``).
            client_id: Yjs client id (the simulation fixes it; otherwise fresh and random).
            sync_settings: settings object passed to the sync client.
            identity: use this identity instead of the one kept in ``data_dir`` (the
                simulation derives keys from its seed and keeps no files).

        Raises:
            StoreLockedError: another process holds this replica's store.
            CorruptStoreError: the store cannot be read back.
            ValueError: invalid namespace or durability.
        """
        ns = validate_namespace(namespace)
        try:
            mode = Durability(durability)
        except ValueError:  # checked before anything is created on disk
            raise ValueError(
                f"durability must be one of {[d.value for d in Durability]}, got {durability!r}"
            ) from None
        root = Path(data_dir)
        if identity is None:
            identity = load_or_create_identity(root, replica_id)
        if store is None:
            store = open_store(root / f"{ns}.sqlite3", mode)
        try:
            started = time.perf_counter()
            loaded = store.load()
            doc = NamespaceDoc(
                identity.replica_id,
                schema,
                client_id=client_id if client_id is not None else fresh_client_id(),
                clock=clock or HybridClock(),
            )
            try:
                doc.restore(loaded.snapshot, loaded.tail)
            except InvalidUpdate as exc:
                raise CorruptStoreError(f"{store.path}: stored update unreadable: {exc}") from exc
            doc.refresh_declared()
            recovery_seconds = time.perf_counter() - started
            replica: Replica[S] = cls(
                namespace=ns,
                doc=doc,
                store=store,
                identity=identity,
                applied_seq=loaded.applied_seq,
                recovery_seconds=recovery_seconds,
            )
            store.set_meta("last_recovery_seconds", f"{recovery_seconds:.6f}")
            with doc.lock:
                doc.declare_schema_entries(doc.missing_declarations())
        except BaseException:
            store.close()
            raise
        if relay is not None:
            urls = [relay] if isinstance(relay, str) else list(relay)
            replica._start_sync(urls, token or os.environ.get("CRDTSTATE_TOKEN"), sync_settings)
        return replica

    def close(self) -> None:
        """Stop syncing, flush every write to disk and release the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._sync is not None:
                self._sync.stop()
        finally:
            if self._unstored:
                with self._doc.lock:
                    try:
                        self._store_unstored()
                    except StoreError as exc:
                        _log.error(
                            "replica %s closed with %d updates applied in memory and not "
                            "stored: %s",
                            self.replica_id,
                            len(self._unstored),
                            exc,
                        )
            self._store.close()

    def __enter__(self) -> Replica[S]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Replica[S]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)

    def __repr__(self) -> str:
        return f"<Replica {self.replica_id!r} of {self._namespace!r}>"

    # -- identity --------------------------------------------------------------------------

    @property
    def replica_id(self) -> ReplicaId:
        """Stable id of this replica (kept in its data directory)."""
        return self._identity.replica_id

    @property
    def namespace(self) -> Namespace:
        """The namespace this replica holds."""
        return self._namespace

    @property
    def public_key(self) -> bytes:
        """Raw ed25519 public key of this replica's identity."""
        return self._identity.public_key

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` with the identity key."""
        return self._identity.sign(data)

    @property
    def doc(self) -> NamespaceDoc:
        """The namespace document (advanced use: tests, the simulation, tools)."""
        return self._doc

    @property
    def store(self) -> Store:
        """The local store."""
        return self._store

    @property
    def clock(self) -> HybridClock:
        """The hybrid logical clock ordering this replica's writes."""
        return self._doc.clock

    # -- fields ----------------------------------------------------------------------------

    def field(self, name: str) -> Field[Any]:
        """The bound field ``name``, declared by the schema or in the doc.

        Raises:
            UnknownFieldError: no such field.
        """
        with self._doc.lock:
            return self._doc.field(name)

    def declare(self, name: str, kind: str, value_type: str = "json") -> Field[Any]:
        """Declare a field at run time (idempotent); concurrent equal declarations converge."""
        self._check_open()
        with self._doc.lock:
            return self._doc.declare(name, {"kind": kind, "type": value_type})

    def subscribe(self, name: str, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback(change)`` on every local or remote change of field ``name``.

        Callbacks run on the thread that made the change (the sync thread for remote ones).
        Returns a function that unsubscribes.
        """
        with self._doc.lock:
            return self._doc.subscribe(name, callback)

    async def watch(self, name: str) -> AsyncGenerator[Change, None]:
        """Async iterator over the changes of field ``name`` (local and remote)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Change] = asyncio.Queue()

        def forward(change: Change) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, change)

        unsubscribe = self.subscribe(name, forward)
        try:
            while True:
                yield await queue.get()
        finally:
            unsubscribe()

    # -- materialized view -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every field's value as JSON."""
        with self._doc.lock:
            return self._doc.to_dict()

    def digest(self) -> str:
        """sha256 of the canonical JSON of :meth:`to_dict`; equal state vectors, equal digests."""
        with self._doc.lock:
            return self._doc.digest()

    def violations(self) -> list[SchemaViolation]:
        """Content of the doc that does not fit the schema (reported, never raised)."""
        with self._doc.lock:
            return self._doc.violations()

    # -- merge API (transport independent) -------------------------------------------------

    def state_vector(self) -> bytes:
        """Encoded Yjs state vector of the local doc."""
        with self._doc.lock:
            return self._doc.state_vector()

    def export_update(self, since_state_vector: bytes | None = None) -> bytes:
        """A Yjs update with everything the holder of ``since_state_vector`` lacks."""
        with self._doc.lock:
            return self._doc.export_update(since_state_vector)

    def apply_update(self, update: bytes) -> None:
        """Merge an update from elsewhere (another replica, a file, a relay).

        Raises:
            InvalidUpdate: garbage, truncated or oversized bytes; state and store untouched.
        """
        self.apply_remote(update, None)

    def import_update(self, update: bytes, source: str = "import") -> int:
        """Merge state brought from elsewhere (an export file) as a local write.

        Unlike :meth:`apply_update`, the bytes also enter the outbox, so the relay receives
        them: state carried across an air gap reaches every instance. Returns the op id.

        Raises:
            InvalidUpdate: the bytes are not a usable update; nothing changed.
        """
        self._check_open()
        with self._doc.lock:
            self._check_writable()
            self._doc.apply_update(update)
            self._record(bytes(update), {"field": "*", "op": "import", "source": source})
            return int(self._last_op_id)

    # -- write path ------------------------------------------------------------------------

    @property
    def last_op_id(self) -> OpId:
        """Op id of the latest local write (0 before the first)."""
        return self._last_op_id

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every write made so far is durable on disk.

        Raises:
            StoreFullError: the disk is full; the writes are kept and retried.
            StoreError: the store failed otherwise, or the timeout passed.
        """
        self._check_open()
        started = time.monotonic()
        self._store.flush(timeout_s)  # waits for the store's own retries to succeed
        if self._unstored:
            with self._doc.lock:
                self._store_unstored()
            left = None if timeout_s is None else max(0.0, timeout_s - (time.monotonic() - started))
            self._store.flush(left)

    def _record(self, update: bytes, op: dict[str, Any]) -> None:
        if self._closed:
            raise StoreClosedError(f"replica {self.replica_id!r} is closed")
        store = self._store
        # Only a SYNC append can fail after taking the write (its commit failed); a BATCH
        # append that raises took nothing, so the count is not needed on the hot path.
        queued_before = store.outbox_len() if store.durability is Durability.SYNC else None
        try:
            self._last_op_id = store.append_local(update, op)
        except StoreClosedError:
            raise
        except StoreError as exc:
            # The doc already holds this write and a Yjs item cannot be taken back: were it
            # dropped, every later update of this process would have a hole no peer could
            # fill. A SYNC commit failure keeps it queued in the store (the outbox grew);
            # otherwise it waits here and is stored (and sent) before the next write.
            if queued_before is None or store.outbox_len() <= queued_before:
                self._unstored.append((bytes(update), dict(op)))
            raise type(exc)(
                f"local write not durable: {exc}; it is applied in memory and will be stored "
                "and sent once the store takes writes again"
            ) from exc
        self._after_append(len(update))

    def _after_append(self, size: int) -> None:
        self._tail_updates += 1
        self._tail_bytes += size
        if self._tail_updates >= SNAPSHOT_EVERY_UPDATES or self._tail_bytes >= SNAPSHOT_EVERY_BYTES:
            try:
                self.snapshot()
            except StoreError as exc:
                # The update itself is stored: its caller must not see a failure. The
                # counters stay up, so the next append tries the snapshot again.
                _log.warning("replica %s: snapshot failed, retried later: %s", self.replica_id, exc)

    def snapshot(self) -> None:
        """Write a local snapshot now so the next start replays a short tail.

        Raises:
            StoreError: the store refused it (disk full); nothing changed.
        """
        with self._doc.lock:
            self._store_unstored()
            self._store.write_snapshot(self._doc.export_update())
            self._tail_updates = 0
            self._tail_bytes = 0

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"replica {self.replica_id!r} is closed")

    def _check_writable(self) -> None:
        """Refuse a write before the doc changes: replica closed, or store failing.

        Stores first what an earlier refusal left only in the doc, so the store's order is
        the doc's order.

        Raises:
            StoreClosedError: the replica is closed.
            StoreFullError: the disk (or the store's size limit) is full.
            StoreError: the store is failing its commits for another reason.
        """
        self._check_open()
        if self._unstored:
            with self._doc.lock:
                self._store_unstored()
        self._store.check_writable()

    def _store_unstored(self) -> None:
        """Store what the doc holds and the store refused earlier (doc lock held)."""
        store = self._store
        while self._unstored:
            update, op = self._unstored[0]
            if op is None:
                store.append_remote(update, None)
            else:
                queued_before = store.outbox_len()
                try:
                    self._last_op_id = store.append_local(update, op)
                except StoreError:
                    if store.outbox_len() > queued_before:  # SYNC: queued, the store retries
                        del self._unstored[0]
                    raise
            del self._unstored[0]
            self._after_append(len(update))

    # -- SyncTarget ------------------------------------------------------------------------

    def apply_remote(self, update: bytes, seq: Seq | None, *, full_state: bool = False) -> None:
        """Apply an update from the relay; record ``seq`` as applied (SyncTarget).

        ``full_state``: the update is a relay snapshot (a whole state), see
        :meth:`NamespaceDoc.apply_update`.

        Raises:
            InvalidUpdate: the bytes are not a usable update; nothing changed.
            StoreError: the store refuses writes (``StoreFullError``: disk full). The doc
                is left unchanged and ``applied_seq`` does not move: the session asks the
                relay for the update again later.
        """
        with self._doc.lock:
            self._check_writable()
            self._doc.apply_update(update, full_state=full_state)
            data = bytes(update)
            try:
                self._store.append_remote(data, seq)
            except StoreError:
                # The store began failing after the check: the doc holds the update, the
                # store will once it takes writes again. Its seq is not claimed.
                self._unstored.append((data, None))
                raise
            if seq is not None and seq > self._applied_seq:
                self._applied_seq = seq
            self._after_append(len(update))

    @property
    def applied_seq(self) -> Seq:
        """Highest relay sequence number applied locally."""
        return self._applied_seq

    def note_applied(self, seq: Seq) -> None:
        """Record ``seq`` as applied without new bytes (SyncTarget)."""
        with self._doc.lock:
            if seq > self._applied_seq:
                self._applied_seq = seq
                self._store.note_applied(seq)

    def reset_applied(self, seq: Seq) -> None:
        """Forget sequence numbers of a relay log that no longer exists (SyncTarget).

        A relay that lost its state, or a new relay cluster, numbers its log from scratch;
        keeping the old maximum would make this replica ignore every new update.
        """
        with self._doc.lock:
            self._applied_seq = seq
            self._store.reset_applied(seq)

    @property
    def relay_incarnation(self) -> str:
        """Incarnation id of the relay log ``applied_seq`` refers to ("" before the first)."""
        return self._store.get_meta(_RELAY_INCARNATION_KEY) or ""

    def set_relay_incarnation(self, incarnation: str) -> None:
        """Remember the relay log this replica now follows (persisted in the store)."""
        self._store.set_meta(_RELAY_INCARNATION_KEY, incarnation)

    def pending_outbox(self, limit: int, after: OpId) -> list[OutboxEntry]:
        """Durable, unacknowledged local writes after ``after`` (SyncTarget)."""
        return self._store.outbox(limit=limit, after=after)

    def outbox_len(self) -> int:
        """Local writes not yet acknowledged by the relay."""
        return self._store.outbox_len()

    def on_ack(self, op_id: OpId, seq: Seq) -> None:
        """The relay sequenced ``op_id`` as ``seq`` (SyncTarget)."""
        if not self._closed:
            self._store.ack(op_id, seq)

    def set_outbox_listener(self, callback: Callable[[], None] | None) -> None:
        """Register the callback told about new durable outbox entries (SyncTarget)."""
        self._outbox_listener = callback

    def _on_durable(self, _op_id: OpId) -> None:
        listener = self._outbox_listener
        if listener is not None:
            listener()

    def heartbeat(self) -> dict[str, Any]:
        """Heartbeat payload for the relay's drift view (SyncTarget)."""
        with self._doc.lock:
            return {
                "replica_id": self.replica_id,
                "applied_seq": int(self._applied_seq),
                "state_vector": self._doc.state_vector().hex(),
                "digest": self._doc.digest(),
                "outbox": self._store.outbox_len(),
                "recovery_seconds": round(self.recovery_seconds, 6),
                "clock_offset_ms": self._doc.clock.drift_ms(),
                "schema_version": int(self._doc.schema_meta().get("version", 0) or 0),
                "started_at": _PROCESS_START,
                "sent_at": time.time(),
            }

    # -- relay -----------------------------------------------------------------------------

    def _start_sync(self, urls: list[str], token: str | None, settings: Any) -> None:
        self._sync = _SyncRunner(self, urls, token, settings)
        self._sync.start()

    @property
    def sync_client(self) -> SyncClient | None:
        """The sync client, when a relay is configured."""
        return None if self._sync is None else self._sync.client

    def _require_sync(self) -> _SyncRunner:
        if self._sync is None:
            raise CrdtStateError("this replica has no relay configured (open it with relay=URL)")
        return self._sync

    async def synced(self, timeout_s: float = 30.0) -> None:
        """Wait until every local write is acknowledged and the relay's head is applied.

        Raises:
            SyncTimeout: not reached within ``timeout_s``.
        """
        runner = self._require_sync()
        await runner.call(lambda c: c.synced(timeout_s))

    def wait_synced(self, timeout_s: float = 30.0) -> None:
        """Blocking form of :meth:`synced` for code without an event loop."""
        runner = self._require_sync()
        runner.call_blocking(lambda c: c.synced(timeout_s), timeout_s)

    async def wait_acked(self, op_id: OpId | None = None, timeout_s: float = 30.0) -> Seq:
        """Wait until local write ``op_id`` (default: the latest) is sequenced; its seq."""
        runner = self._require_sync()
        target = op_id if op_id is not None else self._last_op_id
        return cast(Seq, await runner.call(lambda c: c.wait_acked(target, timeout_s)))

    def wait_acked_blocking(self, op_id: OpId | None = None, timeout_s: float = 30.0) -> Seq:
        """Blocking form of :meth:`wait_acked`."""
        runner = self._require_sync()
        target = op_id if op_id is not None else self._last_op_id
        return cast(Seq, runner.call_blocking(lambda c: c.wait_acked(target, timeout_s), timeout_s))

    async def wait_seq(self, seq: Seq, timeout_s: float = 30.0) -> None:
        """Wait until this replica applied relay sequence number ``seq`` (read your writes)."""
        runner = self._require_sync()
        await runner.call(lambda c: c.wait_seq(seq, timeout_s))


def _tail_stats(store: Store) -> tuple[int, int]:
    stats = getattr(store, "tail_stats", None)
    return stats() if callable(stats) else (0, 0)


class _SyncRunner:
    """Runs a :class:`SyncClient` on its own event loop thread, for sync and async callers."""

    def __init__(self, replica: Replica[Any], urls: list[str], token: str | None, settings: Any):
        from crdtstate.sync.client import SyncClient

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"crdtstate-sync-{replica.namespace}", daemon=True
        )
        kwargs: dict[str, Any] = {"token": token}
        if settings is not None:
            kwargs["settings"] = settings
        self.client = SyncClient(replica, urls, **kwargs)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.client.start(), self._loop).result(timeout=10)

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.client.stop(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    async def call(self, make: Callable[[SyncClient], Any]) -> Any:
        future = asyncio.run_coroutine_threadsafe(make(self.client), self._loop)
        return await asyncio.wrap_future(future)

    def call_blocking(self, make: Callable[[SyncClient], Any], timeout_s: float) -> Any:
        future = asyncio.run_coroutine_threadsafe(make(self.client), self._loop)
        try:
            return future.result(timeout=timeout_s + 5)
        except TimeoutError as exc:
            future.cancel()
            raise SyncTimeout(f"no answer from the sync client within {timeout_s} s") from exc
