"""Nemesis: the fault verbs a scenario composes, each recorded in a fault schedule.

Why one object: a run must end healed (every proxy clean, every process running and
resumed, clocks back) whatever the scenario did, and a failing run must print exactly what
was done when. So every verb goes through :meth:`Nemesis.record`, and :meth:`Nemesis.heal_all`
knows every kind of damage the verbs can leave.

Network faults act on the proxies of the target spokes (``r1``.., or the names of a group):

=================  ==========================================  ==========================
verb               mechanism                                   fault (chaos-checks.md)
=================  ==========================================  ==========================
``cut``            proxy disabled: connections dropped,        F1 (F11 on all spokes)
                   reconnects refused
``blackhole``      ``timeout`` toxic, ``timeout:0``, one or    F2, F3 (one direction)
                   both streams: the link stays up, silent
``stall``          ``bandwidth rate:0``: held, then a burst    F4
``latency``        ``latency`` toxic with jitter               F5
``bandwidth``      ``bandwidth`` toxic (KB/s)                  F6
``slicer``         ``slicer`` toxic (tiny TCP segments)        F7
``truncate``       ``limit_data`` toxic                        F8
``reset``          ``reset_peer`` toxic                        F9
``slow_close``     ``slow_close`` toxic                        F10
=================  ==========================================  ==========================

Process faults: ``kill_replica`` / ``restart_replica`` (F14), ``kill_relay`` /
``restart_relay`` (F15), ``pause`` / ``resume`` (SIGSTOP/SIGCONT, F16), ``skew`` (offset of a
replica's HLC wall clock, F18), ``wipe_relay`` (the relay loses its store, F17). Relay input:
``compact`` (snapshot now, F21 when a spoke is cut), ``hostile`` (a rogue client's malformed
input, F22) and ``probe`` (record the relay's view of the replicas, for C10).

Directions: ``both``, ``to-relay`` (the replica's updates vanish; it still hears others) and
``from-relay`` (the relay sequences, the acks never arrive; the replica resends).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from chaos.cluster import Cluster
from chaos.history import Event
from chaos.relayview import relay_replicas, snapshot_now
from chaos.rogue import KINDS, send_hostile

Direction = Literal["both", "to-relay", "from-relay"]

_STREAMS: dict[str, tuple[str, ...]] = {
    "both": ("upstream", "downstream"),
    "to-relay": ("upstream",),
    "from-relay": ("downstream",),
}

SLEEP_SLICE_S = 0.05


@dataclass(slots=True)
class FaultRecord:
    """One line of the fault schedule."""

    t: float
    action: str
    targets: list[str]
    detail: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.detail.items())
        return f"{self.t:8.3f}s  {self.action:<16} {','.join(self.targets):<12} {extra}".rstrip()


class Nemesis:
    """Fault verbs over one :class:`Cluster`, recorded in :attr:`schedule`.

    Args:
        cluster: a started cluster.
        rng: the run's seeded random source (targets, durations, magnitudes).
    """

    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.schedule: list[FaultRecord] = []
        self.toxics: dict[str, set[str]] = {}
        self.cut_spokes: set[str] = set()
        self.killed: set[str] = set()
        self.paused: set[str] = set()
        self.skewed: set[str] = set()
        self.relay_down = False
        self._toxic_ids = 0

    # -- bookkeeping -----------------------------------------------------------------------

    def record(self, action: str, targets: Iterable[str], **detail: Any) -> FaultRecord:
        """Append to the schedule (time on the histories' axis)."""
        entry = FaultRecord(round(self.cluster.now(), 3), action, list(targets), detail)
        self.schedule.append(entry)
        return entry

    @property
    def replicas(self) -> list[str]:
        """Names of the spokes: every replica reaching the relay through a proxy (the
        workers, and in-process replicas of the pytest plugin; not the observer)."""
        return list(self.cluster.proxies)

    def group(self, size: str) -> list[str]:
        """A random group: ``one``, ``minority``, ``majority`` or ``all`` of the replicas."""
        names = self.replicas
        n = len(names)
        count = {"one": 1, "minority": max(1, (n - 1) // 2), "majority": n // 2 + 1}.get(size, n)
        return sorted(self.rng.sample(names, min(n, count)))

    def sleep(self, seconds: float) -> None:
        """Wait (bounded, in short slices)."""
        deadline = time.monotonic() + max(0.0, seconds)
        while (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(SLEEP_SLICE_S, remaining))

    def save(self, path: Path) -> None:
        """Write the schedule as JSON."""
        path.write_text(json.dumps([asdict(r) for r in self.schedule], indent=1) + "\n")

    # -- network ---------------------------------------------------------------------------

    def _add_toxic(
        self, target: str, toxic_type: str, stream: str, attributes: dict[str, int]
    ) -> None:
        api = self.cluster.require_api()
        self._toxic_ids += 1
        name = f"{toxic_type}-{stream}-{self._toxic_ids}"
        api.add_toxic(self.cluster.proxies[target], toxic_type, stream, attributes, name=name)
        self.toxics.setdefault(target, set()).add(name)

    def _toxic(
        self,
        action: str,
        targets: Iterable[str],
        toxic_type: str,
        attributes: dict[str, int],
        direction: Direction = "both",
    ) -> None:
        names = list(targets)
        for target in names:
            for stream in _STREAMS[direction]:
                self._add_toxic(target, toxic_type, stream, attributes)
        self.record(action, names, direction=direction, **attributes)

    def cut(self, targets: Iterable[str]) -> None:
        """F1: disable the spokes' proxies (drop connections, refuse reconnects)."""
        names = list(targets)
        api = self.cluster.require_api()
        for target in names:
            api.set_enabled(self.cluster.proxies[target], False)
            self.cut_spokes.add(target)
        self.record("cut", names)

    def blackhole(self, targets: Iterable[str], direction: Direction = "both") -> None:
        """F2/F3: silently drop everything on the given streams; the link stays up."""
        self._toxic("blackhole", targets, "timeout", {"timeout": 0}, direction)

    def stall(self, targets: Iterable[str], direction: Direction = "both") -> None:
        """F4: hold every byte (bandwidth 0) until healed, then deliver the backlog."""
        self._toxic("stall", targets, "bandwidth", {"rate": 0}, direction)

    def latency(
        self, targets: Iterable[str], ms: int, jitter_ms: int = 0, direction: Direction = "both"
    ) -> None:
        """F5: delay each chunk by ``ms`` ± ``jitter_ms``."""
        self._toxic("latency", targets, "latency", {"latency": ms, "jitter": jitter_ms}, direction)

    def bandwidth(
        self, targets: Iterable[str], kb_per_s: int, direction: Direction = "both"
    ) -> None:
        """F6: a thin pipe."""
        self._toxic("bandwidth", targets, "bandwidth", {"rate": kb_per_s}, direction)

    def slicer(self, targets: Iterable[str], average_bytes: int = 8) -> None:
        """F7: deliver in tiny segments (websocket frames split across reads)."""
        attributes = {"average_size": average_bytes, "size_variation": average_bytes // 2}
        self._toxic("slicer", targets, "slicer", attributes | {"delay": 0})

    def truncate(
        self, targets: Iterable[str], after_bytes: int, direction: Direction = "both"
    ) -> None:
        """F8: close each connection after ``after_bytes`` (mid-frame, mid-handshake)."""
        self._toxic("truncate", targets, "limit_data", {"bytes": after_bytes}, direction)

    def reset(self, targets: Iterable[str], after_ms: int = 0) -> None:
        """F9: abort connections with TCP RST."""
        self._toxic("reset", targets, "reset_peer", {"timeout": after_ms}, "both")

    def slow_close(self, targets: Iterable[str], delay_ms: int = 500) -> None:
        """F10: delay the close of each connection."""
        self._toxic("slow_close", targets, "slow_close", {"delay": delay_ms}, "both")

    def heal(self, targets: Iterable[str] | None = None) -> None:
        """Remove the toxics of the spokes (default: all) and enable their proxies."""
        names = list(self.replicas if targets is None else targets)
        api = self.cluster.require_api()
        healed: list[str] = []
        for target in names:
            proxy = self.cluster.proxies[target]
            touched = bool(self.toxics.get(target)) or target in self.cut_spokes
            for toxic in sorted(self.toxics.pop(target, set())):
                api.remove_toxic(proxy, toxic)
            if target in self.cut_spokes:
                api.set_enabled(proxy, True)
                self.cut_spokes.discard(target)
            if touched:
                healed.append(target)
        if healed:
            self.record("heal", healed)

    def partition(
        self, targets: Iterable[str], how: str = "cut", direction: Direction = "both"
    ) -> None:
        """Cut the targets from the relay (and so from every other replica).

        ``how``: ``cut`` (F1; both directions only) or ``blackhole`` (F2/F3).
        """
        if how == "cut" and direction == "both":
            self.cut(targets)
        else:
            self.blackhole(targets, direction)

    # -- processes -------------------------------------------------------------------------

    def kill_replica(self, name: str) -> None:
        """F14: kill -9 a replica worker in the middle of its writes."""
        node = self.cluster.nodes[name]
        node.kill()
        self.paused.discard(name)
        self.killed.add(name)
        self.record("kill", [name], incarnation=node.incarnation)

    def restart_replica(self, name: str) -> None:
        """Restart a killed replica from its store (same data dir, same proxy)."""
        node = self.cluster.nodes[name]
        node.start()
        self.killed.discard(name)
        self.record("restart", [name], incarnation=node.incarnation)

    def kill_relay(self) -> None:
        """F15: kill -9 the relay."""
        self.cluster.relay.kill()
        self.relay_down = True
        self.record("kill", ["relay"])

    def restart_relay(self) -> None:
        """Restart the relay on the same port and data directory."""
        self.cluster.restart_relay()
        self.relay_down = False
        self.record("restart", ["relay"], starts=self.cluster.relay.starts)

    def wipe_relay(self) -> None:
        """F17: kill -9 the relay, lose its whole store, restart it empty (same port) while
        the replicas keep their documents: the "re-created server doc" of Yjs relays."""
        self.cluster.relay.kill()
        data_dir = self.cluster.relay.data_dir
        if data_dir.is_dir():
            shutil.rmtree(data_dir)
        self.relay_down = True
        self.record("wipe", ["relay"])
        self.restart_relay()

    def pause(self, name: str) -> None:
        """F16: SIGSTOP a replica worker (longer than its heartbeat timeout, if held)."""
        self.cluster.nodes[name].pause_process()
        self.paused.add(name)
        self.record("pause", [name])

    def resume(self, name: str) -> None:
        """SIGCONT a paused replica worker."""
        self.cluster.nodes[name].resume_process()
        self.paused.discard(name)
        self.record("resume", [name])

    def skew(self, name: str, offset_ms: int) -> None:
        """F18: offset a replica's HLC wall clock (forward, back, or 0 to reset)."""
        self.cluster.nodes[name].skew(offset_ms)
        if offset_ms:
            self.skewed.add(name)
        else:
            self.skewed.discard(name)
        self.record("skew", [name], offset_ms=offset_ms)

    # -- the relay's own word --------------------------------------------------------------

    def compact(self) -> None:
        """F21: make the relay snapshot and compact now (typically while a spoke is cut, so
        that replica comes back behind the snapshot point)."""
        port, namespace = self.cluster.relay.port, self.cluster.config.node.namespace
        answer = snapshot_now(port, namespace) if self.cluster.relay.running else None
        seq = None if answer is None else answer.get("seq")
        self.record("compact", ["relay"], seq=seq)

    def hostile(self, kind: str | None = None) -> None:
        """F22: a rogue client sends the relay malformed input (see :mod:`chaos.rogue`)."""
        chosen = kind or self.rng.choice(KINDS)
        if not self.cluster.relay.running:
            return
        try:
            outcome = send_hostile(
                self.cluster.relay.port, self.cluster.config.node.namespace, chosen, self.rng
            )
        except OSError as exc:
            outcome = {"kind": chosen, "error": type(exc).__name__}
        self.record("hostile", ["relay"], **outcome)

    def probe(self, label: str, cut: Iterable[str] = ()) -> dict[str, Any] | None:
        """Record the relay's view of the replicas (C10: does it report the cut ones?)."""
        if not self.cluster.relay.running:
            return None
        view = relay_replicas(self.cluster.relay.port, self.cluster.config.node.namespace)
        if view is None:
            return None
        event = Event(
            "note",
            "relay",
            value={"event": "relay-view", "label": label, "cut": sorted(cut), "view": view},
            t=round(self.cluster.now(), 6),
        )
        path = self.cluster.workdir / "histories" / "relay-views.jsonl"
        with path.open("a", encoding="utf-8") as out:
            out.write(event.to_json() + "\n")
        return view

    # -- the end of every run --------------------------------------------------------------

    def heal_all(self) -> None:
        """Undo everything: relay up, killed replicas restarted, paused resumed, clocks
        reset, every proxy clean. Idempotent."""
        if self.relay_down or not self.cluster.relay.running:
            self.restart_relay()
        for name in sorted(self.paused):
            self.resume(name)
        for name in sorted(self.killed):
            self.restart_replica(name)
        for name in sorted(self.skewed):
            self.skew(name, 0)
        self.heal()
        self.record("healed", ["all"])
