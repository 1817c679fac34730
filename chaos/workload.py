"""The chaos workload: random writes of every CRDT kind, recorded in a history.

One :class:`Workload` drives one replica. Every value it writes is unique within the run
(it embeds the process name and a counter), so checkers can tell writes apart even when a
crash cut the record of a stamp or a tag. Each operation is recorded as an ``invoke``
before it runs and as ``ok`` (with its stamp or tag) once it returned under ``sync``
durability; under ``batch`` the outcome follows the next confirmed ``flush()``.

Used by the real-process harness (inside each replica process) and by the simulation.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from chaos.history import Event
from crdtstate import GCounter, Log, LWWMap, LWWRegister, ORSet, PNCounter, Replica, Schema
from crdtstate.crdt.base import FieldKind
from crdtstate.errors import CrdtStateError


class ChaosState(Schema):
    """The schema every chaos replica writes: one field of every kind."""

    flag = LWWRegister(str, default="")
    hits = GCounter()
    karma = PNCounter()
    members = ORSet(str)
    config = LWWMap(int)
    memory = Log(str)


KINDS: dict[str, str] = {name: str(f.kind) for name, f in ChaosState.fields().items()}
"""Field name -> CRDT kind, as the checkers want it."""

ELEMENTS = [f"m{i}" for i in range(6)]
KEYS = [f"k{i}" for i in range(4)]

Recorder = Callable[[Event], None]
Clock = Callable[[], float]


class Workload:
    """Random operations on one replica, recorded.

    Args:
        replica: the replica to write (schema :class:`ChaosState`).
        process: this replica's name in the history.
        rng: the seeded random source (the whole run is reproducible from a seed).
        record: where events go (a list's ``append``, a file writer).
        now: seconds since the start of the run.
        op_prefix: prefix of operation ids and written values (default: ``process``); a
            restarted process passes one naming its incarnation, so ids stay unique.
    """

    def __init__(
        self,
        replica: Replica[ChaosState],
        process: str,
        rng: random.Random,
        record: Recorder,
        now: Clock,
        *,
        op_prefix: str | None = None,
    ) -> None:
        self.replica = replica
        self.process = process
        self.op_prefix = op_prefix or process
        self.rng = rng
        self.record = record
        self.now = now
        self.count = 0
        self.pending: list[Event] = []
        self.batch = str(replica.store.durability) == "batch"

    def _next(self) -> str:
        self.count += 1
        return f"{self.op_prefix}-{self.count}"

    def step(self) -> Event:
        """Do one random write; returns its invoke event."""
        state = self.replica.state
        op_id = self._next()
        op_before = self.replica.last_op_id
        choice = self.rng.randrange(8)
        invoke = Event("invoke", self.process, op=op_id, t=self.now())
        outcome = Event("ok", self.process, op=op_id)
        if choice == 0:
            invoke.field, invoke.f, invoke.value = "flag", "set", op_id
            self.record(invoke)
            outcome.stamp = list(state.flag.set(op_id))
        elif choice == 1:
            invoke.field, invoke.f, invoke.value = "hits", "inc", self.rng.randint(1, 5)
            self.record(invoke)
            state.hits.inc(invoke.value)
        elif choice in (2, 3):
            verb = "inc" if choice == 2 else "dec"
            invoke.field, invoke.f, invoke.value = "karma", verb, self.rng.randint(1, 5)
            self.record(invoke)
            getattr(state.karma, verb)(invoke.value)
        elif choice == 4:
            element = self.rng.choice(ELEMENTS)
            invoke.field, invoke.f, invoke.value = "members", "add", element
            with self.replica.doc.lock:
                invoke.tags = state.members.tags(element)
                self.record(invoke)
                outcome.tag = state.members.add(element)
        elif choice == 5:
            element = self.rng.choice(ELEMENTS)
            invoke.field, invoke.f, invoke.value = "members", "remove", element
            with self.replica.doc.lock:
                invoke.tags = state.members.tags(element)
                self.record(invoke)
                state.members.remove(element)
        elif choice == 6:
            key = self.rng.choice(KEYS)
            unique = self.count * 1000 + self.rng.randrange(1000)
            if self.rng.random() < 0.2:
                invoke.field, invoke.f, invoke.key = "config", "delete", key
                self.record(invoke)
                outcome.stamp = list(state.config.delete(key))
            else:
                invoke.field, invoke.f, invoke.key, invoke.value = "config", "set", key, unique
                self.record(invoke)
                outcome.stamp = list(state.config.set(key, unique))
        else:
            invoke.field, invoke.f, invoke.value = "memory", "append", op_id
            self.record(invoke)
            outcome.stamp = list(state.memory.append(op_id))
        outcome.t = self.now()
        # the store's op id ties the relay's later ack (which knows only that id) to this op;
        # a write that changed nothing (removing an absent element) made no update at all
        if self.replica.last_op_id != op_before:
            outcome.local_op = int(self.replica.last_op_id)
        if self.batch:
            self.pending.append(outcome)
        else:
            self.record(outcome)
        return invoke

    def flush(self) -> None:
        """Make every write so far durable, then record their ``ok`` outcomes."""
        self.replica.flush()
        for outcome in self.pending:
            self.record(outcome)
        self.pending.clear()

    def run(self, steps: int) -> int:
        """Do up to ``steps`` writes; returns how many were made (a closed replica stops it)."""
        done = 0
        for _ in range(steps):
            try:
                self.step()
            except CrdtStateError:
                break
            done += 1
        return done


def final_read(replica: Replica[Any], process: str, t: float = 0.0) -> Event:
    """A read event with everything the checkers need from one replica."""
    with replica.doc.lock:
        stamps: dict[str, Any] = {}
        for name, kind in KINDS.items():
            field: Any = replica.field(name)
            if kind == FieldKind.LWW:
                stamp = field.stamp
                stamps[name] = None if stamp is None else list(stamp)
            elif kind == FieldKind.LWWMAP:
                key_stamps = {key: field.stamp(key) for key in KEYS}
                stamps[name] = {k: list(s) for k, s in key_stamps.items() if s is not None}
        read = {
            "values": replica.to_dict(),
            "digest": replica.digest(),
            "state_vector": replica.state_vector().hex(),
            "applied_seq": int(replica.applied_seq),
            "stamps": stamps,
        }
    return Event("read", process, read=read, t=t)
