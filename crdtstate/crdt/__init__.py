"""Typed CRDT fields over pycrdt shared types; no I/O."""

from crdtstate.crdt.base import Field, FieldKind, ValueType
from crdtstate.crdt.counter import GCounter, PNCounter
from crdtstate.crdt.log import Log, LogEntry
from crdtstate.crdt.orset import ORSet
from crdtstate.crdt.register import LWWMap, LWWRegister

__all__ = [
    "Field",
    "FieldKind",
    "GCounter",
    "LWWMap",
    "LWWRegister",
    "Log",
    "LogEntry",
    "ORSet",
    "PNCounter",
    "ValueType",
]
