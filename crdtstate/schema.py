"""Schemas: a namespace's fields declared once, as a class.

Example::

    class Agent(Schema, version=1):
        killswitch = LWWRegister(bool, default=False)
        followers = ORSet(str)
        karma = PNCounter()
        memory = Log(dict)
        config = LWWMap(str)

A schema also has a JSON *descriptor* (field names, CRDT kinds, value types, defaults, a
version) that the replica writes into the doc itself, so tools without the agent's code
(the CLI, the relay's dashboard, drift reports) can read any namespace;
:func:`schema_from_descriptor` turns a descriptor back into a schema class.

Imports: ``crdt``, ``errors``; never ``doc`` or ``replica``.
"""

from __future__ import annotations

import keyword
import re
from typing import Any, ClassVar, Self

from crdtstate.crdt.base import Field, FieldContext, FieldKind, ValueType, python_type_of
from crdtstate.crdt.counter import GCounter, PNCounter
from crdtstate.crdt.log import Log
from crdtstate.crdt.orset import ORSet
from crdtstate.crdt.register import LWWMap, LWWRegister
from crdtstate.errors import SchemaError

_FIELD_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")

_DEFAULTS: dict[ValueType, Any] = {
    ValueType.STR: "",
    ValueType.INT: 0,
    ValueType.FLOAT: 0.0,
    ValueType.BOOL: False,
    ValueType.JSON: None,
}


_RESERVED_NAMES = frozenset({"fields", "descriptor"})
"""Names of :class:`Schema`'s own methods: a field so named would hide them."""


def validate_field_name(name: str) -> str:
    """Return ``name`` if it can name a field, else raise :class:`SchemaError` saying why."""
    if not isinstance(name, str) or not _FIELD_NAME_RE.match(name) or keyword.iskeyword(name):
        raise SchemaError(
            f"invalid field name {name!r}: use a letter then letters, digits or '_' "
            "(at most 64 characters, not a Python keyword)"
        )
    if name in _RESERVED_NAMES:
        raise SchemaError(
            f"invalid field name {name!r}: reserved (Schema.{name}() is a method); "
            "choose another name"
        )
    return name


class Schema:
    """Base class of namespace schemas; subclass it and declare fields as class attributes.

    On a replica, ``replica.state`` is an instance whose attributes are the bound fields.
    Assigning to an attribute is refused: write through the field (``.set()``, ``.inc()``).
    """

    __fields__: ClassVar[dict[str, Field[Any]]] = {}
    __version__: ClassVar[int] = 1

    def __init_subclass__(cls, version: int = 1, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise SchemaError(f"{cls.__name__}: schema version must be an integer >= 1")
        fields: dict[str, Field[Any]] = {}
        for klass in reversed(cls.__mro__):
            for name, attr in vars(klass).items():
                if isinstance(attr, Field):
                    validate_field_name(name)
                    fields[name] = attr
        cls.__fields__ = fields
        cls.__version__ = version

    @classmethod
    def fields(cls) -> dict[str, Field[Any]]:
        """The declared fields by name (declarations, not bound views)."""
        return dict(cls.__fields__)

    @classmethod
    def descriptor(cls) -> dict[str, Any]:
        """The JSON descriptor written into the doc."""
        return {
            "name": cls.__name__,
            "version": cls.__version__,
            "fields": {name: f.descriptor() for name, f in cls.__fields__.items()},
        }

    @classmethod
    def _bound(cls, views: dict[str, Field[Any]]) -> Self:
        instance = cls.__new__(cls)
        for name, view in views.items():
            object.__setattr__(instance, name, view)
        return instance

    def __setattr__(self, name: str, value: Any) -> None:
        raise SchemaError(
            f"cannot assign {name!r}: fields are CRDTs, write through them "
            f"(for example state.{name}.set(value))"
        )


def field_from_descriptor(name: str, descriptor: Any) -> Field[Any]:
    """Build a field declaration from its JSON descriptor.

    Raises:
        SchemaError: the descriptor names an unknown kind or type, or has a bad default.
    """
    validate_field_name(name)
    if not isinstance(descriptor, dict):
        raise SchemaError(f"field {name!r}: descriptor must be an object, got {descriptor!r}")
    try:
        kind = FieldKind(str(descriptor.get("kind")))
    except ValueError:
        kinds = ", ".join(k.value for k in FieldKind)
        raise SchemaError(
            f"field {name!r}: unknown kind {descriptor.get('kind')!r} (one of {kinds})"
        ) from None
    try:
        value_type = ValueType(descriptor.get("type", "json"))
    except ValueError:
        types = ", ".join(t.value for t in ValueType)
        raise SchemaError(
            f"field {name!r}: unknown type {descriptor.get('type')!r} (one of {types})"
        ) from None
    py_type = python_type_of(value_type)
    field: Field[Any]
    if kind is FieldKind.LWW:
        default = descriptor.get("default", _DEFAULTS[value_type])
        try:
            field = LWWRegister(py_type, default=default)
        except Exception as exc:
            raise SchemaError(f"field {name!r}: bad default {default!r}: {exc}") from exc
    elif kind is FieldKind.GCOUNTER:
        field = GCounter()
    elif kind is FieldKind.PNCOUNTER:
        field = PNCounter()
    elif kind is FieldKind.ORSET:
        field = ORSet(py_type)
    elif kind is FieldKind.LWWMAP:
        key_type: Any = int if descriptor.get("key_type") == "int" else str
        field = LWWMap(py_type, key_type=key_type)
    else:
        field = Log(py_type)
    field.name = name
    return field


def schema_from_descriptor(descriptor: dict[str, Any], name: str = "DynamicSchema") -> type[Schema]:
    """Make a schema class from a descriptor (``{"fields": {...}, "version": n}``).

    Raises:
        SchemaError: a field descriptor is invalid.
    """
    if not isinstance(descriptor, dict):
        raise SchemaError(f"schema descriptor must be an object, got {type(descriptor).__name__}")
    fields = descriptor.get("fields", {})
    if not isinstance(fields, dict):
        raise SchemaError("schema descriptor: 'fields' must be an object")
    namespace: dict[str, Any] = {
        name_: field_from_descriptor(name_, d) for name_, d in fields.items()
    }
    version = descriptor.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        version = 1
    return type(name, (Schema,), namespace, version=version)


def bind_schema(schema: type[Schema], ctx: FieldContext) -> tuple[Schema, dict[str, Field[Any]]]:
    """Bind every field of ``schema`` to ``ctx``; returns the state object and the views."""
    views = {name: f.bind(ctx, name) for name, f in schema.__fields__.items()}
    return schema._bound(views), views
