"""Checkers specific to real-process runs: acknowledgements, monotonic state, availability,
recovery and hygiene. Pure functions over histories (and log text), like
:mod:`chaos.checkers`, so a saved run can be checked again.

- C5 ``check_acks``: an update keeps one sequence number for life (a resend after a kill or
  reconnect gets its original number back), a sequence number belongs to one update (the
  relay never reuses a number it acknowledged, even across its own kill -9), and one
  replica's updates are numbered in the order it made them.
- C6 ``check_monotonic``: within one incarnation of a replica, the state vector never goes
  backwards, and neither does the applied sequence while the relay's log stays the same
  (a relay that lost its store numbers a new log: the replica rightly starts over).
- C7 ``check_availability``: local writes return quickly whatever the network does (a
  process frozen by SIGSTOP is excused for the time it was frozen).
- C9 ``check_recovery``: every restart opened its store within the bound.
- C10 ``check_detection``: the relay's view tells the truth: a replica whose spoke is cut is
  reported disconnected, and after the heal every replica is reported converged with the
  digest it really holds.
- C12 ``check_hygiene``: no unhandled exception in any process log.

Imports only :mod:`chaos.history`, :mod:`chaos.checkers` and the state-vector decoder.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from chaos.checkers import Verdict
from chaos.history import Event, fold
from crdtstate.statevector import decode_state_vector, dominates

RECOVERY_BOUND_S = 30.0
"""background/001: restart-to-ready above 30 s is an alert."""

WRITE_LATENCY_BOUND_S = 2.0
"""A local ``sync`` write is an fsync, never a network round trip."""

_UNHANDLED = re.compile(
    r"Traceback \(most recent call last\)|Task exception was never retrieved|"
    r"Exception in callback|Unhandled exception|unhandled exception"
)


@dataclass(frozen=True, slots=True)
class Window:
    """A span of run time during which one process was frozen (SIGSTOP)."""

    process: str
    start: float
    end: float


def check_acks(events: Iterable[Event]) -> Verdict:
    """C5: one sequence number per update, one update per sequence number, in order.

    Per relay incarnation (an ``acked`` event's ``value``): a relay that lost its store
    (F17) numbers a new log from 1, and updates it had not acknowledged get new numbers.
    """
    verdict = Verdict("C5 acks", True)
    seqs_of: dict[tuple[str, str, str], set[int]] = defaultdict(set)
    owners: dict[tuple[str, int], set[tuple[str, str, str]]] = defaultdict(set)
    for event in events:
        if event.type != "acked" or event.seq is None:
            continue
        local = str(event.local_op) if event.local_op is not None else f"op:{event.op}"
        incarnation = str(event.value or "")
        key = (incarnation, event.process, local)
        seqs_of[key].add(event.seq)
        owners[(incarnation, event.seq)].add(key)
    verdict.checked = len(seqs_of)
    for (_inc, process, local), seqs in sorted(seqs_of.items()):
        if len(seqs) > 1:
            verdict.fail(f"{process} update {local} acknowledged with several seqs {sorted(seqs)}")
    for (_inc, seq), keys in sorted(owners.items()):
        if len(keys) > 1:
            updates = sorted((process, local) for _i, process, local in keys)
            verdict.fail(f"seq {seq} acknowledged for several updates {updates}")
    by_process: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for (incarnation, process, local), seqs in seqs_of.items():
        if local.isdigit() and len(seqs) == 1:
            by_process[(incarnation, process)].append((int(local), next(iter(seqs))))
    for (_inc, process), pairs in sorted(by_process.items()):
        pairs.sort()
        for (op_a, seq_a), (op_b, seq_b) in itertools.pairwise(pairs):
            if seq_b <= seq_a:
                verdict.fail(
                    f"{process}: update {op_b} got seq {seq_b}, not after its earlier "
                    f"update {op_a} (seq {seq_a})"
                )
                break
    return verdict


def check_monotonic(events: Iterable[Event], relay_losses: Iterable[float] = ()) -> Verdict:
    """C6: per process incarnation, applied seq (per relay log) and state vector never go
    back.

    Args:
        events: the history, with status polls (``read`` events, ``phase: poll``).
        relay_losses: times the relay lost its store (F17, from the fault schedule): each
            lets every replica start over once, then or later (the new log is numbered from
            1; a replica cut off at the time starts over when it reconnects).
    """
    verdict = Verdict("C6 monotonic", True)
    losses = sorted(relay_losses)
    forgiven: dict[str, int] = {}
    last: dict[tuple[str, int], tuple[int, dict[int, int], float, str]] = {}
    for event in sorted((e for e in events if e.type == "read" and e.read), key=lambda e: e.t):
        read = event.read or {}
        if "applied_seq" not in read or "state_vector" not in read:
            continue
        key = (event.process, int(read.get("incarnation", 0)))
        try:
            vector = decode_state_vector(bytes.fromhex(str(read["state_vector"])))
        except ValueError:
            verdict.fail(f"{event.process}: unreadable state vector at t={event.t}")
            continue
        applied = int(read["applied_seq"])
        relay_log = str(read.get("relay_incarnation", ""))
        verdict.checked += 1
        previous = last.get(key)
        if previous is not None:
            prev_applied, prev_vector, prev_t, prev_log = previous
            granted = sum(1 for t in losses if t <= event.t)
            if applied < prev_applied and forgiven.get(key[0], 0) < granted:
                # each loss of the relay's store grants every replica one start-over
                forgiven[key[0]] = forgiven.get(key[0], 0) + 1
            elif applied < prev_applied and relay_log == prev_log:
                verdict.fail(
                    f"{key[0]}#{key[1]}: applied seq went back {prev_applied} -> {applied} "
                    f"(t={prev_t:.2f} -> {event.t:.2f})"
                )
            if not dominates(vector, prev_vector):
                verdict.fail(f"{key[0]}#{key[1]}: state vector went back at t={event.t:.2f}")
        last[key] = (applied, vector, event.t, relay_log)
    return verdict


def write_latencies(events: Iterable[Event]) -> dict[str, tuple[str, float, float]]:
    """op id -> (process, invoke time, latency to ``ok``) for every write that returned."""
    invoked: dict[str, tuple[str, float]] = {}
    out: dict[str, tuple[str, float, float]] = {}
    for event in events:
        if event.type == "invoke":
            invoked[event.op] = (event.process, event.t)
        elif event.type == "ok" and event.op in invoked:
            process, start = invoked[event.op]
            out[event.op] = (process, start, max(0.0, event.t - start))
    return out


def check_availability(
    events: Iterable[Event],
    frozen: Iterable[Window] = (),
    bound_s: float = WRITE_LATENCY_BOUND_S,
) -> Verdict:
    """C7: every local write returned within ``bound_s`` (frozen spans excused)."""
    verdict = Verdict("C7 availability", True)
    windows = list(frozen)
    worst = 0.0
    for op, (process, start, latency) in sorted(write_latencies(events).items()):
        verdict.checked += 1
        end = start + latency
        if any(w.process == process and w.start < end and start < w.end for w in windows):
            continue
        worst = max(worst, latency)
        if latency > bound_s:
            verdict.fail(f"{process} write {op} took {latency:.2f} s (bound {bound_s} s)")
    verdict.details.insert(0, f"slowest local write {worst * 1000:.0f} ms")
    return verdict


def check_recovery(events: Iterable[Event], bound_s: float = RECOVERY_BOUND_S) -> Verdict:
    """C9: every (re)open of a replica store took at most ``bound_s``."""
    verdict = Verdict("C9 recovery", True)
    worst = 0.0
    for event in events:
        value = event.value if isinstance(event.value, dict) else {}
        if event.type != "note" or value.get("event") != "open":
            continue
        verdict.checked += 1
        seconds = float(value.get("recovery_s", 0.0))
        worst = max(worst, seconds)
        if seconds > bound_s:
            verdict.fail(f"{event.process} took {seconds:.1f} s to open its store")
    verdict.details.insert(0, f"slowest store open {worst * 1000:.1f} ms")
    return verdict


def check_detection(events: Iterable[Event]) -> Verdict:
    """C10: relay views recorded during cuts and after the heal match the truth."""
    verdict = Verdict("C10 detection", True)
    replica_of: dict[str, str] = {}
    views: list[dict[str, Any]] = []
    final_digest: str | None = None
    for event in events:
        value = event.value if isinstance(event.value, dict) else {}
        if event.type == "note" and value.get("event") == "open":
            replica_of[event.process] = str(value.get("replica_id"))
        elif event.type == "note" and value.get("event") == "relay-view":
            views.append(value)
        elif event.type == "read" and (event.read or {}).get("phase") == "final":
            final_digest = final_digest or (event.read or {}).get("digest")
    if not views:
        verdict.details.append("the relay reported no view: not checked")
        return verdict
    for view in views:
        entries = {str(e.get("replica_id")): e for e in view["view"].get("replicas", [])}
        if view.get("label") == "cut":
            for process in view.get("cut", []):
                entry = entries.get(replica_of.get(process, ""))
                verdict.checked += 1
                if entry is not None and entry.get("connected"):
                    verdict.fail(f"{process} reported connected while its spoke was cut")
        elif view.get("label") == "final":
            for process, replica_id in sorted(replica_of.items()):
                entry = entries.get(replica_id)
                verdict.checked += 1
                if entry is None:
                    verdict.fail(f"{process} missing from the relay's final view")
                elif not entry.get("converged") or entry.get("digest") != final_digest:
                    verdict.fail(
                        f"{process} reported {entry.get('status')} with digest "
                        f"{str(entry.get('digest'))[:12]}, final digest {str(final_digest)[:12]}"
                    )
    return verdict


def check_hygiene(logs: dict[str, str]) -> Verdict:
    """C12: no unhandled exception or traceback in any process log."""
    verdict = Verdict("C12 hygiene", True, checked=len(logs))
    for name, text in sorted(logs.items()):
        for number, line in enumerate(text.splitlines(), 1):
            if _UNHANDLED.search(line):
                verdict.fail(f"{name}:{number}: {line.strip()[:160]}")
                break
    return verdict


@dataclass(slots=True)
class WriteStats:
    """How many writes a history holds, by outcome."""

    attempted: int = 0
    ok: int = 0
    acked: int = 0
    unknown: int = 0
    failed: int = 0


def write_stats(events: Iterable[Event]) -> WriteStats:
    """Count the writes of a history by outcome (``acked`` also counts in ``ok``)."""
    ops, _reads = fold(events)
    stats = WriteStats()
    for op in ops:
        stats.attempted += 1
        if op.outcome == "acked":
            stats.acked += 1
        if op.definite:
            stats.ok += 1
        elif op.failed:
            stats.failed += 1
        else:
            stats.unknown += 1
    return stats
