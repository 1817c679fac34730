"""Append-only log: :class:`Log` (an agent's memory).

Layout in the doc: one root ``Array`` per field holding *chunks*, nested arrays of up to
:data:`CHUNK_ENTRIES` entries; each entry is canonical JSON
``[wall_ms, counter, writer replica id, value]``. The log is the chunks' entries in order
(an entry standing directly in the root array, as a plain Yjs client may append it, counts
as a chunk of one). Appends go to the end of the last chunk as the writer sees it, or into
a new chunk after it, so an entry is ordered after everything its writer had observed
(causal order); concurrent appends are ordered by Yjs's deterministic rule (client id), so
every replica reads the same order after convergence. Entries are never modified or
deleted.

Why chunks: Yrs finds an array index by walking the array's blocks, and appends
interleaved with other writes never merge into one block, so appending to one flat array
of n entries costs time linear in n (about 1 ms per append at 50,000 entries). With chunks
an append walks one chunk (and, after a remote change, the root's chunk list), and the
doc still loads as fast as a flat array (a Yjs map keyed per entry loads several times
slower).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from pycrdt import Array

from crdtstate import _codec
from crdtstate.crdt.base import Field, FieldKind, json_value_fits, locked
from crdtstate.errors import SchemaViolation
from crdtstate.hlc import Stamp

T = TypeVar("T")

CHUNK_ENTRIES = 256
"""Entries per chunk before an append opens a new one: bounds the blocks an append walks."""


@dataclass(frozen=True, slots=True)
class LogEntry(Generic[T]):
    """One appended value with the stamp of its append."""

    value: T
    stamp: Stamp


class Log(Field[T]):
    """Append-only sequence with one identical order on every replica after convergence."""

    kind = FieldKind.LOG
    root_kind = "array"

    def __init__(self, value_type: type[T], *, doc: str = "") -> None:
        super().__init__(value_type, None, doc=doc)
        self._stamps: list[Stamp] = []
        self._typed_stamps: list[Stamp] = []
        self._chunk: Array[Any] | None = None
        """The last chunk, while no remote change may have put another after it."""

    def default_json(self) -> Any:
        return []

    def _bind_root(self) -> None:
        self._root = self.ctx.root_array(self.name)
        self._stamps = []
        self._typed_stamps = []
        self._chunk = None

    def invalidate(self) -> None:
        super().invalidate()
        self._chunk = None

    def _materialize(self) -> tuple[Any, list[SchemaViolation]]:
        values: list[Any] = []
        stamps: list[Stamp] = []
        problems: list[SchemaViolation] = []
        for position, item in enumerate(_entries(self._root)):
            entry = _parse_entry(item)
            if entry is None or not json_value_fits(self.json_type, entry[3]):
                problems.append(SchemaViolation(self.name, f"foreign log entry at {position}"))
                continue
            values.append(entry[3])
            stamps.append(Stamp(entry[0], entry[1], entry[2]))
        self._stamps = stamps
        return values, problems

    def _convert(self, raw: Any) -> tuple[Any, list[SchemaViolation]]:
        out: list[Any] = []
        stamps: list[Stamp] = []
        problems: list[SchemaViolation] = []
        # raw and self._stamps are parallel (both built by _materialize, both extended by
        # append); keep the stamps of the entries that convert, so entries() pairs them right.
        for position, (value, stamp) in enumerate(zip(raw, self._stamps, strict=True)):
            try:
                out.append(self.from_json(value))
            except (ValueError, TypeError) as exc:
                problems.append(SchemaViolation(self.name, f"entry {position} does not fit: {exc}"))
                continue
            stamps.append(stamp)
        self._typed_stamps = stamps
        return out, problems

    @property
    @locked
    def value(self) -> list[T]:
        """Every entry's value, in log order."""
        return cast(list[T], list(self._typed()))

    @locked
    def entries(self) -> list[LogEntry[T]]:
        """Every entry with the stamp of its append, in log order."""
        values = self.value
        return [LogEntry(v, s) for v, s in zip(values, self._typed_stamps, strict=True)]

    @locked
    def __iter__(self) -> Iterator[T]:
        return iter(self.value)

    @locked
    def __len__(self) -> int:
        """Number of entries in :attr:`value` (foreign entries are not counted)."""
        return len(self._typed())

    @locked
    def append(self, value: T) -> Stamp:
        """Append ``value`` at the end of the log as this replica sees it."""
        as_json = self.to_json(value)
        ctx = self.ctx
        values, _violations = self._materialized()
        wall_ms, counter = ctx.clock.tick()
        encoded = _codec.dumps([wall_ms, counter, ctx.replica_id, as_json])
        chunk = self._chunk if self._chunk is not None else self._last_open_chunk()
        root = self._root

        def mutate() -> None:
            if chunk is None or len(chunk) >= CHUNK_ENTRIES:
                opened: Array[Any] = Array([encoded])
                root.append(opened)
                self._chunk = opened  # integrated by the append: the same object
            else:
                chunk.append(encoded)
                self._chunk = chunk

        stamp = Stamp(wall_ms, counter, ctx.replica_id)

        def after() -> None:
            values.append(as_json)  # in place: appends stay O(1) on long logs
            self._stamps.append(stamp)
            self._typed_cache = None

        self._commit({"field": self.name, "op": "append", "value": as_json}, mutate, after)
        return stamp

    def _last_open_chunk(self) -> Array[Any] | None:
        """The root's last item when it is a chunk (a new chunk is needed otherwise)."""
        root = self._root
        count = len(root)
        if count == 0:
            return None
        last = root[count - 1]
        return last if isinstance(last, Array) else None


def _entries(root: Array[Any]) -> Iterator[Any]:
    """Every entry in log order: the chunks' items, and items standing in the root."""
    for item in root:
        if isinstance(item, Array):
            yield from item
        else:
            yield item


def _parse_entry(item: Any) -> tuple[int, int, str, Any] | None:
    if not isinstance(item, str):
        return None
    try:
        decoded = _codec.loads(item)
    except ValueError:
        return None
    if (
        isinstance(decoded, list)
        and len(decoded) == 4
        and isinstance(decoded[0], int)
        and isinstance(decoded[1], int)
        and isinstance(decoded[2], str)
        and not isinstance(decoded[0], bool)
        and not isinstance(decoded[1], bool)
    ):
        return decoded[0], decoded[1], decoded[2], decoded[3]
    return None
