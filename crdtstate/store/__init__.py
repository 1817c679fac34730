"""Local persistence of a replica: snapshot, update tail, outbox, meta.

``Store`` is the protocol; ``SqliteStore`` (via ``open_store``) is the real one and
``MemoryStore`` the thread-free one for the deterministic simulation. Handles only bytes
and JSON-able dicts; must not import pycrdt nor anything above the store.
"""

from crdtstate.store._sqlite_schema import StoreVersionError
from crdtstate.store.base import (
    NO_OP_ID,
    NO_SEQ,
    Durability,
    LoadedState,
    OutboxEntry,
    Store,
)
from crdtstate.store.memory import MemoryStore
from crdtstate.store.sqlite import SqliteStore, open_store

__all__ = [
    "NO_OP_ID",
    "NO_SEQ",
    "Durability",
    "LoadedState",
    "MemoryStore",
    "OutboxEntry",
    "SqliteStore",
    "Store",
    "StoreVersionError",
    "open_store",
]
