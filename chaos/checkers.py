"""Checkers: pure functions from a history to verdicts (chaos runs and the simulation).

Each checker looks at the folded operations (:func:`chaos.history.fold`) and the final
reads of every replica, and returns a :class:`Verdict`. They never touch a process, a file
or the network, so a history saved by a failing run can be checked again.

Checks (ids from specs/chaos-checks.md):
- C1 convergence: every final read has the same digest, state vector and values; equal
  state vectors with different digests is reported as a bug of its own.
- C2 no lost acknowledged write, C3 no phantom or duplicate, C4 type semantics, per kind:
  counters within [sum of definite ops, that plus every indefinite op]; OR-set add-wins;
  LWW register and map keys hold the attempted write with the greatest stamp, never below
  a definite write; logs hold each definite append exactly once, nothing unattempted, every
  process's own appends in the order it made them.

Imports only :mod:`chaos.history` and :mod:`crdtstate.statevector`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from chaos.history import Event, Operation, fold
from crdtstate.statevector import state_vectors_equal

DETAILS_MAX = 20


@dataclass(slots=True)
class Verdict:
    """The result of one check."""

    check: str
    ok: bool
    details: list[str] = field(default_factory=list)
    checked: int = 0

    def fail(self, message: str) -> None:
        """Record a failure (keeps the first few messages)."""
        self.ok = False
        if len(self.details) < DETAILS_MAX:
            self.details.append(message)

    def __str__(self) -> str:
        head = f"{self.check}: {'ok' if self.ok else 'FAILED'} ({self.checked} checked)"
        return "\n  ".join([head, *self.details])


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _stamp_key(stamp: Iterable[Any] | None) -> tuple[int, int, str] | None:
    if stamp is None:
        return None
    wall, counter, replica = list(stamp)
    return int(wall), int(counter), str(replica)


def check_convergence(reads: list[Event]) -> Verdict:
    """C1: every final read agrees (digest, state vector, values)."""
    verdict = Verdict("C1 convergence", True, checked=len(reads))
    if not reads:
        verdict.fail("no final reads")
        return verdict
    first = reads[0].read or {}
    for event in reads[1:]:
        read = event.read or {}
        same_sv = state_vectors_equal(
            str(read.get("state_vector", "00")), str(first.get("state_vector", "00"))
        )
        if read.get("digest") != first.get("digest"):
            if same_sv:
                verdict.fail(
                    f"BUG: {event.process} and {reads[0].process} have equal state vectors "
                    "and different digests"
                )
            else:
                verdict.fail(f"{event.process} differs from {reads[0].process} (state vectors)")
        elif _canon(read.get("values")) != _canon(first.get("values")):
            verdict.fail(f"{event.process}: equal digests but different values")
    return verdict


def check_counter(name: str, ops: list[Operation], final: int) -> Verdict:
    """C2/C3/C4 for a G- or PN-counter: the final value lies in the possible range."""
    verdict = Verdict(f"C4 counter {name}", True, checked=len(ops))
    low = high = 0
    for op in ops:
        n = int(op.invoke.value or 0) * (-1 if op.invoke.f == "dec" else 1)
        if op.definite:
            low += n
            high += n
        elif n > 0:
            high += n
        else:
            low += n
    if not low <= final <= high:
        verdict.fail(f"{name} = {final}, outside [{low}, {high}] (definite ops and unknowns)")
    return verdict


def check_register(
    name: str, ops: list[Operation], final_value: Any, final_stamp: Any, *, key: str | None = None
) -> Verdict:
    """C2/C4 for an LWW register (or one key of an LWW map)."""
    label = name if key is None else f"{name}[{key}]"
    verdict = Verdict(f"C4 lww {label}", True, checked=len(ops))
    stamp = _stamp_key(final_stamp)
    by_stamp = {_stamp_key(op.invoke.stamp): op for op in ops if op.invoke.stamp is not None}
    definite = [_stamp_key(op.invoke.stamp) for op in ops if op.definite and op.invoke.stamp]
    best_definite = max((s for s in definite if s is not None), default=None)
    if stamp is None:
        if best_definite is not None:
            verdict.fail(f"{label}: no write visible, but {best_definite} was acknowledged")
        return verdict
    if best_definite is not None and stamp < best_definite:
        verdict.fail(f"{label}: holds {stamp}, below the acknowledged write {best_definite}")
    winner = by_stamp.get(stamp)
    if winner is None:  # a crash may have cut the record of the stamp: match the value
        unstamped = [op for op in ops if op.invoke.stamp is None]
        winner = next(
            (op for op in unstamped if _canon(op.invoke.value) == _canon(final_value)), None
        )
    if winner is None:
        verdict.fail(f"{label}: holds {stamp}, which no recorded write produced")
    else:
        deleted = winner.invoke.f == "delete"
        expected = None if deleted else winner.invoke.value
        if _canon(expected) != _canon(final_value):
            verdict.fail(f"{label}: value {final_value!r} but the write {stamp} set {expected!r}")
    return verdict


def check_orset(name: str, ops: list[Operation], present: list[Any]) -> Verdict:
    """C2/C3/C4 for an add-wins OR-set."""
    verdict = Verdict(f"C4 orset {name}", True, checked=len(ops))
    removed_any: set[str] = set()
    removed_definite: set[str] = set()
    adds: dict[str, list[Operation]] = defaultdict(list)
    for op in ops:
        if op.invoke.f == "add":
            adds[_canon(op.invoke.value)].append(op)
        if op.invoke.tags:  # a remove, or an add replacing the tags it observed
            removed_any.update(op.invoke.tags)
            if op.definite:
                removed_definite.update(op.invoke.tags)
    present_set = {_canon(v) for v in present}
    for element in present_set - set(adds):
        verdict.fail(f"{name}: {element} present but never added (phantom)")
    for element, element_adds in adds.items():
        must = any(op.definite and op.invoke.tag not in removed_any for op in element_adds)
        may = any(op.invoke.tag not in removed_definite for op in element_adds)
        if must and element not in present_set:
            verdict.fail(f"{name}: {element} lost: an acknowledged add was never removed")
        if element in present_set and not may:
            verdict.fail(f"{name}: {element} present though every add was removed (remove lost)")
    return verdict


def check_log(name: str, ops: list[Operation], entries: list[Any]) -> Verdict:
    """C2/C3/C4 for an append-only log whose appended values are unique."""
    verdict = Verdict(f"C4 log {name}", True, checked=len(ops))
    position: dict[str, int] = {}
    for index, value in enumerate(entries):
        key = _canon(value)
        if key in position:
            verdict.fail(f"{name}: {key} appears twice (at {position[key]} and {index})")
        position.setdefault(key, index)
    attempted = {_canon(op.invoke.value): op for op in ops if op.invoke.f == "append"}
    for key in position:
        if key not in attempted:
            verdict.fail(f"{name}: {key} in the log but never appended (phantom)")
    by_process: dict[str, list[int]] = defaultdict(list)
    for key, op in attempted.items():
        if op.definite and key not in position:
            verdict.fail(f"{name}: acknowledged append {key} by {op.invoke.process} is missing")
        if key in position:
            by_process[op.invoke.process].append(position[key])
    for process, positions in by_process.items():
        if positions != sorted(positions):
            verdict.fail(f"{name}: {process}'s own appends are out of their local order")
    return verdict


def check_history(events: list[Event], kinds: dict[str, str]) -> list[Verdict]:
    """Run every check over a history whose final reads come last, one per replica.

    Args:
        events: the history; the final ``read`` of each process is the last read of it
            (reads marked ``phase`` other than ``final`` are polls during the run: skipped).
        kinds: field name -> CRDT kind (``lww``, ``gcounter``, ``pncounter``, ``orset``,
            ``lwwmap``, ``log``).
    """
    ops, reads = fold(events)
    finals: dict[str, Event] = {}
    for read in reads:
        if (read.read or {}).get("phase", "final") == "final":  # not a poll during the run
            finals[read.process] = read
    final_reads = list(finals.values())
    verdicts = [check_convergence(final_reads)]
    if not final_reads:
        return verdicts
    # the reference is a replica's read (the relay's document carries no stamps)
    with_stamps = [r for r in final_reads if "stamps" in (r.read or {})]
    reference = (with_stamps or final_reads)[0].read or {}
    values: dict[str, Any] = reference.get("values", {})
    stamps: dict[str, Any] = reference.get("stamps", {})
    by_field: dict[str, list[Operation]] = defaultdict(list)
    for op in ops:
        if op.invoke.field is not None and not op.failed:
            by_field[op.invoke.field].append(op)
    for name, kind in sorted(kinds.items()):
        field_ops = by_field.get(name, [])
        value = values.get(name)
        if kind in ("gcounter", "pncounter"):
            verdicts.append(check_counter(name, field_ops, int(value or 0)))
        elif kind == "lww":
            verdicts.append(check_register(name, field_ops, value, stamps.get(name)))
        elif kind == "lwwmap":
            keyed: dict[str, list[Operation]] = defaultdict(list)
            for op in field_ops:
                keyed[str(op.invoke.key)].append(op)
            key_stamps = stamps.get(name) or {}
            for key, key_ops in sorted(keyed.items()):
                verdicts.append(
                    check_register(
                        name, key_ops, (value or {}).get(key), key_stamps.get(key), key=key
                    )
                )
        elif kind == "orset":
            verdicts.append(check_orset(name, field_ops, list(value or [])))
        elif kind == "log":
            verdicts.append(check_log(name, field_ops, list(value or [])))
    return verdicts
