"""One seed's world: replicas, a relay, a network, a virtual clock and a fault schedule.

A seed fixes everything: the world's random source draws a *profile* (which faults this seed
uses and how often, relay limits, client tuning, durability modes: swarm testing, since a
seed that does fewer kinds of things does each of them harder), then the schedule. The loop
is a discrete-event simulation on one asyncio event loop with no I/O: a heap of timed events
(link deliveries, timers, restarts), virtual time jumping from one to the next. Each of the
``steps`` steps lets time pass (delivering whatever falls due), then takes one action: a write
on a random replica (most of the time), an application ``flush()``, or a fault.

At the end the network heals, crashed processes restart, storage works again, and the world
runs until it is quiescent (every replica live, caught up with the relay's head, its outbox
empty, nothing in flight); a world that does not get there within a bounded virtual time is a
liveness failure. Then the chaos checkers run on the history and the final reads, and the
relay's state (live, and reloaded from storage alone) is compared with the replicas'.

Owns the scheduler, the profile, the actions and the end-of-seed checks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import logging
import random
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Final

from chaos.checkers import check_history
from chaos.history import Event
from chaos.sim.net import CLOSE, RESET, Connection
from chaos.sim.planted import PlantOptions, planted
from chaos.sim.relay import NAMESPACE, SimRelay
from chaos.sim.replica import SimReplica
from chaos.sim.trace import Trace
from chaos.workload import KINDS, final_read
from crdtstate.statevector import state_vectors_equal
from crdtstate.store.base import Durability
from crdtstate.sync.session import ConnectionState, SyncSettings
from relay.config import LimitSettings, RelaySettings

__all__ = ["ClientProfile", "Profile", "SeedResult", "SimConfig", "World", "run_seed"]

EPOCH_MS: Final = 1_700_000_000_000
"""Virtual time 0 on the replicas' wall clocks."""

MEAN_STEP_S: Final = 0.005
"""Mean virtual time between two steps."""

QUIESCE_LIMIT_S: Final = 120.0
"""Virtual time a healed world gets to become quiescent before it is a liveness failure."""

_QUIESCE_POLL_S: Final = 0.05
_UNLIMITED: Final = 10**12

Callback = Callable[[], Awaitable[None] | None]

ACTIONS: Final[dict[str, float]] = {
    "flush": 6.0,
    "crash": 2.5,
    "relay_crash": 1.0,
    "partition": 3.0,
    "reset": 3.0,
    "duplicate": 3.0,
    "reorder": 2.0,
    "delay": 3.0,
    "clock": 2.0,
    "snapshot": 3.0,
    "storage": 1.0,
}
"""Every action but ``write`` (weight :data:`WRITE_WEIGHT`), with its base weight."""

WRITE_WEIGHT: Final = 100.0

EXTRA_FAULTS: Final[dict[str, float]] = {
    "disk_full": 2.0,
}
"""Faults outside the default profile, switched on with ``--fault`` (``SimConfig.faults``).

``disk_full``: a replica's store fails its commits for a while (StoreFullError). It is
drawn after everything else, so the default seeds stay as they are; adding it to
:data:`ACTIONS` would change every seed's profile (and the CI run's traces).
"""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What a run of the simulation is asked to do (the seed aside).

    Attributes:
        replicas: replicas per world.
        steps: steps per seed.
        plant: a planted bug (see :mod:`chaos.sim.planted`), or None.
        invariants: check the run-time invariants (off: only the end-of-seed checkers).
        keep_trace: keep every trace line (for printing a replayed seed), not just a tail.
        faults: faults from :data:`EXTRA_FAULTS` to add to every seed's profile.
    """

    replicas: int = 3
    steps: int = 200
    plant: str | None = None
    invariants: bool = True
    keep_trace: bool = False
    faults: tuple[str, ...] = ()


@dataclass(slots=True)
class SeedResult:
    """The outcome of one seed."""

    seed: int
    ok: bool
    digest: str
    failures: list[str]
    trace_tail: list[str]
    stats: dict[str, int]
    virtual_s: float
    seconds: float


@dataclass(frozen=True, slots=True)
class ClientProfile:
    """Client tuning for one seed (the session's settings and the client loop's timers)."""

    window: int
    heartbeat_interval_s: float
    resend_delay_s: float
    backoff_s_initial: float
    backoff_s_max: float
    heartbeat_timeout_s: float
    relay_timeout_s: float
    connect_timeout_s: float
    batch_interval_s: float
    backoff_jitter: float = 0.5

    def sync_settings(self, instance: str) -> SyncSettings:
        """The session's settings for one process run."""
        return SyncSettings(
            window=self.window,
            heartbeat_interval_s=self.heartbeat_interval_s,
            resend_delay_s=self.resend_delay_s,
            backoff_s_initial=self.backoff_s_initial,
            backoff_s_max=self.backoff_s_max,
            backoff_jitter=self.backoff_jitter,
            instance=instance,
        )

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        """Reconnect delay: the formula of ``SyncClient._backoff_s``."""
        delay = min(self.backoff_s_max, self.backoff_s_initial * float(2 ** min(attempt, 30)))
        return delay * (1.0 - self.backoff_jitter * rng.random())


@dataclass(frozen=True, slots=True)
class Profile:
    """Everything a seed draws before its first step."""

    actions: tuple[str, ...]
    weights: tuple[float, ...]
    latency_s: float
    relay: RelaySettings
    client: ClientProfile
    durabilities: tuple[Durability, ...]
    signed: bool
    socket_buffer_bytes: int

    @classmethod
    def draw(cls, rng: random.Random, replicas: int, extra: tuple[str, ...] = ()) -> Profile:
        """Draw a profile: each fault is on with probability 1/2, weights vary 4x; the
        ``extra`` faults are always on (drawn last, so they change nothing else)."""
        actions = ["write"]
        weights = [WRITE_WEIGHT]
        for name, weight in ACTIONS.items():
            if name == "flush" or rng.random() < 0.5:
                actions.append(name)
                weights.append(weight * rng.uniform(0.5, 2.0))
        limits = LimitSettings(
            conn_updates_per_s=_UNLIMITED,
            conn_updates_burst=_UNLIMITED,
            conn_bytes_per_s=_UNLIMITED,
            namespace_updates_per_s=_UNLIMITED,
            namespace_updates_burst=_UNLIMITED,
            queue_frames_max=rng.choice((3, 8, 2048, 2048)),
            commit_batch_max=rng.choice((1, 2, 2048, 2048)),
            catchup_ring_entries=rng.choice((0, 2, 16, 4096)),
            pending_updates_max=rng.choice((1, 4, 8192, 8192)),
            # The commit delay waits on the wall clock, which must decide nothing here.
            commit_delay_s=0.0,
        )
        client = ClientProfile(
            window=rng.choice((1, 2, 8, 256)),
            heartbeat_interval_s=rng.choice((0.1, 0.5, 2.0)),
            resend_delay_s=rng.choice((0.02, 0.2)),
            backoff_s_initial=rng.choice((0.01, 0.1)),
            backoff_s_max=rng.choice((0.5, 2.0)),
            heartbeat_timeout_s=rng.choice((0.3, 1.0)),
            relay_timeout_s=rng.choice((0.3, 1.0)),
            connect_timeout_s=rng.choice((0.2, 0.5)),
            batch_interval_s=rng.choice((0.001, 0.005, 0.02)),
        )
        return cls(
            actions=tuple(actions),
            weights=tuple(weights),
            latency_s=rng.choice((0.0005, 0.002, 0.01)),
            relay=RelaySettings(open=True, limits=limits),
            client=client,
            durabilities=tuple(
                rng.choice((Durability.SYNC, Durability.BATCH)) for _ in range(replicas)
            ),
            signed=rng.random() < 0.25,
            socket_buffer_bytes=rng.choice((1024, 8192, 256 * 1024)),
        )._with_extra(rng, extra)

    def _with_extra(self, rng: random.Random, extra: tuple[str, ...]) -> Profile:
        if not extra:
            return self
        actions = list(self.actions)
        weights = list(self.weights)
        for name in extra:
            actions.append(name)
            weights.append(EXTRA_FAULTS[name] * rng.uniform(0.5, 2.0))
        return dataclasses.replace(self, actions=tuple(actions), weights=tuple(weights))


class World:
    """The simulated world of one seed. Run it with :meth:`run`.

    Args:
        seed: the seed.
        config: what to run.
        options: adjustments required by a planted bug.
    """

    def __init__(self, seed: int, config: SimConfig, options: PlantOptions) -> None:
        self.seed = seed
        self.config = config
        self.rng = random.Random(f"crdtstate-sim/{seed}")
        self.now = 0.0
        self.step = -1
        self.trace = Trace(keep_all=config.keep_trace)
        self.history: list[Event] = []
        self.failures: list[str] = []
        self.stats: Counter[str] = Counter()
        self.profile = Profile.draw(self.rng, config.replicas, config.faults)
        self._queue: list[tuple[float, int, str, int, Callback]] = []
        self._counter = itertools.count()
        self._conn_numbers = itertools.count(1)
        self._client_ids: set[int] = set()
        self.connections: list[Connection] = []
        self.relay = SimRelay(
            self,
            self.profile.relay,
            durable_appends=options.relay_durable_appends,
            socket_buffer_bytes=self.profile.socket_buffer_bytes,
        )
        self.replicas = [
            SimReplica(self, index, self.profile.durabilities[index], self.profile.client)
            for index in range(config.replicas)
        ]
        self.trace.add(0.0, f"seed {seed} profile {','.join(self.profile.actions)}")

    # -- scheduler ------------------------------------------------------------------------------

    def at(self, when: float, callback: Callback) -> None:
        """Run ``callback`` at virtual time ``when`` (after events already due then)."""
        entry: tuple[float, int, str, int, Callback] = (
            when,
            1,
            "",
            next(self._counter),
            callback,
        )
        heapq.heappush(self._queue, entry)

    def schedule_link(
        self, when: float, name: str, gen: int, fire: Callable[[int], Awaitable[None] | None]
    ) -> None:
        """Deliver the head of link ``name`` at ``when``.

        Keyed by the link's name and generation, not by insertion order: links are fed by the
        relay's writer tasks, whose wake-up order is not a function of the seed.
        """
        callback: Callback = partial(fire, gen)
        heapq.heappush(self._queue, (when, 0, name, gen, callback))

    async def advance(self, until: float) -> None:
        """Run every event due up to ``until``, then set the clock to ``until``."""
        queue = self._queue
        while queue and queue[0][0] <= until:
            entry = heapq.heappop(queue)
            self.now = entry[0]
            result = entry[4]()
            if result is not None:
                await result
            if self.failures:
                return
        self.now = until

    def now_ms(self) -> int:
        """The replicas' physical clock (before each one's skew)."""
        return EPOCH_MS + int(self.now * 1000)

    def fresh_client_id(self) -> int:
        """A Yjs client id never used before in this world (one per process start)."""
        while True:
            client_id = self.rng.randrange(1, 2**32)
            if client_id not in self._client_ids:
                self._client_ids.add(client_id)
                return client_id

    def new_connection(self, replica: SimReplica) -> Connection:
        """A connection from ``replica`` (held from the start if it is cut off)."""
        latency = self.profile.latency_s * self.rng.uniform(0.5, 1.5)
        conn = Connection(self, replica, next(self._conn_numbers), latency)
        self.connections.append(conn)
        if replica.partitioned:
            replica.hold(conn)
        return conn

    # -- failures -------------------------------------------------------------------------------

    def fail(self, message: str) -> None:
        """Record a failure; the run stops at the next event boundary."""
        self.failures.append(f"t={self.now:.4f}s step {self.step}: {message}")
        self.trace.add(self.now, f"FAIL {message}")

    def violation(self, replica: str, message: str) -> None:
        """An invariant broke (ignored when invariants are off)."""
        if self.config.invariants:
            self.fail(f"invariant broken on {replica}: {message}")

    # -- the run --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the seed: steps, then heal and quiesce, then the checks."""
        try:
            await self.relay.start()
            for replica in self.replicas:
                replica.start()
            for step in range(self.config.steps):
                self.step = step
                await self.advance(self.now + self.rng.expovariate(1.0 / MEAN_STEP_S))
                if self.failures:
                    break
                await self._act()
                if self.failures:
                    break
            self.step = self.config.steps
            if not self.failures:
                await self._quiesce()
            if not self.failures:
                await self._check()
        except Exception:
            self.failures.append(
                f"t={self.now:.4f}s step {self.step}: unexpected exception\n"
                + traceback.format_exc()
            )
        finally:
            await self._stop_tasks()

    async def _stop_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _act(self) -> None:
        profile = self.profile
        action = self.rng.choices(profile.actions, profile.weights)[0]
        self.stats[action] += 1
        await _ACTIONS[action](self)

    def _alive(self) -> list[SimReplica]:
        return [r for r in self.replicas if r.alive]

    def _connected(self) -> list[SimReplica]:
        return [r for r in self.replicas if r.conn is not None and r.conn.opened]

    # -- actions ----------------------------------------------------------------------------------

    async def _write(self) -> None:
        alive = self._alive()
        if alive:
            self.rng.choice(alive).write()

    async def _flush(self) -> None:
        batch = [r for r in self._alive() if r.batch]
        if batch:
            self.rng.choice(batch).flush()

    async def _crash(self) -> None:
        alive = self._alive()
        if alive:
            self.rng.choice(alive).crash(min(2.0, self.rng.expovariate(1 / 0.2)))

    async def _relay_crash(self) -> None:
        if not self.relay.up:
            return
        await self.relay.crash(wipe=self.rng.random() < 0.1)
        self.at(self.now + min(2.0, self.rng.expovariate(1 / 0.2)), self.relay.start)

    async def _partition(self) -> None:
        rng = self.rng
        victims = self.replicas if rng.random() < 0.25 else [rng.choice(self.replicas)]
        duration = rng.uniform(0.01, 0.2) if rng.random() < 0.5 else rng.uniform(0.5, 3.0)
        for replica in victims:
            replica.partition(duration)

    def relay_heartbeat_timeout(self, replica: SimReplica, conn: Connection, epoch: int) -> None:
        """The relay's websocket heartbeat found ``conn`` dead (the partition went on)."""
        rc = conn.relay_side
        if (
            replica.partitioned
            and epoch == replica.partition_epoch
            and rc is not None
            and not rc.closed
            and rc.process == self.relay.process
        ):
            self.relay.disconnect(rc, CLOSE, 1006)

    async def _reset(self) -> None:
        connected = self._connected()
        if not connected:
            return
        conn = self.rng.choice(connected).conn
        assert conn is not None
        lost = conn.up.cut(self.rng.randrange(len(conn.up.items) + 1))
        lost += conn.down.cut(self.rng.randrange(len(conn.down.items) + 1))
        self.trace.add(self.now, f"c{conn.number} reset, {lost} frames lost")
        conn.up.push(RESET)
        conn.down.push(RESET)

    def _link_window(self) -> tuple[Connection, float] | None:
        connected = self._connected()
        if not connected:
            return None
        conn = self.rng.choice(connected).conn
        assert conn is not None
        return conn, self.rng.uniform(0.05, 0.5)

    async def _duplicate(self) -> None:
        picked = self._link_window()
        if picked is None:
            return
        conn, window = picked
        link = conn.up if self.rng.random() < 0.5 else conn.down
        link.dup_p = 0.3
        self.trace.add(self.now, f"{link.name} duplicates for {window:.3f}s")

        def stop() -> None:
            link.dup_p = 0.0

        self.at(self.now + window, stop)

    async def _reorder(self) -> None:
        picked = self._link_window()
        if picked is None:
            return
        conn, window = picked
        link = conn.down
        link.reorder_p = 0.5
        self.trace.add(self.now, f"{link.name} reorders for {window:.3f}s")

        def stop() -> None:
            link.reorder_p = 0.0

        self.at(self.now + window, stop)

    async def _delay(self) -> None:
        picked = self._link_window()
        if picked is None:
            return
        conn, window = picked
        link = conn.up if self.rng.random() < 0.5 else conn.down
        link.spike_s = self.rng.uniform(0.02, 0.5)
        link.spike_until = self.now + window
        self.trace.add(self.now, f"{link.name} delay spike {link.spike_s:.3f}s")

    async def _clock(self) -> None:
        rng = self.rng
        magnitude = rng.choice((rng.randint(1, 50), rng.randint(100, 5000), 3_600_000))
        self.rng.choice(self.replicas).jump_clock(magnitude * rng.choice((-1, 1)))

    async def _disk_full(self) -> None:
        replica = self.rng.choice(self.replicas)
        store = replica.store
        store.fail_commits("disk full", full=True)
        self.trace.add(self.now, f"{replica.name} disk full")

        def heal() -> None:
            store.fail_commits(None)
            self.trace.add(self.now, f"{replica.name} disk heals")

        self.at(self.now + self.rng.uniform(0.05, 0.5), heal)

    async def _snapshot(self) -> None:
        await self.relay.snapshot()

    async def _storage(self) -> None:
        backend = self.relay.backend
        backend.fail_appends("disk full")
        self.trace.add(self.now, "relay storage fails")

        def heal() -> None:
            backend.fail_appends(None)
            self.trace.add(self.now, "relay storage heals")

        self.at(self.now + self.rng.uniform(0.02, 0.4), heal)

    # -- heal, quiesce, check -------------------------------------------------------------------

    async def _quiesce(self) -> None:
        self.trace.add(self.now, "quiesce")
        for replica in self.replicas:
            replica.heal()
        for conn in self.connections:
            for link in (conn.up, conn.down):
                link.dup_p = link.reorder_p = 0.0
                link.spike_until = 0.0
        self.relay.backend.fail_appends(None)
        for replica in self.replicas:
            replica.store.fail_commits(None)
        await self.relay.start()
        for replica in self.replicas:
            replica.start()
        for replica in self.replicas:
            if replica.batch:
                replica.flush()
        deadline = self.now + QUIESCE_LIMIT_S
        while not self._quiescent():
            if self.now >= deadline:
                states = "; ".join(r.describe() for r in self.replicas)
                self.fail(
                    f"liveness: not quiescent {QUIESCE_LIMIT_S:.0f}s after healing "
                    f"(relay head {self.relay.head()}; {states})"
                )
                return
            await self.advance(self.now + _QUIESCE_POLL_S)
            if self.failures:
                return

    def _quiescent(self) -> bool:
        head = self.relay.head()
        if head is None or not self.relay.quiet():
            return False
        for replica in self.replicas:
            session, store_replica = replica.session, replica.replica
            if session is None or store_replica is None:
                return False
            if session.state is not ConnectionState.LIVE or session.applied_seq != head:
                return False
            if store_replica.outbox_len():
                return False
            conn = replica.conn
            if conn is None or conn.up.items or conn.down.items:
                return False
        return True

    async def _check(self) -> None:
        reads = []
        for replica in self.replicas:
            store_replica = replica.replica
            assert store_replica is not None
            reads.append(final_read(store_replica, replica.name, self.now))
            if not store_replica.doc.settled:
                self.fail(f"{replica.name} holds remote updates it could not integrate")
        for verdict in check_history(self.history + reads, KINDS):
            if not verdict.ok:
                self.fail(str(verdict))
        hub = self.relay.hub
        assert hub is not None
        live = hub.namespaces[NAMESPACE]
        relay_sv = bytes(live.doc.get_state())
        if not state_vectors_equal(relay_sv, await self.relay.reloaded_state_vector()):
            self.fail(
                "the relay's storage, reloaded, differs from its live document: something it "
                "sequenced is not durable"
            )
        for read in reads:
            replica_sv = str((read.read or {}).get("state_vector", ""))
            if not state_vectors_equal(relay_sv, replica_sv):
                self.fail(f"the relay's document differs from {read.process}'s (state vectors)")
        self.trace.add(
            self.now,
            f"checked head {live.head} digest {reads[0].read and reads[0].read['digest'][:16]}",
        )


_ACTIONS: Final[dict[str, Callable[[World], Awaitable[None]]]] = {
    "write": World._write,
    "flush": World._flush,
    "crash": World._crash,
    "relay_crash": World._relay_crash,
    "partition": World._partition,
    "reset": World._reset,
    "duplicate": World._duplicate,
    "reorder": World._reorder,
    "delay": World._delay,
    "clock": World._clock,
    "snapshot": World._snapshot,
    "storage": World._storage,
    "disk_full": World._disk_full,
}


class _LogCapture(logging.Handler):
    """Turns logged exceptions (a swallowed bug: "commit callback failed") into failures,
    and keeps the library's expected warnings off stderr during a run."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.problems: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            detail = "".join(traceback.format_exception(*record.exc_info))
            self.problems.append(
                f"logged exception in {record.name}: {record.getMessage()}\n{detail}"
            )


_CAPTURED_LOGGERS: Final = ("relay", "crdtstate", "chaos", "asyncio")


@contextmanager
def _captured_logs() -> Iterator[_LogCapture]:
    handler = _LogCapture()
    loggers = [logging.getLogger(name) for name in _CAPTURED_LOGGERS]
    saved = [(logger.propagate, list(logger.handlers)) for logger in loggers]
    for logger in loggers:
        logger.handlers = [handler]
        logger.propagate = False
    try:
        yield handler
    finally:
        for logger, (propagate, handlers) in zip(loggers, saved, strict=True):
            logger.handlers = handlers
            logger.propagate = propagate


def run_seed(seed: int, config: SimConfig) -> SeedResult:
    """Run one seed in a fresh event loop; never raises for a failing seed."""
    started = time.perf_counter()
    with planted(config.plant) as options, _captured_logs() as logs:
        loop = asyncio.new_event_loop()
        try:
            world = World(seed, config, options)
            loop.run_until_complete(world.run())
        finally:
            loop.close()
    failures = world.failures + logs.problems
    return SeedResult(
        seed=seed,
        ok=not failures,
        digest=world.trace.digest,
        failures=failures,
        trace_tail=list(world.trace.lines),
        stats=dict(world.stats),
        virtual_s=world.now,
        seconds=time.perf_counter() - started,
    )
