"""Common machinery of the typed CRDT fields.

A field object has two lives. Declared on a :class:`~crdtstate.schema.Schema` class it is
a *spec*: kind, value type, default. Bound to a namespace document it is a *view*: reads
materialize the Yjs content of one root shared type, writes go through the document's
single write path (:class:`FieldContext.write`) so every change is captured, stored and
announced. Fields never do I/O and never touch the store.

The content of a root type is never trusted: entries with a foreign shape are skipped and
reported as :class:`~crdtstate.errors.SchemaViolation`, never raised.

Imports: ``_codec``, ``errors``, ``hlc``; never ``doc``, ``replica`` or the store.
"""

from __future__ import annotations

import copy
import enum
import functools
import math
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar, cast

from pycrdt import Array, Map
from pydantic import ConfigDict, PydanticUserError, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from crdtstate import _codec
from crdtstate.errors import SchemaError, SchemaViolation, ValidationError
from crdtstate.hlc import HybridClock

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def locked(method: F) -> F:
    """Run a field method under its document's lock: reads and writes are atomic across
    threads (the sync client applies remote updates on its own thread)."""

    @functools.wraps(method)
    def wrapper(self: Field[Any], *args: Any, **kwargs: Any) -> Any:
        ctx = self._ctx
        if ctx is None:
            ctx = self.ctx  # raises: a declaration, not a bound view
        with ctx.lock:
            return method(self, *args, **kwargs)

    return cast(F, wrapper)


_NOT_FAST: Any = object()

_FAST_INT_LIMIT = 1 << 63
"""Larger integers take the general path, which checks they encode as JSON at all."""


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr`` for error messages: cut to ``limit`` characters, never raising.

    (``repr`` of an int beyond Python's digit limit raises ``ValueError``.)
    """
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_utf8_text(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (no lone surrogates), as Yrs requires."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


MAX_VALUE_BYTES = 1 << 20
"""Largest canonical JSON encoding accepted for one value (1 MiB)."""


class FieldKind(enum.StrEnum):
    """CRDT kinds a field can have; the values are the names used in descriptors and the CLI."""

    LWW = "lww"
    GCOUNTER = "gcounter"
    PNCOUNTER = "pncounter"
    ORSET = "orset"
    LWWMAP = "lwwmap"
    LOG = "log"


class ValueType(enum.StrEnum):
    """JSON-level value types a descriptor can name; Python schemas map richer types to JSON."""

    STR = "str"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    JSON = "json"


_PY_TYPES: dict[ValueType, Any] = {
    ValueType.STR: str,
    ValueType.INT: int,
    ValueType.FLOAT: float,
    ValueType.BOOL: bool,
    ValueType.JSON: Any,
}

_PLAIN_TYPES: dict[ValueType, type] = {
    vt: py for vt, py in _PY_TYPES.items() if vt is not ValueType.JSON
}
"""The Python type whose values a field of each value type checks without pydantic."""


def value_type_of(py_type: Any) -> ValueType:
    """Descriptor type for a Python type: primitives map to themselves, the rest to json."""
    for vt, candidate in _PY_TYPES.items():
        if py_type is candidate and vt is not ValueType.JSON:
            return vt
    return ValueType.JSON


def python_type_of(value_type: ValueType) -> Any:
    """Python type used to validate values of a descriptor type (``Any`` for json)."""
    return _PY_TYPES[value_type]


def json_value_fits(value_type: ValueType, value: Any) -> bool:
    """Whether a decoded JSON value has the shape ``value_type`` promises."""
    if value_type is ValueType.JSON:
        return True
    if value_type is ValueType.BOOL:
        return isinstance(value, bool)
    if value_type is ValueType.INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if value_type is ValueType.FLOAT:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)


class FieldContext(Protocol):
    """What a bound field needs from its namespace document."""

    replica_id: str
    clock: HybridClock
    lock: threading.RLock

    def root_map(self, name: str) -> Map[Any]: ...

    def root_array(self, name: str) -> Array[Any]: ...

    def write(self, field: Field[Any], op: dict[str, Any], mutate: Callable[[], None]) -> None:
        """Run ``mutate`` in one transaction and record it as the semantic operation ``op``."""
        ...

    def new_tag(self) -> str:
        """A tag never issued before by any replica (OR-set add identity)."""
        ...

    def has_subscribers(self, name: str) -> bool: ...

    def notify(self, name: str, old: Any, new: Any, *, local: bool) -> None: ...


class Field(Generic[T]):
    """Base of every CRDT field: a spec when declared, a view when bound.

    Subclasses implement :meth:`_materialize` (doc content -> JSON value and violations) and
    their own typed read and write methods.
    """

    kind: ClassVar[FieldKind]
    root_kind: ClassVar[str] = "map"
    """Yjs shape of the field's root type: ``"map"`` or ``"array"``."""

    def __init__(self, value_type: Any, default: Any, *, doc: str = "") -> None:
        self.value_type: Any = value_type
        self.json_type: ValueType = value_type_of(value_type)
        self._plain_type: type | None = _PLAIN_TYPES.get(self.json_type)
        self.default: Any = default
        self.doc = doc
        self.name: str = ""
        self._ctx: FieldContext | None = None
        self._adapter: TypeAdapter[Any] = _type_adapter(value_type)
        self._cache: tuple[Any, list[SchemaViolation]] | None = None
        self._typed_cache: tuple[Any, list[SchemaViolation]] | None = None
        self._op_head = ""
        """Start of every op's JSON text: ``{"field":<name>,"op":`` (set by :meth:`bind`)."""
        if default is not None or self._accepts_none():
            self._check_default()

    # -- spec side -------------------------------------------------------------------------

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def _accepts_none(self) -> bool:
        try:
            self._adapter.validate_python(None, strict=True)
        except PydanticValidationError:
            return False
        return True

    def _check_default(self) -> None:
        pass

    def descriptor(self) -> dict[str, Any]:
        """JSON descriptor of this field as written into the doc's schema map."""
        return {
            "kind": str(self.kind),
            "type": str(self.json_type),
            "default": self.default_json(),
        }

    def default_json(self) -> Any:
        """The default as a JSON value (``None`` where a kind has no default)."""
        return None

    def bind(self, ctx: FieldContext, name: str | None = None) -> Self:
        """Return a view of this field over ``ctx``'s document."""
        view = copy.copy(self)
        view.name = name or self.name
        view._ctx = ctx
        view._cache = None
        view._typed_cache = None
        view._op_head = '{"field":' + _codec.quote(view.name) + ',"op":'
        view._bind_root()
        return view

    def _bind_root(self) -> None:
        pass

    @property
    def ctx(self) -> FieldContext:
        """The document this view is bound to."""
        if self._ctx is None:
            raise SchemaError(
                f"field {self.name!r} is a declaration; use it through a replica "
                "(replica.state.<field>) to read or write"
            )
        return self._ctx

    # -- values ----------------------------------------------------------------------------

    def to_json(self, value: Any) -> Any:
        """Validate a value written locally and convert it to its JSON form.

        Raises:
            ValidationError: the value does not fit the field's type or is too large.
        """
        fast = self._fast_json(value)
        if fast is not _NOT_FAST:
            return fast
        try:
            checked = self._adapter.validate_python(value, strict=True)
            as_json = self._adapter.dump_python(checked, mode="json")
            # Yrs stores UTF-8: a lone surrogate would make pycrdt panic mid-transaction.
            encoded = _codec.dumps(as_json).encode("utf-8")
        except PydanticValidationError as exc:
            raise ValidationError(self.name, _first_error(exc)) from exc
        except UnicodeEncodeError as exc:
            raise ValidationError(
                self.name, f"value holds text that is not valid Unicode: {exc.reason}"
            ) from exc
        except (TypeError, ValueError) as exc:
            raise ValidationError(self.name, f"value is not representable as JSON: {exc}") from exc
        if len(encoded) > MAX_VALUE_BYTES:
            raise ValidationError(
                self.name, f"value is {len(encoded)} bytes encoded, over {MAX_VALUE_BYTES}"
            )
        return as_json

    def _fast_json(self, value: Any) -> Any:
        """Validate primitive values without pydantic (the hot write path).

        Returns :data:`_NOT_FAST` when the general path must decide (rich types, errors).
        """
        kind = type(value)
        if kind is not self._plain_type:
            return _NOT_FAST
        if kind is str:
            ok = len(value) * 4 <= MAX_VALUE_BYTES and is_utf8_text(value)
        elif kind is int:
            ok = -_FAST_INT_LIMIT < value < _FAST_INT_LIMIT
        elif kind is float:
            ok = math.isfinite(value)
        else:
            ok = True  # a bool for a bool field
        return value if ok else _NOT_FAST

    def from_json(self, value: Any) -> Any:
        """Turn a JSON value read from the doc into a typed value (raises on mismatch)."""
        return self._adapter.validate_python(value)

    def _encode(self, value: Any) -> str:
        return _codec.dumps(value)

    def _op(self, verb: str, tail: str, **parts: Any) -> _codec.EncodedOp:
        """The op ``{"field": <name>, "op": verb, **parts}`` with its JSON text.

        ``tail`` is the JSON text of ``parts`` (``',"key":"k","value":3'``), made by the
        caller from what it already encoded for the doc.
        """
        op = _codec.EncodedOp(field=self.name, op=verb, **parts)
        op.text = f'{self._op_head}"{verb}"{tail}}}'
        return op

    def _commit(
        self, op: dict[str, Any], mutate: Callable[[], None], after: Callable[[], None]
    ) -> None:
        """Write through the doc, then update caches (``after``), then tell subscribers."""
        ctx = self.ctx
        watched = ctx.has_subscribers(self.name)
        old = self._typed() if watched else None
        ctx.write(self, op, mutate)
        after()
        if watched:
            ctx.notify(self.name, old, self._typed(), local=True)

    # -- materialization -------------------------------------------------------------------

    def _materialize(self) -> tuple[Any, list[SchemaViolation]]:
        raise NotImplementedError

    def invalidate(self) -> None:
        """Forget cached values; the document calls this after remote changes."""
        self._cache = None
        self._typed_cache = None

    def _materialized(self) -> tuple[Any, list[SchemaViolation]]:
        if self._cache is None:
            self._cache = self._materialize()
        return self._cache

    def raw_value(self) -> Any:
        """The field's value as JSON, derived only from the doc content (digest input)."""
        return self._materialized()[0]

    def violations(self) -> list[SchemaViolation]:
        """Foreign-shaped content found in this field's part of the doc."""
        self._typed()
        assert self._typed_cache is not None
        return [*self._materialized()[1], *self._typed_cache[1], *self._other_half_violations()]

    def _other_half_violations(self) -> list[SchemaViolation]:
        """Report content written to this field's root as the other Yjs kind.

        A Yjs root type has a list half and a map half; a foreign writer using our map root
        as an array (or our array root as a map) fills the half our reads never look at.
        """
        ctx = self.ctx
        if self.root_kind == "array":
            count, what = len(ctx.root_map(self.name)), "map entries in an array-based field"
        else:
            count, what = len(ctx.root_array(self.name)), "list items in a map-based field"
        if count == 0:
            return []
        return [SchemaViolation(self.name, f"{count} {what} (written as another kind)")]

    def _typed(self) -> Any:
        if self._typed_cache is None:
            raw, _ = self._materialized()
            self._typed_cache = self._convert(raw)
        return self._typed_cache[0]

    def _convert(self, raw: Any) -> tuple[Any, list[SchemaViolation]]:
        """Typed value from the raw JSON value; a mismatch yields the default and a report."""
        try:
            return self.from_json(raw), []
        except (PydanticValidationError, ValueError, TypeError) as exc:
            detail = f"stored value does not fit the schema: {exc}"
            return self.default, [SchemaViolation(self.name, detail)]

    def __repr__(self) -> str:
        state = "bound" if self._ctx is not None else "declared"
        return f"<{type(self).__name__} {self.name!r} {state}>"


_KEEP_NON_FINITE = ConfigDict(ser_json_inf_nan="constants")


def _type_adapter(value_type: Any) -> TypeAdapter[Any]:
    """Validator of ``value_type`` whose JSON dump keeps NaN and infinity as they are.

    Pydantic's default dumps them as ``null`` inside dicts and lists: a silent change of
    the value. Kept, they fail the canonical JSON encoding and the write is refused.
    Models, dataclasses and TypedDicts bring their own config and keep it.
    """
    try:
        return TypeAdapter(value_type, config=_KEEP_NON_FINITE)
    except PydanticUserError:
        return TypeAdapter(value_type)


def _first_error(exc: PydanticValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return str(exc)
    err = errors[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    msg = str(err.get("msg", "invalid value"))
    return f"{msg} (at {where})" if where else msg


def parse_stamped(text: Any) -> tuple[int, int, Any] | None:
    """Decode a ``[wall_ms, counter, value...]`` JSON slot; ``None`` when it has another shape."""
    if not isinstance(text, str):
        return None
    try:
        decoded = _codec.loads(text)
    except ValueError:
        return None
    if (
        not isinstance(decoded, list)
        or len(decoded) not in (2, 3)
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in decoded[:2])
    ):
        return None
    return decoded[0], decoded[1], decoded[2] if len(decoded) == 3 else _DELETED


class _Deleted:
    """Marker for an LWW-map key whose winning write is a delete."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<deleted>"


_DELETED: Any = _Deleted()
DELETED: Any = _DELETED
