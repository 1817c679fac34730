"""Operation histories: what every replica attempted, what came of it, and final reads.

A history is a list of :class:`Event` (kept in memory and written as JSON lines), in the
Jepsen style: every operation has an ``invoke`` and then at most one outcome, and the
checkers (:mod:`chaos.checkers`) are pure functions over a history, so a saved history file
can be checked again after a checker changes.

Outcomes:
- ``ok``: the write returned (under ``sync`` durability) or a ``flush()`` confirmed it;
- ``acked``: the relay sequenced it (``seq`` is set); implies ``ok``;
- ``fail``: it certainly did not happen (validation error, closed replica);
- ``info``: unknown (the process was killed before the write was made durable).

An ``invoke`` without an outcome counts as ``info``. An ``acked`` event may name its operation
by ``op`` or, when it was written by the replica's ack callback (which only knows the store's
op id), by ``local_op``: it is matched to the ``ok`` of the same process carrying that
``local_op``, even when the ack came first or a later incarnation of the process (after a
kill -9 and restart) received it for a resent write. ``note`` events carry lifecycle facts
(a process opened its store, with its recovery time; a process was killed) for reports.
Imports nothing from the project.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

EventType = Literal["invoke", "ok", "acked", "fail", "info", "read", "note"]


@dataclass(slots=True)
class Event:
    """One line of a history.

    Attributes:
        type: invoke, an outcome, or read (a final or intermediate read of a replica).
        process: the replica (by name) that did it.
        op: unique id of the operation within the history (outcomes repeat it).
        field: the field written (``None`` for reads).
        f: the operation: ``set``, ``delete``, ``inc``, ``dec``, ``add``, ``remove``,
            ``append``.
        key: the LWW-map key, when there is one.
        value: the written value (or the increment).
        stamp: ``[wall_ms, counter, replica_id]`` of an LWW write or append.
        tag: the tag an OR-set add created.
        tags: the tags an OR-set remove (or an add replacing them) observed.
        seq: relay sequence number of an ``acked`` outcome.
        local_op: the replica store's op id of the write (on ``ok`` and ``acked``).
        read: for ``read`` events: values, stamps, digest, state vector, applied seq.
        t: seconds since the start of the run.
    """

    type: EventType
    process: str
    op: str = ""
    field: str | None = None
    f: str | None = None
    key: str | None = None
    value: Any = None
    stamp: list[Any] | None = None
    tag: str | None = None
    tags: list[str] = dataclasses.field(default_factory=list)
    seq: int | None = None
    read: dict[str, Any] | None = None
    t: float = 0.0
    local_op: int | None = None

    def to_json(self) -> str:
        """One JSON line (without the newline)."""
        return json.dumps({k: v for k, v in asdict(self).items() if v not in (None, [], "")})

    @classmethod
    def from_json(cls, line: str) -> Event:
        """Parse one line written by :meth:`to_json`."""
        data = json.loads(line)
        return cls(**data)


def write_history(path: Path, events: Iterable[Event]) -> None:
    """Write ``events`` as JSON lines."""
    with path.open("w", encoding="utf-8") as handle:
        for event in events:
            handle.write(event.to_json() + "\n")


def read_history(path: Path) -> list[Event]:
    """Read a history written by :func:`write_history` (or appended to line by line).

    A torn last line (its writer was killed mid-line) is skipped; a bad line elsewhere is
    an error.
    """
    with path.open(encoding="utf-8") as handle:
        lines = [line for line in handle if line.strip()]
    events: list[Event] = []
    for index, line in enumerate(lines):
        try:
            events.append(Event.from_json(line))
        except (ValueError, TypeError):
            if index != len(lines) - 1:
                raise
    return events


@dataclass(slots=True)
class Operation:
    """An operation folded from its invoke and outcome events."""

    invoke: Event
    outcome: EventType = "info"
    seq: int | None = None

    @property
    def definite(self) -> bool:
        """It certainly happened (returned durably, or the relay sequenced it)."""
        return self.outcome in ("ok", "acked")

    @property
    def failed(self) -> bool:
        """It certainly did not happen."""
        return self.outcome == "fail"


def fold(events: Iterable[Event]) -> tuple[list[Operation], list[Event]]:
    """Pair invokes with outcomes; returns the operations (in invoke order) and the reads."""
    ops: dict[str, Operation] = {}
    reads: list[Event] = []
    by_local: dict[tuple[str, int], str] = {}
    local_acks: list[Event] = []
    for event in events:
        if event.type == "read":
            reads.append(event)
        elif event.type == "note":
            continue
        elif event.type == "invoke":
            ops[event.op] = Operation(event)
        elif event.type == "acked" and not event.op and event.local_op is not None:
            local_acks.append(event)
        elif event.op in ops:
            _apply_outcome(ops[event.op], event)
            if event.local_op is not None:
                by_local[(event.process, event.local_op)] = event.op
    for event in local_acks:
        assert event.local_op is not None
        op_id = by_local.get((event.process, event.local_op))
        if op_id is not None:
            _apply_outcome(ops[op_id], event)
    return list(ops.values()), reads


def _apply_outcome(op: Operation, event: Event) -> None:
    # acked is the strongest outcome; a late "ok" never weakens it
    if event.type == "acked" or op.outcome != "acked":
        op.outcome = event.type
    if event.seq is not None:
        op.seq = event.seq
    if event.tag is not None:
        op.invoke.tag = event.tag
    if event.tags:
        op.invoke.tags = event.tags
    if event.stamp is not None:
        op.invoke.stamp = event.stamp


def iter_field_ops(ops: Iterable[Operation], field_name: str) -> Iterator[Operation]:
    """The operations on one field that may have happened (not ``fail``)."""
    for op in ops:
        if op.invoke.field == field_name and not op.failed:
            yield op
