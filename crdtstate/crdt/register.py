"""Last-writer-wins registers: :class:`LWWRegister` and :class:`LWWMap`.

Layout in the doc: one root ``Map`` per field. A register keeps one *writer slot* per
replica (key = replica id, value = canonical JSON ``[wall_ms, counter, value]``); each
replica only ever overwrites its own slot, so Yjs never has to resolve a conflict between
replicas. A read takes the slot with the greatest :class:`~crdtstate.hlc.Stamp` (HLC, then
replica id). An LWW map is the same per key: key ``"<key>\\x1f<replica id>"``; a delete
is a slot ``[wall_ms, counter]`` without a value.

Merge: Yjs map union of slots; tie-break: replica id; clock assumption: none beyond the
HLC, which makes a write made after observing a value order after it (the writer folds the
current winner into its clock before ticking).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast

from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from crdtstate import _codec
from crdtstate.crdt.base import (
    DELETED,
    Field,
    FieldKind,
    is_utf8_text,
    json_value_fits,
    locked,
    parse_stamped,
    short_repr,
)
from crdtstate.errors import SchemaViolation, ValidationError
from crdtstate.hlc import Stamp

T = TypeVar("T")
K = TypeVar("K", str, int)

SLOT_SEP = "\x1f"
MAX_KEY_CHARS = 1024


class LWWRegister(Field[T]):
    """One value; the write with the greatest (HLC, replica id) wins.

    Example::

        class Agent(Schema):
            killswitch = LWWRegister(bool, default=False)

        replica.state.killswitch.set(True)
        replica.state.killswitch.value      # True
        replica.state.killswitch.stamp      # Stamp(wall_ms=..., counter=0, replica_id=...)
    """

    kind = FieldKind.LWW

    def __init__(self, value_type: type[T], default: T, *, doc: str = "") -> None:
        super().__init__(value_type, default, doc=doc)
        self._winner: Stamp | None = None

    def _check_default(self) -> None:
        self.to_json(self.default)

    def default_json(self) -> Any:
        return self._adapter.dump_python(self.default, mode="json")

    def _bind_root(self) -> None:
        self._root = self.ctx.root_map(self.name)

    def _materialize(self) -> tuple[Any, list[SchemaViolation]]:
        best: tuple[Stamp, Any] | None = None
        problems: list[SchemaViolation] = []
        for writer, slot in self._root.items():
            parsed = parse_stamped(slot)
            if (
                parsed is None
                or parsed[2] is DELETED
                or not json_value_fits(self.json_type, parsed[2])
            ):
                problems.append(SchemaViolation(self.name, "foreign writer slot", key=writer))
                continue
            stamp = Stamp(parsed[0], parsed[1], writer)
            if best is None or stamp > best[0]:
                best = (stamp, parsed[2])
        if best is None:
            self._winner = None
            return self.default_json(), problems
        self._winner = best[0]
        return best[1], problems

    @property
    @locked
    def value(self) -> T:
        """The winning value, or the default when nobody wrote (or only foreign content)."""
        return cast(T, self._typed())

    @property
    @locked
    def stamp(self) -> Stamp | None:
        """HLC and writer of the winning write; ``None`` before the first write."""
        self._materialized()
        return self._winner

    @locked
    def set(self, value: T) -> Stamp:
        """Write ``value``; returns the stamp it was written with.

        Raises:
            ValidationError: ``value`` does not fit the field's type.
        """
        as_json = self.to_json(value)
        ctx = self.ctx
        _, violations = self._materialized()
        if self._winner is not None:
            ctx.clock.observe(self._winner.wall_ms, self._winner.counter)
        wall_ms, counter = ctx.clock.tick()
        value_text = self._encode(as_json)
        encoded = f"[{wall_ms},{counter},{value_text}]"  # what dumps() makes of the slot
        root, writer = self._root, ctx.replica_id
        if violations:  # a foreign own slot is overwritten
            violations = [v for v in violations if v.key != writer]

        def mutate() -> None:
            root[writer] = encoded

        stamp = Stamp(wall_ms, counter, writer)

        def after() -> None:
            self._winner = stamp
            self._cache = (as_json, violations)
            self._typed_cache = None

        self._commit(self._op("set", f',"value":{value_text}', value=as_json), mutate, after)
        return stamp


class LWWMap(Field[T], Generic[K, T]):
    """A map of last-writer-wins registers, one per key (config, profiles).

    Keys are ``str`` (or ``int``, stored as their decimal text). Deleting a key is itself a
    timestamped write, so a delete and a concurrent set resolve like two sets.
    """

    kind = FieldKind.LWWMAP

    def __init__(
        self,
        value_type: type[T],
        *,
        key_type: type[K] = str,  # type: ignore[assignment]
        doc: str = "",
    ) -> None:
        super().__init__(value_type, None, doc=doc)
        self.key_type: type[K] = key_type
        self._key_adapter: TypeAdapter[Any] = TypeAdapter(key_type)
        self._winners: dict[str, Stamp] = {}

    def descriptor(self) -> dict[str, Any]:
        out = super().descriptor()
        out["key_type"] = "int" if self.key_type is int else "str"
        return out

    def default_json(self) -> Any:
        return {}

    def _bind_root(self) -> None:
        self._root = self.ctx.root_map(self.name)
        self._winners = {}

    def _key_text(self, key: K) -> str:
        if type(key) is str and self.key_type is str:
            text = key  # the hot path: no validator needed for a plain str
        else:
            try:
                checked = self._key_adapter.validate_python(key, strict=True)
            except PydanticValidationError as exc:
                raise ValidationError(
                    self.name, f"bad key {short_repr(key)}: expected {self.key_type.__name__}"
                ) from exc
            try:
                text = str(checked)
            except ValueError as exc:  # an int beyond Python's digit limit
                raise ValidationError(self.name, f"bad key: {exc}") from exc
        if SLOT_SEP in text or len(text) > MAX_KEY_CHARS or not is_utf8_text(text):
            raise ValidationError(
                self.name,
                f"bad key {text[:40]!r}: valid Unicode, no \\x1f, "
                f"at most {MAX_KEY_CHARS} characters",
            )
        return text

    def _materialize(self) -> tuple[Any, list[SchemaViolation]]:
        best: dict[str, tuple[Stamp, Any]] = {}
        problems: list[SchemaViolation] = []
        for slot_key, slot in self._root.items():
            key, sep, writer = slot_key.rpartition(SLOT_SEP)
            parsed = parse_stamped(slot)
            if (
                not sep
                or not writer
                or parsed is None
                or (parsed[2] is not DELETED and not json_value_fits(self.json_type, parsed[2]))
            ):
                problems.append(SchemaViolation(self.name, "foreign map slot", key=slot_key))
                continue
            stamp = Stamp(parsed[0], parsed[1], writer)
            current = best.get(key)
            if current is None or stamp > current[0]:
                best[key] = (stamp, parsed[2])
        self._winners = {key: stamp for key, (stamp, _) in best.items()}
        values = {key: v for key, (_, v) in best.items() if v is not DELETED}
        return dict(sorted(values.items())), problems

    def _convert(self, raw: Any) -> tuple[Any, list[SchemaViolation]]:
        out: dict[Any, Any] = {}
        problems: list[SchemaViolation] = []
        for key_text, value in raw.items():
            try:
                key = int(key_text) if self.key_type is int else key_text
                out[key] = self.from_json(value)
            except (PydanticValidationError, ValueError, TypeError) as exc:
                problems.append(
                    SchemaViolation(self.name, f"stored value does not fit: {exc}", key=key_text)
                )
        return out, problems

    @property
    @locked
    def value(self) -> dict[K, T]:
        """Every live key and its winning value."""
        return cast(dict[K, T], dict(self._typed()))

    @locked
    def get(self, key: K, default: T | None = None) -> T | None:
        """The winning value of ``key``, or ``default`` if absent or deleted."""
        return cast("T | None", self._typed().get(key, default))

    @locked
    def __getitem__(self, key: K) -> T:
        return cast(T, self._typed()[key])

    @locked
    def __contains__(self, key: object) -> bool:
        return key in self._typed()

    @locked
    def __len__(self) -> int:
        return len(self._typed())

    @locked
    def keys(self) -> list[K]:
        """Live keys, sorted."""
        return sorted(self._typed())

    @locked
    def stamp(self, key: K) -> Stamp | None:
        """HLC and writer of the winning write of ``key`` (also for a deleted key)."""
        self._materialized()
        return self._winners.get(self._key_text(key))

    @locked
    def set(self, key: K, value: T) -> Stamp:
        """Write ``value`` under ``key``."""
        return self._write(key, self.to_json(value), present=True)

    @locked
    def delete(self, key: K) -> Stamp:
        """Delete ``key`` (a timestamped write: a concurrent later set still wins)."""
        return self._write(key, None, present=False)

    def _write(self, key: K, as_json: Any, *, present: bool) -> Stamp:
        key_text = self._key_text(key)
        ctx = self.ctx
        values, violations = self._materialized()
        winner = self._winners.get(key_text)
        if winner is not None:
            ctx.clock.observe(winner.wall_ms, winner.counter)
        wall_ms, counter = ctx.clock.tick()
        # The slot as dumps() would write it, with the value encoded once for slot and op.
        if present:
            value_text = self._encode(as_json)
            encoded = f"[{wall_ms},{counter},{value_text}]"
        else:
            encoded = f"[{wall_ms},{counter}]"
        root, slot_key = self._root, f"{key_text}{SLOT_SEP}{ctx.replica_id}"
        if violations:  # a foreign slot of this writer is overwritten
            violations = [v for v in violations if v.key != slot_key]

        def mutate() -> None:
            root[slot_key] = encoded

        key_part = f',"key":{_codec.quote(key_text)}'
        if present:
            op = self._op("set", f'{key_part},"value":{value_text}', key=key_text, value=as_json)
        else:
            op = self._op("delete", key_part, key=key_text)
        stamp = Stamp(wall_ms, counter, ctx.replica_id)

        def after() -> None:
            self._winners[key_text] = stamp
            if present:
                values[key_text] = as_json
            else:
                values.pop(key_text, None)
            self._cache = (values, violations)
            self._typed_cache = None

        self._commit(op, mutate, after)
        return stamp
