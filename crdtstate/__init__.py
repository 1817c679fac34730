"""crdtstate: one coherent state for every instance of an agent.

Typed CRDT fields (last-writer-wins registers and maps, counters, add-wins sets,
append-only logs) on pycrdt, kept in a crash-safe local store and synced through a relay.

Example::

    from crdtstate import Replica, Schema, LWWRegister, PNCounter, ORSet, Log

    class Agent(Schema):
        killswitch = LWWRegister(bool, default=False)
        karma = PNCounter()
        followers = ORSet(str)
        memory = Log(dict)

    with Replica.open("./data", "agent-42", Agent, relay="ws://127.0.0.1:8765") as r:
        r.state.killswitch.set(True)
        r.state.karma.inc(3)
"""

# The names below are imported on first use (PEP 562), so importing one submodule (the relay
# needs ``crdtstate._ids`` and ``crdtstate.sync.wire``) does not load the replica, the store,
# the schemas and their dependencies. Type checkers see plain imports.
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crdtstate._ids import Namespace, OpId, ReplicaId, Seq
    from crdtstate.crdt import (
        Field,
        FieldKind,
        GCounter,
        Log,
        LogEntry,
        LWWMap,
        LWWRegister,
        ORSet,
        PNCounter,
        ValueType,
    )
    from crdtstate.doc import Change, NamespaceDoc
    from crdtstate.errors import (
        AuthError,
        ConnectError,
        CorruptStoreError,
        CrdtStateError,
        InvalidUpdate,
        SchemaError,
        SchemaViolation,
        StoreClosedError,
        StoreError,
        StoreFullError,
        StoreLockedError,
        SyncTimeout,
        TransportError,
        UnknownFieldError,
        ValidationError,
        WrongKindError,
    )
    from crdtstate.hlc import HybridClock, Stamp
    from crdtstate.replica import Replica
    from crdtstate.schema import Schema, schema_from_descriptor
    from crdtstate.store import Durability

_LAZY: dict[str, str] = {
    "Namespace": "crdtstate._ids",
    "OpId": "crdtstate._ids",
    "ReplicaId": "crdtstate._ids",
    "Seq": "crdtstate._ids",
    "Field": "crdtstate.crdt",
    "FieldKind": "crdtstate.crdt",
    "GCounter": "crdtstate.crdt",
    "Log": "crdtstate.crdt",
    "LogEntry": "crdtstate.crdt",
    "LWWMap": "crdtstate.crdt",
    "LWWRegister": "crdtstate.crdt",
    "ORSet": "crdtstate.crdt",
    "PNCounter": "crdtstate.crdt",
    "ValueType": "crdtstate.crdt",
    "Change": "crdtstate.doc",
    "NamespaceDoc": "crdtstate.doc",
    "AuthError": "crdtstate.errors",
    "ConnectError": "crdtstate.errors",
    "CorruptStoreError": "crdtstate.errors",
    "CrdtStateError": "crdtstate.errors",
    "InvalidUpdate": "crdtstate.errors",
    "SchemaError": "crdtstate.errors",
    "SchemaViolation": "crdtstate.errors",
    "StoreClosedError": "crdtstate.errors",
    "StoreError": "crdtstate.errors",
    "StoreFullError": "crdtstate.errors",
    "StoreLockedError": "crdtstate.errors",
    "SyncTimeout": "crdtstate.errors",
    "TransportError": "crdtstate.errors",
    "UnknownFieldError": "crdtstate.errors",
    "ValidationError": "crdtstate.errors",
    "WrongKindError": "crdtstate.errors",
    "HybridClock": "crdtstate.hlc",
    "Stamp": "crdtstate.hlc",
    "Replica": "crdtstate.replica",
    "Schema": "crdtstate.schema",
    "schema_from_descriptor": "crdtstate.schema",
    "Durability": "crdtstate.store",
}


def __getattr__(name: str) -> object:
    import importlib

    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif name.isidentifier() and not name.startswith("_"):
        # ``crdtstate.replica`` and the like, as when this file imported them eagerly.
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "AuthError",
    "Change",
    "ConnectError",
    "CorruptStoreError",
    "CrdtStateError",
    "Durability",
    "Field",
    "FieldKind",
    "GCounter",
    "HybridClock",
    "InvalidUpdate",
    "LWWMap",
    "LWWRegister",
    "Log",
    "LogEntry",
    "Namespace",
    "NamespaceDoc",
    "ORSet",
    "OpId",
    "PNCounter",
    "Replica",
    "ReplicaId",
    "Schema",
    "SchemaError",
    "SchemaViolation",
    "Seq",
    "Stamp",
    "StoreClosedError",
    "StoreError",
    "StoreFullError",
    "StoreLockedError",
    "SyncTimeout",
    "TransportError",
    "UnknownFieldError",
    "ValidationError",
    "ValueType",
    "WrongKindError",
    "__version__",
    "schema_from_descriptor",
]
