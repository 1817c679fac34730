"""Fixtures shared by the whole test suite.

Owns small, generic helpers only: a manual millisecond time source for hybrid logical
clocks, a deadline-bound polling helper, a state-vector decoder, and a factory of
namespace docs over a schema holding every CRDT kind. Must not start servers or processes
(tests own those).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from crdtstate import (
    GCounter,
    HybridClock,
    Log,
    LWWMap,
    LWWRegister,
    NamespaceDoc,
    ORSet,
    PNCounter,
    Schema,
)


class ManualTime:
    """A wall clock in milliseconds that moves only when told (steps back too)."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.now_ms = start_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, delta_ms: int) -> None:
        """Move the clock by ``delta_ms`` (negative: the wall clock steps back)."""
        self.now_ms += delta_ms


class AllKinds(Schema):
    """One field of every CRDT kind."""

    flag = LWWRegister(bool, default=False)
    title = LWWRegister(str, default="")
    hits = GCounter()
    karma = PNCounter()
    followers = ORSet(str)
    config = LWWMap(int)
    memory = Log(dict)


DocFactory = Callable[..., NamespaceDoc]


@pytest.fixture
def manual_time() -> ManualTime:
    """A manual wall clock (milliseconds) to inject into ``HybridClock(now_ms=...)``."""
    return ManualTime()


@pytest.fixture
def all_kinds() -> type[AllKinds]:
    """The schema with one field of every kind."""
    return AllKinds


@pytest.fixture
def make_doc(manual_time: ManualTime) -> DocFactory:
    """Factory of namespace docs sharing ``manual_time``; each declares its schema.

    ``make_doc("a")`` gives replica ``a`` over :class:`AllKinds` with a fixed client id
    (1, 2, ... in creation order); keyword arguments override ``schema``, ``client_id``
    and ``offset_ms`` (clock skew).
    """
    created: list[NamespaceDoc] = []

    def make(
        replica_id: str,
        *,
        schema: type[Schema] | None = AllKinds,
        client_id: int | None = None,
        offset_ms: int = 0,
    ) -> NamespaceDoc:
        doc = NamespaceDoc(
            replica_id,
            schema,
            client_id=client_id if client_id is not None else len(created) + 1,
            clock=HybridClock(now_ms=manual_time, offset_ms=offset_ms),
        )
        doc.declare_schema_entries(doc.missing_declarations())
        created.append(doc)
        return doc

    return make


def decode_state_vector(data: bytes) -> dict[int, int]:
    """A Yjs v1 state vector as {client id: clock}: its bytes list clients in no set order."""
    pos = 0

    def varuint() -> int:
        nonlocal pos
        value, shift = 0, 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    return {varuint(): varuint() for _ in range(varuint())}


@pytest.fixture
def vector_of() -> Callable[[Any], dict[int, int]]:
    """``vector_of(replica_or_doc)``: its state vector as {client id: clock}."""
    return lambda holder: decode_state_vector(holder.state_vector())


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    """``wait_until(predicate, timeout_s=10, what="...")``: poll until true, or fail."""

    def wait(predicate: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout_s
        interval_s = 0.001
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() >= deadline:
                pytest.fail(f"{what} not reached within {timeout_s} s")
            time.sleep(interval_s)  # a poll interval, not a wait for an event
            interval_s = min(interval_s * 2, 0.05)

    return wait
