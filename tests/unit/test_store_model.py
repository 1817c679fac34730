"""Stateful fuzz: SqliteStore and MemoryStore against a plain model of the store contract.

Random sequences of appends, acks, snapshots, flushes, meta writes and clean reopens run
on all three; after every step they must agree on everything observable. The SQLite store
uses a long batch interval so durability moves only when the sequence asks for it.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from crdtstate._ids import OpId, Seq
from crdtstate.store import Durability, MemoryStore, SqliteStore, Store, open_store


@dataclass
class Model:
    """The contract, as plainly as possible."""

    sync: bool
    snapshot: bytes | None = None
    tail: list[bytes] = field(default_factory=list)
    tail_since_snapshot: list[bytes] = field(default_factory=list)
    unacked: dict[int, tuple[bytes, dict[str, Any]]] = field(default_factory=dict)
    last_op_id: int = 0
    durable_op_id: int = 0
    applied_seq: int = 0
    meta: dict[str, str] = field(default_factory=dict)

    def append_local(self, update: bytes, op: dict[str, Any]) -> int:
        self.last_op_id += 1
        self.unacked[self.last_op_id] = (update, op)
        self.tail.append(update)
        self.tail_since_snapshot.append(update)
        if self.sync:
            self.durable_op_id = self.last_op_id
        return self.last_op_id

    def append_remote(self, update: bytes, seq: int | None) -> None:
        self.tail.append(update)
        self.tail_since_snapshot.append(update)
        if seq is not None:
            self.applied_seq = max(self.applied_seq, seq)

    def commit(self) -> None:
        self.durable_op_id = self.last_op_id

    def write_snapshot(self, data: bytes) -> None:
        self.snapshot = data
        self.tail = []
        self.tail_since_snapshot = []
        if self.sync:
            self.commit()

    def outbox(self) -> list[tuple[int, bytes, dict[str, Any]]]:
        return [
            (i, u, op) for i, (u, op) in sorted(self.unacked.items()) if i <= self.durable_op_id
        ]


_updates = st.binary(min_size=0, max_size=12)
_ops = st.fixed_dictionaries({"field": st.sampled_from(["karma", "followers"]), "n": st.integers()})


class StoreAgreement(RuleBasedStateMachine):
    durability = Durability.BATCH

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="store-model-"))
        self.path = self.dir / "ns.sqlite3"
        self.sqlite: SqliteStore = open_store(self.path, self.durability, batch_interval_s=30)
        self.memory = MemoryStore(self.durability)
        self.model = Model(sync=self.durability is Durability.SYNC)

    def teardown(self) -> None:
        try:
            self.sqlite.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def stores(self) -> tuple[Store, Store]:
        return (self.sqlite, self.memory)

    @rule(update=_updates, op=_ops)
    def append_local(self, update: bytes, op: dict[str, Any]) -> None:
        expected = self.model.append_local(update, op)
        assert [s.append_local(update, op) for s in self.stores] == [expected, expected]

    @rule(update=_updates, seq=st.none() | st.integers(0, 50))
    def append_remote(self, update: bytes, seq: int | None) -> None:
        self.model.append_remote(update, seq)
        for store in self.stores:
            store.append_remote(update, None if seq is None else Seq(seq))

    @rule(seq=st.integers(0, 50))
    def note_applied(self, seq: int) -> None:
        self.model.applied_seq = max(self.model.applied_seq, seq)
        for store in self.stores:
            store.note_applied(Seq(seq))

    @precondition(lambda self: self.model.durable_op_id > 0)
    @rule(data=st.data())
    def ack_a_sent_entry(self, data: st.DataObject) -> None:
        op_id = data.draw(st.integers(1, self.model.durable_op_id))
        self.model.unacked.pop(op_id, None)
        for store in self.stores:
            store.ack(OpId(op_id), Seq(op_id))

    @rule(op_id=st.integers(0, 500))
    def ack_any_id(self, op_id: int) -> None:
        if op_id <= self.model.durable_op_id:
            self.model.unacked.pop(op_id, None)
        elif op_id in self.model.unacked:
            return  # the relay never acks what was never sent
        for store in self.stores:
            store.ack(OpId(op_id), Seq(op_id))

    @rule(data=_updates)
    def write_snapshot(self, data: bytes) -> None:
        self.model.write_snapshot(data)
        for store in self.stores:
            store.write_snapshot(data)

    @rule()
    def flush(self) -> None:
        self.model.commit()
        for store in self.stores:
            store.flush()

    @rule(key=st.sampled_from(["a", "b"]), value=st.text(max_size=5))
    def set_meta(self, key: str, value: str) -> None:
        self.model.meta[key] = value
        self.model.commit()  # waiting for a commit commits everything queued before it
        for store in self.stores:
            store.set_meta(key, value)

    @rule()
    def load(self) -> None:
        self.model.commit()
        for store in self.stores:
            state = store.load()
            assert state.snapshot == self.model.snapshot
            assert state.tail == self.model.tail
            assert state.applied_seq == self.model.applied_seq
            assert state.last_op_id == self.model.last_op_id

    @rule()
    def reopen(self) -> None:
        self.model.commit()
        self.sqlite.close()
        self.sqlite = open_store(self.path, self.durability, batch_interval_s=30)
        self.memory.close()
        self.memory.reopen()
        for key, value in self.model.meta.items():
            assert self.sqlite.get_meta(key) == value
            assert self.memory.get_meta(key) == value

    @invariant()
    def stores_agree_with_the_model(self) -> None:
        expected = self.model.outbox()
        for store in self.stores:
            assert store.durable_op_id == self.model.durable_op_id
            assert store.outbox_len() == len(self.model.unacked)
            got = [(e.op_id, e.update, e.op) for e in store.outbox(limit=10_000)]
            assert got == expected
            assert store.tail_stats() == (
                len(self.model.tail_since_snapshot),
                sum(map(len, self.model.tail_since_snapshot)),
            )


class SyncStoreAgreement(StoreAgreement):
    durability = Durability.SYNC


StoreAgreement.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
SyncStoreAgreement.TestCase.settings = settings(
    max_examples=15, stateful_step_count=25, deadline=None
)
TestStoresAgreeInBatchMode = StoreAgreement.TestCase
TestStoresAgreeInSyncMode = SyncStoreAgreement.TestCase
