"""A replica process in the simulation: the production replica and sync session, restartable.

Each process start opens a real :class:`~crdtstate.replica.Replica` on the replica's
:class:`~crdtstate.store.memory.MemoryStore` (the restart path: snapshot + tail, a fresh Yjs
client id) and a real :class:`~crdtstate.sync.session.SyncSession`; the chaos
:class:`~chaos.workload.Workload` writes through it. What this module adds is what
:class:`~crdtstate.sync.client.SyncClient` does with asyncio and a websocket: connect, feed
the session what arrives, send what it returns, tick it, reconnect with the same capped and
jittered backoff. The session is sans-I/O, so nothing of its logic is re-implemented here.

A crash is kill -9: the store loses what was not durable (``MemoryStore.crash``), the
connection resets, the outcomes the workload had not confirmed stay unknown in the history.
"""

from __future__ import annotations

import hashlib
import random
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chaos.history import Event
from chaos.sim.invariants import CheckedTarget, update_op_id
from chaos.sim.net import CLOSE, DATA, OPEN, RESET, Connection, Item
from chaos.sim.relay import NAMESPACE
from chaos.sim.trace import frame_kind
from chaos.workload import ChaosState, Workload
from crdtstate._ids import ReplicaId
from crdtstate.errors import CrdtStateError, StoreError
from crdtstate.hlc import HybridClock
from crdtstate.identity import Identity
from crdtstate.replica import Replica
from crdtstate.store.base import Durability
from crdtstate.store.memory import MemoryStore
from crdtstate.sync import wire
from crdtstate.sync.session import (
    Acked,
    ConnectionState,
    Fatal,
    Rejected,
    StoreFailed,
    SyncSession,
)

if TYPE_CHECKING:
    from chaos.sim.world import ClientProfile, World

__all__ = ["SimReplica"]

_TICK_S: Final = 0.5
"""How often the client ticks its session (``SyncClient`` wakes its pump this often)."""

_PERMANENT_CLOSE: Final = frozenset(
    {
        wire.CloseCode.UNAUTHORIZED,
        wire.CloseCode.FORBIDDEN,
        wire.CloseCode.IDENTITY_CONFLICT,
        wire.CloseCode.BAD_NAMESPACE,
        wire.CloseCode.UNSUPPORTED_VERSION,
    }
)


def derive_identity(seed: int, name: str) -> Identity:
    """An ed25519 identity derived from the seed (random keys would change every trace)."""
    secret = hashlib.sha256(f"crdtstate-sim/{seed}/{name}/identity".encode()).digest()
    key = Ed25519PrivateKey.from_private_bytes(secret)
    return Identity(ReplicaId(name), key.public_key().public_bytes_raw(), key)


class SimReplica:
    """One replica id: its store (which outlives crashes) and its current process.

    Args:
        world: the simulation.
        index: position among the replicas (names ``r0``, ``r1``...).
        durability: the store's durability mode.
        profile: client tuning drawn for this seed.
    """

    def __init__(
        self, world: World, index: int, durability: Durability, profile: ClientProfile
    ) -> None:
        self.world = world
        self.name = f"r{index}"
        self.profile = profile
        self.rng = random.Random(f"{world.seed}/{self.name}")
        self.identity = derive_identity(world.seed, self.name)
        self.store = MemoryStore(durability, clock=lambda: world.now)
        self.batch = durability is Durability.BATCH
        self.offset_ms = 0
        self.process = 0
        self.alive = False
        self.replica: Replica[ChaosState] | None = None
        self.target: CheckedTarget | None = None
        self.session: SyncSession | None = None
        self.workload: Workload | None = None
        self.conn: Connection | None = None
        self.attempt = 0
        self.partitioned = False
        self.partition_epoch = 0
        self.held: list[Connection] = []
        self.outcomes: dict[int, Event] = {}
        self._pump_pending = False
        self._commit_pending = False
        self._reconnect_pending = False

    # -- process lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start a process: open the replica from its store, then connect (no-op if alive)."""
        if self.alive:
            return
        world = self.world
        self.process += 1
        self.alive = True
        # Timers of the previous process may still be queued; they check the process number
        # and do nothing, so none of their "already scheduled" flags may hold for this one.
        self._pump_pending = self._commit_pending = self._reconnect_pending = False
        clock = HybridClock(world.now_ms, self.offset_ms)
        try:
            replica: Replica[ChaosState] = Replica.open(
                f"sim/{self.name}",
                NAMESPACE,
                ChaosState,
                durability=self.store.durability,
                store=self.store,
                client_id=world.fresh_client_id(),
                clock=clock,
                identity=self.identity,
            )
        except StoreError as exc:
            # The process cannot start (its disk is full): it exits, and is started again.
            world.trace.add(world.now, f"{self.name} start failed: {exc}")
            self.alive = False
            self.store.crash()
            world.at(world.now + 0.1, self.start)
            return
        self.replica = replica
        target = CheckedTarget(
            replica, partial(world.violation, self.name), signed=world.profile.signed
        )
        self.target = target
        self.session = SyncSession(
            target, self.profile.sync_settings(f"{self.name}.{self.process}")
        )
        target.set_outbox_listener(self._outbox_ready)
        self.workload = Workload(
            replica,
            self.name,
            self.rng,
            world.history.append,
            lambda: world.now,
            op_prefix=f"{self.name}.{self.process}",
        )
        self.attempt = 0
        world.trace.add(
            world.now, f"{self.name} start {self.process} applied {replica.applied_seq}"
        )
        self._connect()
        process = self.process
        world.at(world.now + _TICK_S, lambda: self._tick(process))
        self._after_store_change()

    def crash(self, downtime_s: float) -> None:
        """kill -9 this process; a new one starts after ``downtime_s``."""
        if not self.alive:
            return
        world = self.world
        world.trace.add(world.now, f"{self.name} crash (pending {self.store.pending_count()})")
        conn = self.conn
        if conn is not None:
            conn.client_done = True
            conn.down.kill()
            conn.up.push(RESET)
        self.conn = None
        self.alive = False
        self.replica = self.target = self.session = self.workload = None
        self.store.crash()
        durable = int(self.store.durable_op_id)
        # Op ids above the durable one will be handed out again by the next process.
        self.outcomes = {k: v for k, v in self.outcomes.items() if k <= durable}
        world.at(world.now + downtime_s, self.start)

    def jump_clock(self, delta_ms: int) -> None:
        """Step this machine's clock (kept across restarts, as a machine's skew is)."""
        self.offset_ms += delta_ms
        if self.replica is not None:
            self.replica.clock.offset_ms = self.offset_ms
        self.world.trace.add(self.world.now, f"{self.name} clock {delta_ms:+d}ms")

    # -- the application --------------------------------------------------------------------------

    def write(self) -> None:
        """One random write of the chaos workload."""
        replica, workload = self.replica, self.workload
        if replica is None or workload is None:
            return
        before = replica.last_op_id
        try:
            invoke = workload.step()
        except CrdtStateError as exc:
            self.world.trace.add(self.world.now, f"{self.name} write failed {type(exc).__name__}")
            return
        after = replica.last_op_id
        if after != before:
            # The outcome (with the tag or stamp the write got) is recorded now under sync
            # durability and after the next flush under batch; an ack may come first, or
            # after a crash dropped the unconfirmed outcome: it must carry them too.
            outcome = workload.pending[-1] if workload.pending else self.world.history[-1]
            if outcome.op == invoke.op:
                self.outcomes[int(after)] = outcome
        self.world.trace.add(
            self.world.now, f"{self.name} write {invoke.field} {invoke.f} op {int(after)}"
        )
        self._after_store_change()

    def flush(self) -> None:
        """The application calls ``flush()``: writes so far become durable and confirmed."""
        if self.workload is None:
            return
        try:
            self.workload.flush()
        except StoreError:
            return
        self.world.trace.add(self.world.now, f"{self.name} flush")

    # -- store background work -----------------------------------------------------------------

    def _after_store_change(self) -> None:
        if self._commit_pending or not self.alive or not self.store.pending_count():
            return
        self._commit_pending = True
        process = self.process
        self.world.at(
            self.world.now + self.profile.batch_interval_s, lambda: self._group_commit(process)
        )

    def _group_commit(self, process: int) -> None:
        self._commit_pending = False
        if process != self.process or not self.alive:
            return
        try:
            self.store.commit_pending()
        except StoreError:
            return

    def _outbox_ready(self) -> None:
        # Called from inside store commits, maybe inside the session: defer, as SyncClient does.
        if self._pump_pending:
            return
        self._pump_pending = True
        process = self.process
        self.world.at(self.world.now, lambda: self._pump(process))

    def _pump(self, process: int) -> None:
        self._pump_pending = False
        if process != self.process or self.session is None or not self._connected():
            return
        self._send(self.session.outbox_changed(self.world.now))

    def _tick(self, process: int) -> None:
        if process != self.process or not self.alive:
            return
        if self.session is not None and self._connected():
            self._send(self.session.tick(self.world.now))
        self._after_store_change()
        self.world.at(self.world.now + _TICK_S, lambda: self._tick(process))

    # -- connection ----------------------------------------------------------------------------

    def _connected(self) -> bool:
        conn = self.conn
        return conn is not None and conn.opened and not conn.client_done

    def _connect(self) -> None:
        self._reconnect_pending = False
        if not self.alive or self.conn is not None:
            return
        world = self.world
        conn = world.new_connection(self)
        self.conn = conn
        conn.down.receiver = partial(self._on_item, conn)
        conn.up.receiver = partial(world.relay.on_item, conn)
        world.trace.add(world.now, f"{self.name} connect c{conn.number}")
        conn.up.push(OPEN)
        process = self.process
        world.at(
            world.now + self.profile.connect_timeout_s, lambda: self._connect_timeout(conn, process)
        )

    def _connect_timeout(self, conn: Connection, process: int) -> None:
        if (
            process == self.process
            and conn is self.conn
            and not conn.opened
            and not conn.client_done
        ):
            conn.up.push(RESET)
            self._ended(conn, wire.CloseCode.GOING_AWAY, "connect timeout")

    def heartbeat_timeout(self, conn: Connection, epoch: int) -> None:
        """The websocket heartbeat found the connection dead (a partition went on too long)."""
        if self.partitioned and epoch == self.partition_epoch and conn is self.conn:
            conn.up.push(RESET)
            self._ended(conn, 1006, "heartbeat timeout")

    def _on_item(self, conn: Connection, item: Item) -> None:
        if conn is not self.conn or conn.client_done or not self.alive:
            return
        if item.kind == DATA:
            self._on_frame(conn, item.data)
        elif item.kind == OPEN:
            session = self.session
            assert session is not None
            conn.opened = True
            self.world.trace.add(self.world.now, f"c{conn.number} open {self.name}")
            self._send(session.connection_made(self.world.now))
        elif item.kind == CLOSE:
            self._ended(conn, item.code, f"closed by the relay ({item.code})")
        else:
            self._ended(conn, 1006, "connection reset")

    def _on_frame(self, conn: Connection, data: bytes) -> None:
        world = self.world
        session, target = self.session, self.target
        assert session is not None and target is not None
        kind = frame_kind(data)
        world.trace.frame(world.now, f"c{conn.number}< {self.name}", data)
        rc = conn.relay_side
        durable_head = rc.durable_head if rc is not None else (lambda: 0)
        target.frame_kind = kind
        target.durable_head = durable_head
        if kind == "welcome":
            welcome = wire.decode(data)
            assert isinstance(welcome, wire.Welcome)
            if (
                session.incarnation
                and welcome.incarnation == session.incarnation
                and session.applied_seq > welcome.head_seq
            ):
                world.violation(
                    self.name,
                    f"relay incarnation {welcome.incarnation[:8]} welcomed {self.name} with "
                    f"head {welcome.head_seq} below seq {session.applied_seq} it had applied: "
                    "the relay lost sequenced updates",
                )
        out = session.receive(data, world.now)
        self._send(out)
        for event in session.events():
            if isinstance(event, Acked):
                durable = durable_head()
                if event.seq > durable:
                    world.violation(
                        self.name,
                        f"relay acknowledged op {event.op_id} as seq {event.seq} before it was "
                        f"durable (durable head {durable})",
                    )
                outcome = self.outcomes.get(int(event.op_id))
                if outcome is not None:
                    world.history.append(
                        Event(
                            "acked",
                            self.name,
                            op=outcome.op,
                            seq=int(event.seq),
                            tag=outcome.tag,
                            stamp=outcome.stamp,
                            t=world.now,
                        )
                    )
            elif isinstance(event, Rejected):
                world.fail(f"relay rejected {self.name}'s op {event.op_id}: {event.message}")
            elif isinstance(event, Fatal):
                world.fail(f"relay refused {self.name} for good: {event.error}")
            elif isinstance(event, StoreFailed):
                refused = type(event.error).__name__
                world.trace.add(world.now, f"{self.name} store refused relay update: {refused}")
        if session.state is ConnectionState.LIVE:
            conn.reached_live = True
        self._after_store_change()

    def _send(self, frames: list[bytes]) -> None:
        conn = self.conn
        if conn is None or not frames:
            return
        for frame in frames:
            op_id = update_op_id(frame)
            if op_id and op_id > self.store.durable_op_id:
                self.world.violation(
                    self.name,
                    f"sent op {op_id} before its store made it durable "
                    f"(durable up to {self.store.durable_op_id})",
                )
            conn.up.push(DATA, frame)

    def _ended(self, conn: Connection, code: int, reason: str) -> None:
        world = self.world
        conn.client_done = True
        self.conn = None
        session = self.session
        if session is not None:
            session.connection_lost(reason)
        world.trace.add(world.now, f"c{conn.number} ended {self.name}: {reason}")
        if code in _PERMANENT_CLOSE:
            world.fail(f"relay closed {self.name}'s connection for good: {reason}")
            return
        self.attempt = 0 if conn.reached_live else self.attempt + 1
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if self._reconnect_pending:
            return
        self._reconnect_pending = True
        process = self.process
        delay = self.profile.backoff_s(self.attempt, self.rng)

        def reconnect() -> None:
            if process == self.process:
                self._connect()

        self.world.at(self.world.now + delay, reconnect)

    # -- partitions ----------------------------------------------------------------------------

    def hold(self, conn: Connection) -> None:
        """Hold ``conn``'s frames while this replica is cut off."""
        conn.up.pause()
        conn.down.pause()
        self.held.append(conn)

    def partition(self, duration_s: float) -> None:
        """Cut this replica off the relay for ``duration_s``."""
        world = self.world
        self.partition_epoch += 1
        epoch = self.partition_epoch
        self.partitioned = True
        world.trace.add(world.now, f"{self.name} partition {duration_s:.3f}s")
        conn = self.conn
        if conn is not None:
            self.hold(conn)
            profile = self.profile
            world.at(
                world.now + profile.heartbeat_timeout_s * (1 + 0.5 * self.rng.random()),
                lambda: self.heartbeat_timeout(conn, epoch),
            )
            world.at(
                world.now + profile.relay_timeout_s * (1 + 0.5 * self.rng.random()),
                lambda: world.relay_heartbeat_timeout(self, conn, epoch),
            )
        world.at(world.now + duration_s, lambda: self.heal(epoch))

    def heal(self, epoch: int | None = None) -> None:
        """End the partition (``epoch``: only if no newer partition began since)."""
        if epoch is not None and epoch != self.partition_epoch:
            return
        if not self.partitioned and not self.held:
            return
        self.partitioned = False
        held, self.held = self.held, []
        for conn in held:
            conn.up.resume()
            conn.down.resume()
        self.world.trace.add(self.world.now, f"{self.name} healed")

    # -- observation ---------------------------------------------------------------------------

    def describe(self) -> str:
        """One line of state for a liveness failure report."""
        session, replica = self.session, self.replica
        if session is None or replica is None:
            return f"{self.name}: down"
        return (
            f"{self.name}: {session.state.value}, applied {session.applied_seq}, head "
            f"{session.head_seq}, outbox {replica.outbox_len()}, inflight {session.inflight}, "
            f"conn {None if self.conn is None else self.conn.number}, last error "
            f"{session.last_error!r}"
        )

    def final_state(self) -> dict[str, Any]:
        """What the end-of-seed checks need beyond the final read."""
        replica = self.replica
        assert replica is not None
        return {"settled": replica.doc.settled, "outbox": replica.outbox_len()}
