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
