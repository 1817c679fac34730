"""Add-wins observed-remove set: :class:`ORSet`.

Layout in the doc: one root ``Map`` per field; an add writes the key
``"<canonical JSON of the element>\\x1f<replica id>"`` with the value
``[wall_ms, counter, "<unique tag>"]`` (the add's HLC, for debugging, and its tag). An
element is present while at least one of its keys exists. ``remove`` deletes exactly the
keys it observed, so an add concurrent with a remove survives: it wrote a new Yjs item the
remove never saw (a Yjs delete names items, not keys), and add wins. ``add`` of a present
element replaces the keys it observed with its own, which keeps the set small without
changing the semantics.

One key per element and replica means a re-add overwrites the replica's own key: a single
map write, where a key per tag would need a delete and an insert. Only one process writes
as a replica at a time (the store's lock), so a replica's key never sees concurrent writes
of its own. Keys of the older layout, ``"<element>\\x1f<tag>"`` with a ``[wall_ms, counter]``
value, are read alike (the tag is then the key's suffix).

Element identity is the canonical JSON encoding, so ``1`` and ``1.0`` are one element only
if they encode alike (they do not: JSON keeps the distinction).

A remove also overwrites its writer's *remove mark* (key ``"\\x1e<replica id>"``, value: the
remove's HLC). Deleting keys alone adds nothing to the Yjs state vector, so without the mark
a replica that had not yet seen a remove would have the same state vector as one that had,
and different contents: the drift check (equal state vectors => equal digests) relies on
every write creating an item. Marks are not elements and are skipped when reading.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any, TypeVar, cast

from crdtstate import _codec
from crdtstate.crdt.base import Field, FieldKind, json_value_fits, locked
from crdtstate.errors import SchemaViolation

T = TypeVar("T")

TAG_SEP = "\x1f"

REMOVE_MARK = "\x1e"
"""Prefix of the per-replica remove-mark keys; no canonical JSON text starts with it."""


class ORSet(Field[T]):
    """A set where a concurrent add beats a remove (add-wins OR-set).

    Example::

        followers = ORSet(str)
        replica.state.followers.add("bob")
        "bob" in replica.state.followers   # True
    """

    kind = FieldKind.ORSET

    def __init__(self, value_type: type[T], *, doc: str = "") -> None:
        super().__init__(value_type, None, doc=doc)
        # element text -> {key: its tag, or None until read}
        self._index: dict[str, dict[str, str | None]] = {}

    def default_json(self) -> Any:
        return []

    def _bind_root(self) -> None:
        self._root = self.ctx.root_map(self.name)
        self._index = {}

    def _tag_of(self, key: str, known: str | None) -> str:
        """The add tag behind ``key``: kept in its value, or (older layout) its suffix."""
        if known is not None:
            return known
        slot = self._root.get(key)
        if isinstance(slot, str) and slot.startswith("["):
            try:
                parsed = _codec.loads(slot)
            except ValueError:
                parsed = None
            if isinstance(parsed, list) and len(parsed) == 3 and isinstance(parsed[2], str):
                return parsed[2]
        return key.rpartition(TAG_SEP)[2]

    def _observed_tags(self, element_text: str) -> list[str]:
        return [self._tag_of(k, t) for k, t in self._index.get(element_text, {}).items()]

    def _materialize(self) -> tuple[Any, list[SchemaViolation]]:
        index: dict[str, dict[str, str | None]] = {}
        decoded: dict[str, Any] = {}
        problems: list[SchemaViolation] = []
        for key in self._root.keys():  # noqa: SIM118 (typed as Iterable, iterated once)
            if key.startswith(REMOVE_MARK):
                continue
            element, sep, tag = key.rpartition(TAG_SEP)
            if not sep or not tag:
                problems.append(SchemaViolation(self.name, "foreign set entry", key=key))
                continue
            if element not in decoded:
                try:
                    value = _codec.loads(element)
                except ValueError:
                    problems.append(SchemaViolation(self.name, "undecodable element", key=key))
                    continue
                if not json_value_fits(self.json_type, value):
                    problems.append(SchemaViolation(self.name, "element of another type", key=key))
                    continue
                decoded[element] = value
            index.setdefault(element, {})[key] = None
        self._index = index
        return [decoded[e] for e in sorted(index)], problems

    def _convert(self, raw: Any) -> tuple[Any, list[SchemaViolation]]:
        out: list[Any] = []
        problems: list[SchemaViolation] = []
        for value in raw:
            try:
                out.append(self.from_json(value))
            except (ValueError, TypeError) as exc:
                problems.append(SchemaViolation(self.name, f"element does not fit: {exc}"))
        return out, problems

    @property
    @locked
    def value(self) -> list[T]:
        """The elements present, in a deterministic order (by canonical JSON)."""
        return cast(list[T], list(self._typed()))

    @locked
    def __contains__(self, element: object) -> bool:
        try:
            key = _codec.dumps(self.to_json(element))
        except Exception:
            return False
        self._materialized()
        return key in self._index

    @locked
    def __iter__(self) -> Iterator[T]:
        return iter(self.value)

    @locked
    def __len__(self) -> int:
        self._materialized()
        return len(self._index)

    @locked
    def tags(self, element: T) -> list[str]:
        """The add tags currently keeping ``element`` present (what a remove would observe)."""
        self._materialized()
        return self._observed_tags(_codec.dumps(self.to_json(element)))

    @locked
    def add(self, element: T) -> str:
        """Add ``element``; returns the new tag."""
        as_json = self.to_json(element)
        element_text = _codec.dumps(as_json)
        ctx = self.ctx
        values, violations = self._materialized()
        observed = self._index.get(element_text)
        tag = ctx.new_tag()
        wall_ms, counter = ctx.clock.tick()
        own_key = f"{element_text}{TAG_SEP}{ctx.replica_id}"
        others: list[str] = []
        if not observed:
            replaced: list[str] = []
        elif len(observed) == 1 and own_key in observed:  # a re-add: the usual case
            replaced = [self._tag_of(own_key, observed[own_key])]
        else:
            replaced = self._observed_tags(element_text)
            others = [k for k in observed if k != own_key]
        tag_text = _codec.quote(tag)
        slot = f"[{wall_ms},{counter},{tag_text}]"
        root = self._root

        def mutate() -> None:
            for key in others:
                del root[key]
            root[own_key] = slot  # overwrites this replica's earlier add of the element

        op = self._op(
            "add",
            f',"value":{element_text},"tag":{tag_text},"replaced":{_codec.dumps_str_list(replaced)}',
            value=as_json,
            tag=tag,
            replaced=replaced,
        )

        def after() -> None:
            if element_text not in self._index:
                bisect.insort(values, as_json, key=_codec.dumps)
            self._index[element_text] = {own_key: tag}
            self._cache = (values, violations)
            self._typed_cache = None

        self._commit(op, mutate, after)
        return tag

    @locked
    def remove(self, element: T) -> bool:
        """Remove ``element`` as observed here; returns whether it was present.

        A concurrent add elsewhere (a tag not observed here) keeps the element.
        """
        as_json = self.to_json(element)
        element_text = _codec.dumps(as_json)
        values, violations = self._materialized()
        observed = list(self._index.get(element_text, ()))
        if not observed:
            return False
        tags = self._observed_tags(element_text)
        ctx = self.ctx
        wall_ms, counter = ctx.clock.tick()
        mark_key, mark = REMOVE_MARK + ctx.replica_id, _codec.dumps([wall_ms, counter])
        root = self._root

        def mutate() -> None:
            for key in observed:
                del root[key]
            root[mark_key] = mark  # advances the state vector (see the module docstring)

        op = self._op(
            "remove",
            f',"value":{element_text},"tags":{_codec.dumps_str_list(tags)}',
            value=as_json,
            tags=tags,
        )

        def after() -> None:
            del self._index[element_text]
            remaining = [v for v in values if _codec.dumps(v) != element_text]
            self._cache = (remaining, violations)
            self._typed_cache = None

        self._commit(op, mutate, after)
        return True
