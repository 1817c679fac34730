"""The simulated network: connections made of two FIFO links, with faults.

The sync protocol runs over websockets, so the model is TCP's: a connection delivers
frames in order, once, after a delay, until it breaks; a break loses whatever was still in
flight after some point. The faults are applied where they happen on real networks or where
the protocol claims tolerance:

- delay: per-link base latency, jitter, and delay spikes;
- drop: a connection reset cuts a link at a random point (frames behind the cut are lost)
  and both ends see the connection end; a partition holds every frame of the replica's
  links, and an end that waits longer than its heartbeat timeout gives the connection up
  (its frames are then lost), while a short partition only delays them, as with TCP;
- duplicate: a link delivers an eligible frame twice (an update to the relay, whose
  resend the relay must deduplicate; a broadcast or ack to a replica, whose sequence
  numbers the session must see through);
- reorder: a link delivers two adjacent broadcasts swapped (the session must notice the gap
  and catch up), and frames of an old connection keep arriving at the relay while the same
  replica's new connection runs (a half-open connection), which TCP allows.

Each link draws from its own random source, derived from the seed and the link's name. The
relay's writers run as asyncio tasks woken in an order Python does not fix (the hub keeps its
connections in a set), so a shared random source would make the run depend on that order;
per-link sources and the ``(time, link name, generation)`` delivery key do not.

Owns links and connections. Imports only the standard library and the trace.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from chaos.sim.trace import frame_kind

if TYPE_CHECKING:
    from chaos.sim.relay import RelayConn
    from chaos.sim.replica import SimReplica
    from chaos.sim.world import World

__all__ = ["CLOSE", "DATA", "OPEN", "RESET", "Connection", "Item", "Link"]

DATA: Final = 0
"""A frame."""
OPEN: Final = 1
"""Relay to replica only: the websocket handshake completed."""
CLOSE: Final = 2
"""The sender closed the connection (``code`` says how)."""
RESET: Final = 3
"""The connection broke (a crash, a reset): the receiver sees an abnormal close."""

_DUP_KINDS_UP: Final = frozenset({"update"})
_DUP_KINDS_DOWN: Final = frozenset({"bcast", "batch", "ack"})
_REORDER_KINDS: Final = frozenset({"bcast"})
_ORDER_EPSILON_S: Final = 1e-7

Receiver = Callable[["Item"], Awaitable[None] | None]


@dataclass(slots=True)
class Item:
    """One thing in flight on a link."""

    time: float
    kind: int
    data: bytes = b""
    code: int = 0
    note: str = ""


class Link:
    """One direction of one connection: a FIFO with latency and faults.

    Args:
        world: the simulation (clock and event queue).
        name: unique and stable (it orders deliveries that fall on the same instant).
        base_latency_s: the link's usual one-way delay.
        up: True for replica to relay (decides which frames may be duplicated).
    """

    def __init__(self, world: World, name: str, base_latency_s: float, *, up: bool) -> None:
        self.world = world
        self.name = name
        self.rng = random.Random(f"{world.seed}/{name}")
        self.base_latency_s = base_latency_s
        self.items: deque[Item] = deque()
        self.receiver: Receiver | None = None
        self.paused = False
        self.dead = False
        self.dup_p = 0.0
        self.reorder_p = 0.0
        self.spike_s = 0.0
        self.spike_until = 0.0
        self._dup_kinds = _DUP_KINDS_UP if up else _DUP_KINDS_DOWN
        self._last = 0.0
        self._gen = 0
        self.backlog_bytes = 0
        """Bytes in flight: the sender's socket buffer, as far as the sender can tell."""
        self.drain_below = 0
        self.on_drain: Callable[[], None] | None = None
        """Called once the backlog is at or under ``drain_below`` (a writer waits for it)."""

    def latency(self) -> float:
        """One sample of this link's one-way delay."""
        delay = self.base_latency_s + self.rng.expovariate(2000.0)
        if self.world.now < self.spike_until:
            delay += self.spike_s * self.rng.random()
        return delay

    def push(self, kind: int, data: bytes = b"", code: int = 0) -> None:
        """Send one item; it arrives after every item sent before it."""
        if self.dead:
            return
        when = max(self.world.now + self.latency(), self._last + _ORDER_EPSILON_S)
        self._last = when
        items = self.items
        was_idle = not items
        item = Item(when, kind, data, code)
        items.append(item)
        self.backlog_bytes += len(data)
        if kind == DATA and (self.dup_p or self.reorder_p):
            self._misbehave(item)
        if was_idle and not self.paused:
            self._schedule()

    def _misbehave(self, item: Item) -> None:
        kind = frame_kind(item.data)
        items = self.items
        if self.reorder_p and kind in _REORDER_KINDS and len(items) >= 2:
            before = items[-2]
            if (
                before.kind == DATA
                and frame_kind(before.data) in _REORDER_KINDS
                and self.rng.random() < self.reorder_p
            ):
                before.data, item.data = item.data, before.data
                before.note = "reordered"
        if self.dup_p and kind in self._dup_kinds and self.rng.random() < self.dup_p:
            copy = Item(item.time + _ORDER_EPSILON_S, DATA, item.data, note="duplicate")
            self._last = copy.time
            items.append(copy)
            self.backlog_bytes += len(copy.data)

    def _schedule(self) -> None:
        self._gen += 1
        head = self.items[0]
        self.world.schedule_link(max(head.time, self.world.now), self.name, self._gen, self._fire)

    def _fire(self, gen: int) -> Awaitable[None] | None:
        if gen != self._gen or self.paused or not self.items:
            return None
        item = self.items.popleft()
        self.backlog_bytes -= len(item.data)
        if self.items:
            self._schedule()
        if self.on_drain is not None and self.backlog_bytes <= self.drain_below:
            self.on_drain()
        if self.dead or self.receiver is None:
            return None
        if item.note:
            # Traced at delivery, not when sent: sends happen in the relay's writer tasks,
            # whose order is not the seed's to fix; deliveries are.
            self.world.trace.add(self.world.now, f"{self.name} {item.note}")
        return self.receiver(item)

    def pause(self) -> None:
        """Hold every item (a partition, or a relay that stopped reading)."""
        self.paused = True
        self._gen += 1

    def resume(self) -> None:
        """Deliver held items again, in order, no earlier than one latency from now."""
        if not self.paused:
            return
        self.paused = False
        floor = self.world.now + self.base_latency_s
        for item in self.items:
            floor = max(item.time, floor + _ORDER_EPSILON_S)
            item.time = floor
        self._last = max(self._last, floor)
        if self.items:
            self._schedule()

    def cut(self, keep: int) -> int:
        """Lose every item in flight but the first ``keep``; returns how many were lost."""
        lost = max(0, len(self.items) - keep)
        for _ in range(lost):
            self.backlog_bytes -= len(self.items.pop().data)
        if not self.items:
            self._gen += 1
        if self.on_drain is not None and self.backlog_bytes <= self.drain_below:
            self.on_drain()
        return lost

    def kill(self) -> None:
        """The receiving end is gone: drop everything in flight and anything sent later."""
        self.dead = True
        self.items.clear()
        self.backlog_bytes = 0
        self._gen += 1
        if self.on_drain is not None:
            self.on_drain()


class Connection:
    """One websocket connection between a replica process and a relay process.

    Attributes:
        number: unique in the seed, in creation order.
        replica: the replica end.
        up: replica to relay.
        down: relay to replica.
        relay_side: the relay's end once accepted (None before, or if it never was).
        opened: the replica saw the handshake complete.
        client_done: the replica end is finished with it (closed or broken).
        reached_live: the session reached the live state on it.
    """

    def __init__(self, world: World, replica: SimReplica, number: int, latency_s: float) -> None:
        self.number = number
        self.replica = replica
        self.up = Link(world, f"c{number}>", latency_s, up=True)
        self.down = Link(world, f"c{number}<", latency_s, up=False)
        self.relay_side: RelayConn | None = None
        self.opened = False
        self.client_done = False
        self.reached_live = False

    def __repr__(self) -> str:
        return f"<Connection c{self.number} {self.replica.name}>"
