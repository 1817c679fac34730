"""The namespace document: one pycrdt ``Doc`` plus the schema's bound fields.

Owns the single write path (every field write runs in one transaction whose Yjs update is
captured and handed to a recorder, which the replica points at its store), remote update
application with validation, change notification, the schema descriptor kept inside the
doc, and the materialized view (``to_dict``/``digest``) used for drift detection.

Must not import the store, the sync client or any I/O: the simulation and the relay's
dashboard use it in-process.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pycrdt import Array, Doc, Map, get_update, merge_updates

from crdtstate import _codec
from crdtstate.crdt.base import Field
from crdtstate.errors import InvalidUpdate, SchemaError, SchemaViolation, UnknownFieldError
from crdtstate.hlc import HybridClock
from crdtstate.schema import Schema, bind_schema, field_from_descriptor

SCHEMA_ROOT = "_schema"
"""Root map holding one descriptor per field (canonical JSON), plus ``@schema`` metadata."""

SCHEMA_META_KEY = "@schema"

MAX_UPDATE_BYTES = 64 << 20
"""Largest update accepted by :meth:`NamespaceDoc.apply_update` (64 MiB)."""

RESTORE_GROUP_BYTES = 8 << 20
"""Largest run of stored updates merged into one at recovery (well under MAX_UPDATE_BYTES)."""

MAX_UNSETTLED_UPDATES = 1024
"""Remote updates kept for re-application while their items are not all integrated."""

MAX_UNSETTLED_BYTES = 64 << 20
"""... and their total size."""


Recorder = Callable[[bytes, dict[str, Any]], None]


def _unobserve(
    doc: Doc[Any], doc_subscription: Any, root: Map[Any], root_subscription: Any
) -> None:
    root.unobserve(root_subscription)
    doc.unobserve(doc_subscription)


def _weak_callback(method: Callable[[Any], None]) -> Callable[[Any], None]:
    """``method`` (a bound method) called through a weak reference to its object."""
    ref = weakref.WeakMethod(method)

    def call(event: Any) -> None:
        target = ref()
        if target is not None:
            target(event)

    return call


def _local_update_catcher(owner: NamespaceDoc) -> Callable[[Any], None]:
    """The doc observer that keeps the update of each local transaction for the recorder.

    It runs on every write, so it reads the owner through a plain weak reference rather
    than calling a weakly held bound method (which costs a Python-level call more).
    """
    ref = weakref.ref(owner)

    def call(event: Any) -> None:
        target = ref()
        if target is not None and not target._remote:
            target._captured.append(event.update)

    return call


@dataclass(frozen=True, slots=True)
class Change:
    """A field's value changed: delivered to subscribers with old and new typed values."""

    field: str
    old: Any
    new: Any
    local: bool


ChangeCallback = Callable[[Change], None]


class NamespaceDoc:
    """A namespace's Yjs document seen through a schema.

    Args:
        replica_id: writer id used for slots and tags.
        schema: declared fields, or ``None`` to read whatever the doc declares (CLI).
        client_id: Yjs client id; must be fresh per process start (see DESIGN.md).
        clock: the replica's hybrid logical clock.
    """

    def __init__(
        self,
        replica_id: str,
        schema: type[Schema] | None,
        *,
        client_id: int,
        clock: HybridClock,
    ) -> None:
        self.replica_id = replica_id
        self.clock = clock
        self.client_id = client_id
        self.recorder: Recorder | None = None
        self.write_guard: Callable[[], None] | None = None
        self.lock = threading.RLock()
        self._doc: Doc[Any] = Doc(client_id=client_id)
        self._captured: list[bytes] = []
        self._unsettled: list[bytes] = []
        # Nothing from elsewhere applied yet: the doc holds at most local writes, made by
        # this doc's own (fresh) client id, which nothing remote can be waiting for.
        self._fresh = True
        self._dropped_unsettled = False
        self._remote = False
        self._tags = 0
        self._tag_prefix = f"{replica_id}.{client_id:x}."
        # pycrdt keeps observers on the Rust side, out of the garbage collector's sight: a
        # bound method would keep this object (and its replica, store and everything they
        # reach) alive for good, and pycrdt's own wrappers keep the Doc alive until the
        # subscriptions are dropped. Hence weak callbacks, unobserved when this object dies.
        doc_subscription = self._doc.observe(_local_update_catcher(self))
        self._schema_root: Map[Any] = self._doc.get(SCHEMA_ROOT, type=Map)
        self._schema_dirty = True
        schema_subscription = self._schema_root.observe(_weak_callback(self._on_schema_change))
        weakref.finalize(
            self, _unobserve, self._doc, doc_subscription, self._schema_root, schema_subscription
        ).atexit = False
        self._subscribers: dict[str, list[ChangeCallback]] = {}
        self._declared: dict[str, dict[str, Any]] = {}
        self.schema = schema
        if schema is not None:
            self.state, views = bind_schema(schema, self)
            self.fields: dict[str, Field[Any]] = dict(views)
        else:
            self.state = Schema._bound({})
            self.fields = {}

    # -- FieldContext ----------------------------------------------------------------------

    def root_map(self, name: str) -> Map[Any]:
        """The root map of a field."""
        root: Map[Any] = self._doc.get(name, type=Map)
        return root

    def root_array(self, name: str) -> Array[Any]:
        """The root array of a field."""
        root: Array[Any] = self._doc.get(name, type=Array)
        return root

    def new_tag(self) -> str:
        """Unique add tag: replica id, this process's Yjs client id, a counter."""
        self._tags += 1
        return f"{self._tag_prefix}{self._tags}"

    def write(self, field: Field[Any], op: dict[str, Any], mutate: Callable[[], None]) -> None:
        """Run ``mutate`` in one transaction and hand its update and ``op`` to the recorder.

        ``write_guard`` (when set) runs first and may raise to refuse the write before the
        doc changes (the replica refuses writes once closed).
        """
        if self.write_guard is not None:
            self.write_guard()
        captured = self._captured
        captured.clear()
        with self._doc.transaction():
            mutate()
        if captured and self.recorder is not None:
            update = captured[0] if len(captured) == 1 else b"".join(captured)
            try:
                self.recorder(update, op)
            except BaseException:
                # The doc holds the change even though recording failed: the field's cached
                # value must not hide it.
                field.invalidate()
                raise

    def has_subscribers(self, name: str) -> bool:
        """Whether anyone listens to changes of field ``name``."""
        return name in self._subscribers

    def notify(self, name: str, old: Any, new: Any, *, local: bool) -> None:
        """Deliver a change of ``name`` to its subscribers (errors in callbacks are isolated)."""
        if old == new:
            return
        change = Change(name, old, new, local)
        for callback in list(self._subscribers.get(name, ())):
            try:
                callback(change)
            except Exception:  # a subscriber's bug must not break the write path
                import logging

                logging.getLogger("crdtstate").exception("change callback failed for %s", name)

    def _on_schema_change(self, _event: Any) -> None:
        self._schema_dirty = True

    # -- merge API -------------------------------------------------------------------------

    def state_vector(self) -> bytes:
        """Encoded Yjs state vector."""
        return self._doc.get_state()

    def export_update(self, since_state_vector: bytes | None = None) -> bytes:
        """Everything the holder of ``since_state_vector`` lacks (all state if ``None``).

        Raises:
            InvalidUpdate: ``since_state_vector`` cannot be decoded.
        """
        try:
            return self._doc.get_update(since_state_vector)
        except Exception as exc:
            raise InvalidUpdate(f"cannot decode state vector: {exc}") from exc

    def apply_update(self, update: bytes, *, notify: bool = True, full_state: bool = False) -> None:
        """Merge a Yjs update from elsewhere.

        ``full_state`` says the update is a whole document's state (a snapshot): applied
        first, it is not checked for integration (see :meth:`_settle`). Any other update
        is checked, since a partial one can arrive ahead of what it depends on.

        Raises:
            InvalidUpdate: not bytes, over :data:`MAX_UPDATE_BYTES`, or undecodable; the
                document is left untouched.
        """
        if not isinstance(update, bytes | bytearray | memoryview):
            raise InvalidUpdate(f"update must be bytes, got {type(update).__name__}")
        if len(update) > MAX_UPDATE_BYTES:
            raise InvalidUpdate(f"update of {len(update)} bytes exceeds {MAX_UPDATE_BYTES}")
        if len(update) < 2:
            raise InvalidUpdate(f"update of {len(update)} bytes is truncated")
        watched = list(self._subscribers) if notify else []
        olds = {name: self._field_value(name) for name in watched}
        data = bytes(update)
        # Progress can only be seen against the vector from before, needed only when
        # updates are held; a full state applied first (recovery's snapshot, a joiner's
        # snapshot) needs no check at all.
        unchecked = self._fresh and full_state
        sv_before = self._doc.get_state() if self._unsettled else None
        self._remote = True
        try:
            try:
                self._doc.apply_update(data)
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                raise InvalidUpdate(f"cannot decode update: {exc}") from exc
            self._fresh = False
            self._settle(data, unchecked, sv_before)
        finally:
            self._remote = False
        for field in self.fields.values():
            field.invalidate()
        if self._schema_dirty:
            self.refresh_declared()
        for name in watched:
            self.notify(name, olds[name], self._field_value(name), local=False)

    def restore(self, snapshot: bytes | None, tail: Sequence[bytes]) -> None:
        """Rebuild the state from a local snapshot and the updates stored after it.

        The tail is merged into a few large updates before it is applied: every apply
        checks that its items integrated (decoding the update a second time), which for
        thousands of small updates costs more than the updates themselves. A merge is the
        union of their items and deletions, so the state is the one applying them one by
        one gives. A group that does not merge is applied update by update, so an
        unreadable one is named by the error.

        Raises:
            InvalidUpdate: a stored update cannot be decoded.
        """
        if snapshot is not None:
            self.apply_update(snapshot, notify=False, full_state=True)
        for group in _groups_by_size(tail, RESTORE_GROUP_BYTES):
            if len(group) > 1:
                try:
                    merged = merge_updates(*group)
                except BaseException as exc:  # pycrdt raises ValueError; a Rust panic too
                    if isinstance(exc, KeyboardInterrupt | SystemExit):
                        raise
                else:
                    self.apply_update(merged, notify=False)
                    continue
            for update in group:
                self.apply_update(update, notify=False)

    def _integrated(self, update: bytes, state_vector: bytes | None = None) -> bool:
        """Whether every item of ``update`` is integrated (none pending, none past a hole).

        An update Yrs applied but cannot diff counts as integrated: it cannot be helped.
        """
        sv = self._doc.get_state() if state_vector is None else state_vector
        try:
            missing = get_update(update, sv)
        except BaseException as exc:  # pycrdt raises ValueError; a Rust panic is a BaseException
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            return True
        return missing[:1] == b"\x00"  # no struct the doc lacks

    def _settle(self, update: bytes, unchecked: bool, sv_before: bytes | None) -> None:
        """Keep remote updates whose items are not all integrated, and re-apply them.

        pycrdt 0.14 embeds yrs 0.27+, which integrates an item that arrives ahead of its
        writer's earlier items (a hole in that writer's clocks) as soon as its origins
        are present (y-crdt issue 632); the state vector stops at the hole. Two problems
        follow. The content runs ahead of the state vector, so equal state vectors no
        longer imply equal content while a hole is open (see :attr:`settled`). And an
        update filling a hole can be lost: applying [a=y (overwrites a=x)], [c=z], then
        [a=x] leaves ``a`` missing for good, where applying the middle update again
        integrates it. So an update not fully integrated is kept (within
        :data:`MAX_UNSETTLED_UPDATES` and :data:`MAX_UNSETTLED_BYTES`; beyond, the oldest
        is dropped and the doc stays unsettled) and applied again whenever a later update
        moved the state vector, until it is integrated.

        A full state applied before anything else from elsewhere (``unchecked``: a snapshot
        at recovery, a late joiner's snapshot) is not checked: the check would decode the
        whole snapshot a second time. Local writes made before it (a schema declared at
        open) change nothing to how it integrates: they belong to this doc's fresh client
        id, which no remote item can be waiting for.
        """
        sv_after = self._doc.get_state()
        if not unchecked and not self._integrated(update, sv_after):
            self._unsettled.append(update)
            while len(self._unsettled) > MAX_UNSETTLED_UPDATES or (
                len(self._unsettled) > 1 and sum(map(len, self._unsettled)) > MAX_UNSETTLED_BYTES
            ):
                del self._unsettled[0]
                self._dropped_unsettled = True
        if sv_before is None or sv_after == sv_before:
            return  # nothing was held before, or nothing new was integrated: nothing to retry
        just_applied: bytes | None = update
        for _ in range(len(self._unsettled)):  # every round but the last settles one more
            remaining: list[bytes] = []
            for held in self._unsettled:
                if held is not just_applied:
                    self._doc.apply_update(held)
                if not self._integrated(held):
                    remaining.append(held)
            progressed = len(remaining) < len(self._unsettled)
            self._unsettled = remaining
            just_applied = None
            if not progressed or not remaining:
                break

    @property
    def settled(self) -> bool:
        """Whether every remote update applied so far is fully integrated.

        While ``False`` the doc may hold items beyond its state vector (or wait for
        missing ones): comparing state vectors says nothing about content then. A state
        vector sync with any peer that has the missing updates settles it. A full state
        applied first (a snapshot at recovery, a joiner's snapshot) is taken as complete.
        """
        return not self._unsettled and not self._dropped_unsettled

    def _field_value(self, name: str) -> Any:
        field = self.fields.get(name)
        return None if field is None else field._typed()

    # -- schema in the doc -----------------------------------------------------------------

    def declared(self) -> dict[str, dict[str, Any]]:
        """Field descriptors found in the doc (foreign entries are skipped)."""
        if self._schema_dirty:
            self.refresh_declared()
        return dict(self._declared)

    def schema_meta(self) -> dict[str, Any]:
        """Schema name and version recorded in the doc (empty if none)."""
        raw = self._schema_root.get(SCHEMA_META_KEY)
        try:
            meta = _codec.loads(raw) if isinstance(raw, str) else {}
        except ValueError:
            meta = {}
        return meta if isinstance(meta, dict) else {}

    def refresh_declared(self) -> None:
        """Re-read descriptors from the doc and bind fields declared by other replicas."""
        declared: dict[str, dict[str, Any]] = {}
        for name, raw in self._schema_root.items():
            if name == SCHEMA_META_KEY or not isinstance(raw, str):
                continue
            try:
                desc = _codec.loads(raw)
            except ValueError:
                continue
            if isinstance(desc, dict):
                declared[name] = desc
        self._declared = declared
        self._schema_dirty = False
        for name, desc in declared.items():
            if name in self.fields:
                continue
            try:
                self.fields[name] = field_from_descriptor(name, desc).bind(self, name)
            except SchemaError:
                continue  # reported by violations()

    def missing_declarations(self) -> dict[str, str]:
        """Descriptors this replica's schema would add or change in the doc, encoded."""
        if self.schema is None:
            return {}
        declared = self.declared()
        out: dict[str, str] = {}
        for name, field in self.schema.__fields__.items():
            desc = field.descriptor()
            if declared.get(name) != desc:
                out[name] = _codec.dumps(desc)
        meta = {"name": self.schema.__name__, "version": self.schema.__version__}
        if self.schema_meta() != meta:
            out[SCHEMA_META_KEY] = _codec.dumps(meta)
        return out

    def declare_schema_entries(self, entries: dict[str, str]) -> None:
        """Write descriptor entries into the doc (one recorded write)."""
        if not entries:
            return
        root = self._schema_root

        def mutate() -> None:
            for key, value in entries.items():
                root[key] = value

        op = {"field": SCHEMA_ROOT, "op": "declare", "entries": sorted(entries)}
        self.write(_SCHEMA_FIELD, op, mutate)
        self.refresh_declared()

    def declare(self, name: str, descriptor: dict[str, Any]) -> Field[Any]:
        """Declare one field at run time (CLI); idempotent when kind and type match.

        A field already declared with the same kind and type keeps its declaration (its
        default included): the doc is not written again.

        Raises:
            SchemaError: the descriptor is invalid, or the field is declared with another
                kind or type.
        """
        field = field_from_descriptor(name, descriptor)
        wanted = field.descriptor()
        existing = self.declared().get(name)
        if existing is not None and (existing.get("kind"), existing.get("type", "json")) != (
            wanted["kind"],
            wanted["type"],
        ):
            raise SchemaError(
                f"field {name!r} is already declared as {existing.get('kind')}:"
                f"{existing.get('type')}, not {wanted['kind']}:{wanted['type']}"
            )
        if existing is None:
            self.declare_schema_entries({name: _codec.dumps(wanted)})
        if name not in self.fields:
            self.fields[name] = field.bind(self, name)
        return self.fields[name]

    def field(self, name: str) -> Field[Any]:
        """The bound field ``name`` (declared by the schema or in the doc).

        Raises:
            UnknownFieldError: no such field.
        """
        if self._schema_dirty:
            self.refresh_declared()
        try:
            return self.fields[name]
        except KeyError:
            known = ", ".join(sorted(self.fields)) or "none"
            raise UnknownFieldError(f"unknown field {name!r} (fields: {known})") from None

    def subscribe(self, name: str, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback`` on every change of field ``name``; returns an unsubscribe."""
        self.field(name)
        self._subscribers.setdefault(name, []).append(callback)

        def unsubscribe() -> None:
            callbacks = self._subscribers.get(name, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                self._subscribers.pop(name, None)

        return unsubscribe

    # -- materialized view -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every field's value as JSON, derived only from the doc content."""
        if self._schema_dirty:
            self.refresh_declared()
        names = sorted(set(self.fields) | set(self._declared))
        out: dict[str, Any] = {}
        for name in names:
            field = self.fields.get(name)
            out[name] = None if field is None else field.raw_value()
        copied: dict[str, Any] = _codec.loads(_codec.dumps(out))
        return copied

    def digest(self) -> str:
        """sha256 (hex) of the canonical JSON of :meth:`to_dict`.

        Two replicas with equal state vectors have equal digests; anything else is a bug.
        """
        return hashlib.sha256(_codec.dumps(self.to_dict()).encode()).hexdigest()

    def violations(self) -> list[SchemaViolation]:
        """Everything in the doc whose shape does not fit the schema."""
        out: list[SchemaViolation] = []
        declared = self.declared()
        for name in self._schema_root.keys():  # noqa: SIM118 (typed as Iterable)
            if name not in declared and name != SCHEMA_META_KEY:
                out.append(SchemaViolation(name, "descriptor in doc is not a JSON object"))
        if SCHEMA_META_KEY in self._schema_root and not self.schema_meta():
            out.append(SchemaViolation(SCHEMA_ROOT, "schema metadata is not a JSON object"))
        for name, desc in declared.items():
            try:
                field_from_descriptor(name, desc)
            except SchemaError as exc:
                out.append(SchemaViolation(name, f"bad descriptor in doc: {exc}"))
        if self.schema is not None:
            for name, field in self.schema.__fields__.items():
                doc_desc = declared.get(name)
                mine = field.descriptor()
                if doc_desc is not None and (doc_desc.get("kind"), doc_desc.get("type")) != (
                    mine["kind"],
                    mine["type"],
                ):
                    out.append(
                        SchemaViolation(
                            name,
                            f"doc declares {doc_desc.get('kind')}:{doc_desc.get('type')}, "
                            f"schema says {mine['kind']}:{mine['type']}",
                        )
                    )
        for field in self.fields.values():
            out.extend(field.violations())
        return out


class _SchemaField(Field[Any]):
    """Stand-in passed to the write path for schema declarations."""

    def __init__(self) -> None:
        super().__init__(Any, None)
        self.name = SCHEMA_ROOT


_SCHEMA_FIELD = _SchemaField()


def _groups_by_size(updates: Sequence[bytes], limit: int) -> Iterator[list[bytes]]:
    """Consecutive runs of ``updates`` of at most ``limit`` bytes (or one larger update)."""
    group: list[bytes] = []
    size = 0
    for update in updates:
        if group and size + len(update) > limit:
            yield group
            group, size = [], 0
        group.append(update)
        size += len(update)
    if group:
        yield group
