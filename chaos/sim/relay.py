"""The relay in the simulation: the production hub, sequencer and peers over a memory backend.

Everything that decides what the relay does is the real code: :class:`relay.hub.Hub` loads
namespaces (snapshot + log tail, the same path a restarted relay takes),
:class:`relay.hub.LiveNamespace` checks, applies, sequences and fans out, the
:class:`relay.sequencer.Sequencer` group-commits in its own task, each
:class:`relay.peer.Peer` queues and coalesces frames for its writer task, and frames are
dispatched by ``relay.ws``'s own ``_dispatch`` and ``_refused``. What this module adds is
what ``relay.ws.handle_websocket`` does with aiohttp: accept a connection, create its peer
and writer, hand it frames, and clean up when it ends; plus crash and restart.

The relay's coroutines run on the seed's own asyncio event loop, which has no sockets and no
timers: the ready queue is FIFO, the memory backend never suspends, so the interleaving is a
function of the seed. The relay runs only when the simulation lets it (:meth:`SimRelay.settle`,
an event scheduled a little after each input), so updates accepted meanwhile are committed
together (group commit) and a crash in between loses them unacknowledged, as a real one would.

The hub reads ``time.monotonic()`` for token buckets, idle eviction and metrics only. The
simulation sets rate limits no run can reach, never starts the maintenance task (it takes
snapshots itself) and never drains (drain polls the wall clock), so wall-clock time never
decides anything here.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Final

from chaos.sim.net import CLOSE, DATA, OPEN, RESET, Connection, Item
from crdtstate._ids import Namespace
from relay.backend.base import BackendError
from relay.backend.memory import MemoryBackend
from relay.config import Access, RelaySettings
from relay.hub import Hub, LiveNamespace
from relay.metrics import RelayMetrics
from relay.peer import Peer
from relay.ws import _dispatch, _refused

if TYPE_CHECKING:
    from chaos.sim.world import World

__all__ = ["NAMESPACE", "RelayConn", "SimRelay"]

NAMESPACE: Final = Namespace("sim")
_SETTLE_ROUNDS_MAX: Final = 500
_ABNORMAL: Final = 1006
_NORMAL: Final = 1000


class RelayConn:
    """The relay's end of one connection: what ``handle_websocket`` keeps on its stack.

    The socket calls mirror ``relay.ws``: ``send_many`` writes a batch and then waits while
    the socket's send buffer is above its limit; ``write_now`` writes at once unless the
    buffer is above it (then the peer queues). The simulated send buffer is what is in
    flight on the link to the replica, limited by the seed's ``socket_buffer_bytes``: a
    partitioned replica's buffer fills, its peer's queue fills, and overflows.
    """

    def __init__(
        self, relay: SimRelay, conn: Connection, process: int, live: LiveNamespace
    ) -> None:
        self.relay = relay
        self.conn = conn
        self.process = process
        self.live = live
        self.backend = relay.backend
        self.closed = False
        self._buffer_max = relay.socket_buffer_bytes
        self._drained: asyncio.Future[None] | None = None
        self.peer = Peer(
            f"c{conn.number}",
            Access.WRITE,
            self.send,
            self.close,
            relay.settings.limits,
            relay.metrics,
            send_many=self.send_many,
            write_now=self.write_now,
        )
        self.writer: asyncio.Task[None] | None = None

    def _dead(self) -> bool:
        return self.closed or self.process != self.relay.process

    async def send(self, frame: bytes) -> None:
        """The peer writer's socket write of one frame."""
        await self.send_many([frame])

    async def send_many(self, frames: list[bytes]) -> None:
        """The peer writer's socket write of a batch; waits while the buffer is full."""
        if self._dead():
            raise ConnectionResetError("websocket is closing")
        down = self.conn.down
        for frame in frames:
            down.push(DATA, frame)
        if down.backlog_bytes > self._buffer_max and not down.dead:
            self._drained = asyncio.get_running_loop().create_future()
            down.drain_below = self._buffer_max // 2  # the transport's low-water mark
            down.on_drain = self._on_drain
            await self._drained

    @property
    def waiting_for_buffer(self) -> bool:
        """The writer waits for the socket's send buffer to drain."""
        return self._drained is not None and not self._drained.done()

    def _on_drain(self) -> None:
        """The link's backlog went under the limit (or the connection ended)."""
        self.conn.down.on_drain = None
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)
            self.relay.schedule_settle()

    def write_now(self, frames: list[bytes], skip: Sequence[int] = ()) -> bool:
        """Fan-out's direct write (but for the frames at the indices in ``skip``), unless
        the connection is closing or its buffer is full."""
        down = self.conn.down
        if self._dead() or down.backlog_bytes > self._buffer_max:
            return False
        for index, frame in enumerate(frames):
            if index not in skip:
                down.push(DATA, frame)
        return True

    async def close(self, code: int, reason: str) -> None:
        """The peer writer's socket close (after a requested close drained the queue)."""
        if self._dead():
            return
        self.relay.disconnect(self, CLOSE, code)

    def durable_head(self) -> int:
        """Durable head of the backend this relay process wrote (for the invariants)."""
        return int(self.backend.durable_head(NAMESPACE))


class SimRelay:
    """The relay process: restartable, with storage that survives (or, wiped, does not).

    Args:
        world: the simulation.
        settings: relay settings drawn for this seed.
        durable_appends: False only for the planted "ack before durable" bug.
    """

    def __init__(
        self,
        world: World,
        settings: RelaySettings,
        *,
        durable_appends: bool,
        socket_buffer_bytes: int,
    ) -> None:
        self.world = world
        self.settings = settings
        self.socket_buffer_bytes = socket_buffer_bytes
        self.rng = random.Random(f"{world.seed}/relay")
        self._durable_appends = durable_appends
        self.backend = self._new_backend()
        self.process = 0
        self.hub: Hub | None = None
        self.metrics = RelayMetrics()
        self.conns: dict[int, RelayConn] = {}
        self.lives: list[LiveNamespace] = []
        self.wipes = 0
        self._settle_pending = False
        self._settling = False
        self._sync_pending = False
        self._held: list[Connection] = []
        self._notes: list[tuple[int, str]] = []

    def _new_backend(self) -> MemoryBackend:
        rng = self.rng
        return MemoryBackend(
            incarnation=lambda: f"{rng.getrandbits(64):016x}",
            durable_appends=self._durable_appends,
        )

    @property
    def up(self) -> bool:
        """True while the relay process runs."""
        return self.hub is not None

    # -- process lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Start a relay process on the current storage (no-op when one runs)."""
        if self.hub is not None:
            return
        self.process += 1
        await self.backend.open()
        self.metrics = RelayMetrics()
        # Hub.start() would run the maintenance task (idle eviction and timed snapshots on
        # the wall clock); the simulation takes snapshots as scheduled events instead.
        self.hub = Hub(self.settings, self.backend, self.metrics)
        self.world.trace.add(self.world.now, f"relay start {self.process}")

    async def crash(self, *, wipe: bool) -> None:
        """Kill the relay process (kill -9); ``wipe`` also loses its storage."""
        if self.hub is None:
            return
        world = self.world
        world.trace.add(world.now, f"relay crash wipe={wipe}")
        self.hub = None
        for number in sorted(self.conns):
            rc = self.conns[number]
            rc.closed = True
            rc.conn.down.on_drain = None
            conn = rc.conn
            conn.up.kill()
            # Frames already on the wire still arrive; the rest die with the process.
            conn.down.cut(self.rng.randrange(len(conn.down.items) + 1))
            conn.down.push(RESET)
        self.conns.clear()
        self.lives.clear()
        self._held.clear()
        self._settle_pending = False
        self._sync_pending = False
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.backend.crash()
        if wipe:
            self.wipes += 1
            self.backend = self._new_backend()

    # -- connections (what relay.ws.handle_websocket does) ------------------------------------

    def on_item(self, conn: Connection, item: Item) -> Coroutine[None, None, None] | None:
        """Something arrived from a replica on ``conn`` (a coroutine for the world to await)."""
        if item.kind == OPEN:
            return self._accept(conn)
        rc = conn.relay_side
        if rc is None or rc.closed or rc.process != self.process:
            # A frame on a connection this relay process gave up on: TCP answers RST.
            if (
                item.kind == DATA
                and self.hub is not None
                and rc is not None
                and not conn.down.dead
                and not conn.client_done
            ):
                conn.down.push(RESET)
            return None
        if item.kind == DATA:
            return self._on_frame(rc, item.data)
        self.disconnect(rc, RESET, _ABNORMAL)
        return None

    async def _accept(self, conn: Connection) -> None:
        world = self.world
        hub = self.hub
        if hub is None:
            conn.down.push(RESET)  # connection refused
            return
        if conn.client_done:
            return
        try:
            live = await hub.acquire(NAMESPACE)
        except BackendError:
            conn.down.push(CLOSE, code=1011)
            return
        rc = RelayConn(self, conn, self.process, live)
        conn.relay_side = rc
        self.conns[conn.number] = rc
        if live not in self.lives:
            self.lives.append(live)
        hub.connections += 1
        self.metrics.connections.labels("pending").inc()
        conn.down.push(OPEN)
        rc.writer = asyncio.create_task(rc.peer.run_writer(), name=f"writer:c{conn.number}")
        live.attach(rc.peer)
        world.trace.add(world.now, f"c{conn.number} accepted")
        self.schedule_settle()

    async def _on_frame(self, rc: RelayConn, data: bytes) -> None:
        world = self.world
        hub = self.hub
        assert hub is not None
        world.trace.frame(world.now, f"c{rc.conn.number}> relay", data)
        peer, live = rc.peer, rc.live
        if peer.closing or hub.draining or live.failed:
            return
        refusal = await _dispatch(live, peer, data)
        if refusal is not None:
            world.trace.add(world.now, f"c{rc.conn.number} refused {refusal.reason}")
            _refused(
                peer,
                refusal,
                self.metrics,
                self.settings.limits.errors_per_connection_max,
                NAMESPACE,
            )
        elif live.sequencer.full:
            # Backpressure: ws.py stops reading the socket until the commit queue has room.
            rc.conn.up.pause()
            self._held.append(rc.conn)
        self.schedule_settle()

    def disconnect(self, rc: RelayConn, kind: int, code: int) -> None:
        """The connection ended on the relay's side; tell the replica with ``kind``."""
        if rc.closed:
            return
        rc.closed = True
        rc.peer.request_close(_NORMAL, "")
        rc.conn.down.push(kind, code=code)
        rc._on_drain()  # a writer waiting for the buffer finds the connection gone
        self.conns.pop(rc.conn.number, None)
        hub = self.hub
        if hub is not None and rc.process == self.process:
            rc.live.detach(rc.peer)
            hub.release(rc.live)
            hub.connections -= 1
            self.metrics.connections.labels(rc.peer.kind.value).dec()
        note = f"c{rc.conn.number} relay closed {code}"
        if self._settling:
            # Called by a writer task: their order is not the seed's; traced in conn order.
            self._notes.append((rc.conn.number, note))
        else:
            self.world.trace.add(self.world.now, note)
        self.schedule_settle()

    # -- running the relay's tasks --------------------------------------------------------------

    def schedule_settle(self) -> None:
        """Let the relay's tasks run a little later (they run until idle then)."""
        if self._settle_pending or self._settling or self.hub is None:
            return
        self._settle_pending = True
        self.world.at(self.world.now + self.rng.uniform(0.0, 0.002), self.settle)

    async def settle(self) -> None:
        """Run the relay's tasks (commits, fan-out, writers) until they are all idle."""
        self._settle_pending = False
        if self.hub is None:
            return
        self._settling = True
        try:
            for _ in range(_SETTLE_ROUNDS_MAX):
                await asyncio.sleep(0)
                if self.quiet():
                    break
            else:
                self.world.fail("relay did not become idle (a task keeps waking up)")
        finally:
            self._settling = False
        if self._notes:
            for _, note in sorted(self._notes):
                self.world.trace.add(self.world.now, note)
            self._notes.clear()
        if self._held and not any(live.sequencer.full for live in self.lives):
            held, self._held = self._held, []
            for conn in held:
                conn.up.resume()
        if not self.backend.durable_appends and not self._sync_pending:
            self._sync_pending = True
            backend = self.backend
            self.world.at(
                self.world.now + self.rng.uniform(0.001, 0.03), lambda: self._sync(backend)
            )

    def _sync(self, backend: MemoryBackend) -> None:
        self._sync_pending = False
        if backend is self.backend and self.hub is not None:
            backend.sync()

    def quiet(self) -> bool:
        """True when no commit is pending and every open peer's queue is written (or its
        writer waits for the network)."""
        for live in self.lives:
            if live.sequencer.pending_count:
                return False
        for rc in self.conns.values():
            if rc.closed or rc.waiting_for_buffer:
                continue  # a writer waiting for its socket's buffer waits for the network
            if rc.peer.queue_len or rc.peer.closing:
                return False
        return True

    # -- scheduled relay events -------------------------------------------------------------------

    async def snapshot(self) -> None:
        """Store a snapshot and trim the log now (what the maintenance task does on a timer)."""
        hub = self.hub
        live = None if hub is None else hub.namespaces.get(NAMESPACE)
        if live is None or live.failed:
            return
        try:
            outcome = await live.snapshot()
        except BackendError:
            self.world.trace.add(self.world.now, "relay snapshot failed")
            return
        self.world.trace.add(
            self.world.now, f"relay snapshot {outcome.seq} trimmed {outcome.trimmed}"
        )

    def head(self) -> int | None:
        """The live namespace's head, or None when it is not loaded."""
        hub = self.hub
        live = None if hub is None else hub.namespaces.get(NAMESPACE)
        return None if live is None or live.failed else int(live.head)

    async def reloaded_state_vector(self) -> bytes:
        """Load the namespace from storage alone, as a restarted relay would; its state vector."""
        hub = Hub(self.settings, self.backend, RelayMetrics())
        live = await hub.acquire(NAMESPACE)
        try:
            return bytes(live.doc.get_state())
        finally:
            await live.sequencer.stop()
