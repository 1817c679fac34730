"""Replicas converge, and to the right values, whatever the delivery.

Two to five namespace docs (fixed Yjs client ids, one manual wall clock with a skew per
replica, stepping back as well as forward) run random operations of every CRDT kind.
Their updates travel in random order, duplicated, merged with ``pycrdt.merge_updates``,
or as state-vector diffs from doc to doc; a replica may restart (a new doc with a fresh
client id replays everything the old one applied, as a store's tail would). After every
update has reached every replica, all state vectors and digests are equal and the values
match a model computed from the operations and what each one observed when it ran:

- counters: the sum of the increments minus the decrements;
- OR-set: an element is present iff some add's tag was observed by no later remove or
  re-add of that element (an add replaces the tags it observes): add wins over a
  concurrent remove;
- register and LWW map: the write with the greatest (HLC, replica id), and a write made
  after observing another carries the greater stamp;
- log: every append exactly once, each replica's appends in their local order, every
  append after the entries it observed, the same order on every replica.

Along the way, two settled replicas with equal state vectors have equal digests.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

import pycrdt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    Stamp,
)


class Conv(Schema):
    reg = LWWRegister(int, default=0)
    hits = GCounter()
    karma = PNCounter()
    tags = ORSet(str)
    config = LWWMap(int)
    memory = Log(str)


ELEMENTS = ("a", "b", "c")
KEYS = ("x", "y")
WRITE_KINDS = ("set", "inc", "pinc", "pdec", "add", "remove", "mset", "mdel", "append")
MAX_REPLICAS = 5


def decode_state_vector(data: bytes) -> dict[int, int]:
    """Decode a Yjs v1 state vector: varuint count, then (client, clock) varuint pairs."""
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


class Time:
    """The shared wall clock (ms); a replica's skew is its HybridClock offset."""

    def __init__(self) -> None:
        self.now_ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now_ms


@dataclass
class Op:
    """One write that happened, with what its replica showed just before it."""

    index: int
    replica: int
    client_id: int
    kind: str
    element: str | None = None
    key: str | None = None
    value: Any = None
    stamp: Stamp | None = None
    tag: str | None = None
    observed_tags: frozenset[str] = frozenset()  # add/remove: tags(element) before
    rival: Stamp | None = None  # set/mset/mdel: the winning stamp before
    observed_entries: frozenset[str] = field(default_factory=frozenset)  # append


class Cluster:
    """Replicas, every update any of them produced, and the operations' history."""

    def __init__(self, n: int, offsets_ms: list[int]) -> None:
        self.time = Time()
        self.offsets_ms = offsets_ms
        self.messages: list[bytes] = []
        self.ops: list[Op] = []
        self.next_client_id = 1000
        self.appends = 0
        self.history: list[list[bytes]] = [[] for _ in range(n)]  # what a store would keep
        self.docs = [self._new_doc(i) for i in range(n)]
        for doc in self.docs:
            doc.declare_schema_entries(doc.missing_declarations())

    def _new_doc(self, i: int) -> NamespaceDoc:
        self.next_client_id += 1
        clock = HybridClock(now_ms=self.time, offset_ms=self.offsets_ms[i])
        doc = NamespaceDoc(f"r{i}", Conv, client_id=self.next_client_id, clock=clock)

        def record(update: bytes, _op: dict[str, Any]) -> None:
            self.messages.append(update)
            self.history[i].append(update)

        doc.recorder = record
        return doc

    def restart(self, i: int) -> None:
        """A new process for replica ``i``: fresh client id and clock, its tail replayed."""
        new = self._new_doc(i)
        for update in self.history[i]:
            new.apply_update(update, notify=False)
        self.docs[i] = new

    def apply(self, j: int, update: bytes) -> None:
        self.docs[j].apply_update(update)
        self.history[j].append(update)

    def sv(self, i: int) -> dict[int, int]:
        return decode_state_vector(self.docs[i].state_vector())

    def write(self, i: int, kind: str, pick: int, n: int) -> None:
        doc = self.docs[i]
        state: Any = doc.state
        before = len(self.messages)
        op = Op(len(self.ops), i, doc.client_id, kind)
        if kind == "set":
            op.value, op.rival = n * 10 + pick, state.reg.stamp
            op.stamp = state.reg.set(op.value)
        elif kind == "inc":
            op.value = n
            state.hits.inc(n)
        elif kind == "pinc":
            op.value = n
            state.karma.inc(n)
        elif kind == "pdec":
            op.value = n
            state.karma.dec(n)
        elif kind == "add":
            op.element = ELEMENTS[pick % len(ELEMENTS)]
            op.observed_tags = frozenset(state.tags.tags(op.element))
            op.tag = state.tags.add(op.element)
        elif kind == "remove":
            op.element = ELEMENTS[pick % len(ELEMENTS)]
            op.observed_tags = frozenset(state.tags.tags(op.element))
            assert state.tags.remove(op.element) is bool(op.observed_tags)
        elif kind in ("mset", "mdel"):
            op.key = KEYS[pick % len(KEYS)]
            op.rival = state.config.stamp(op.key)
            if kind == "mset":
                op.value = n
                op.stamp = state.config.set(op.key, n)
            else:
                op.stamp = state.config.delete(op.key)
        else:
            self.appends += 1
            op.value = f"r{i}#{self.appends}"
            op.observed_entries = frozenset(state.memory.value)
            op.stamp = state.memory.append(op.value)
        if len(self.messages) == before:
            assert kind == "remove", f"{kind} wrote nothing"
            return  # removing an absent element is not a write
        assert len(self.messages) == before + 1, "one write, one update"
        self.ops.append(op)

    def deliver(self, j: int, picks: list[int]) -> None:
        for p in picks:
            self.apply(j, self.messages[p % len(self.messages)])

    def deliver_merged(self, j: int, picks: list[int]) -> None:
        self.apply(j, pycrdt.merge_updates(*(self.messages[p % len(self.messages)] for p in picks)))

    def sync(self, i: int, j: int) -> None:
        """Merge replica i into j by state vector (what j lacks)."""
        self.apply(j, self.docs[i].export_update(self.docs[j].state_vector()))

    def deliver_everything(self, rng: random.Random, newest_first: bool = False) -> None:
        """Every update to every replica, shuffled (or newest first), some twice."""
        for j in range(len(self.docs)):
            order = list(range(len(self.messages)))
            if newest_first:
                order.reverse()
            else:
                rng.shuffle(order)
            order += rng.sample(order, k=min(len(order), rng.randint(0, 5)))
            for p in order:
                self.apply(j, self.messages[p])

    def check_equal_state_vectors_have_equal_digests(self) -> None:
        """Settled replicas (no update waiting to integrate) with equal vectors agree."""
        views = [
            (decode_state_vector(doc.state_vector()), doc.digest())
            for doc in self.docs
            if doc.settled
        ]
        for sv_a, digest_a in views:
            for sv_b, digest_b in views:
                if sv_a == sv_b:
                    assert digest_a == digest_b, "equal state vectors, different digests"


# -- the model ---------------------------------------------------------------------------


def expected_register(ops: list[Op]) -> tuple[int, Stamp | None]:
    sets = [op for op in ops if op.kind == "set"]
    if not sets:
        return 0, None
    winner = max(sets, key=lambda op: op.stamp)  # type: ignore[arg-type, return-value]
    return winner.value, winner.stamp


def expected_map(ops: list[Op]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in KEYS:
        writes = [op for op in ops if op.kind in ("mset", "mdel") and op.key == key]
        if writes:
            winner = max(writes, key=lambda op: op.stamp)  # type: ignore[arg-type, return-value]
            if winner.kind == "mset":
                out[key] = winner.value
    return out


def expected_set(ops: list[Op]) -> set[str]:
    """Add-wins: present iff some add's tag was observed by no other op on its element."""
    present = set()
    for element in ELEMENTS:
        on_element = [op for op in ops if op.element == element]
        observed = set().union(*(op.observed_tags for op in on_element))
        if any(op.tag not in observed for op in on_element if op.kind == "add"):
            present.add(element)
    return present


def check_values(cluster: Cluster) -> None:
    ops = cluster.ops
    state: Any = cluster.docs[0].state
    value, stamp = expected_register(ops)
    assert state.reg.value == value
    assert state.reg.stamp == stamp
    assert state.hits.value == sum(op.value for op in ops if op.kind == "inc")
    assert state.karma.value == sum(op.value for op in ops if op.kind == "pinc") - sum(
        op.value for op in ops if op.kind == "pdec"
    )
    tags = [op.tag for op in ops if op.kind == "add"]
    assert len(set(tags)) == len(tags), "an add reused a tag"
    assert set(state.tags.value) == expected_set(ops)
    assert state.config.value == expected_map(ops)

    log = state.memory.value
    appends = [op for op in ops if op.kind == "append"]
    assert sorted(log) == sorted(op.value for op in appends), "each append exactly once"
    position = {value: i for i, value in enumerate(log)}
    for replica in range(len(cluster.docs)):
        own = [position[op.value] for op in appends if op.replica == replica]
        assert own == sorted(own), f"r{replica}'s appends out of their local order"
    for op in appends:
        for seen in op.observed_entries:
            assert position[seen] < position[op.value], f"{op.value} before {seen}, its cause"
    stamps = {op.value: op.stamp for op in appends}
    assert [entry.stamp for entry in state.memory.entries()] == [stamps[v] for v in log]


def check_stamps(ops: list[Op]) -> None:
    """A write made after observing a winner beats it; one process's stamps only grow."""
    for op in ops:
        if op.rival is not None:
            assert op.rival < op.stamp, f"{op.kind} did not beat the stamp it observed"  # type: ignore[operator]
    by_process: dict[int, list[Stamp]] = {}
    for op in ops:
        if op.stamp is not None:
            by_process.setdefault(op.client_id, []).append(op.stamp)
    for stamps in by_process.values():
        assert all(a < b for a, b in itertools.pairwise(stamps)), "HLC went back"


# -- strategies ---------------------------------------------------------------------------

replica_index = st.integers(0, MAX_REPLICAS - 1)
message_picks = st.lists(st.integers(0, 1 << 20), min_size=1, max_size=6)
# Writes are drawn most often; each step carries every argument any kind of step needs.
STEP_KINDS = ("write",) * 6 + ("deliver", "merged", "sync", "sync", "time", "restart")
step = st.tuples(
    st.sampled_from(STEP_KINDS),
    replica_index,
    replica_index,
    st.sampled_from(WRITE_KINDS),
    st.integers(0, 5),
    st.integers(1, 9),
    message_picks,
    st.integers(-40, 60),
)
Step = tuple[str, int, int, str, int, int, list[int], int]
# Hypothesis keeps lists short on average; draw the length first for long histories too.
histories = st.integers(4, 50).flatmap(lambda n: st.lists(step, min_size=n, max_size=n))


def run_steps(cluster: Cluster, steps: list[Step]) -> None:
    n = len(cluster.docs)
    for kind, i, j, write_kind, pick, amount, picks, delta_ms in steps:
        if kind == "write":
            cluster.write(i % n, write_kind, pick, amount)
            continue
        if kind == "deliver":
            cluster.deliver(j % n, picks)
        elif kind == "merged":
            cluster.deliver_merged(j % n, picks)
        elif kind == "sync":
            cluster.sync(i % n, j % n)
        elif kind == "time":
            cluster.time.now_ms += delta_ms
        else:
            cluster.restart(i % n)
        cluster.check_equal_state_vectors_have_equal_digests()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, MAX_REPLICAS),
    offsets_ms=st.lists(st.integers(-50, 50), min_size=MAX_REPLICAS, max_size=MAX_REPLICAS),
    steps=histories,
    rng=st.randoms(use_true_random=False),
    newest_first=st.booleans(),
)
def test_replicas_converge_to_the_values_the_operations_imply(
    n: int, offsets_ms: list[int], steps: list[Step], rng: random.Random, newest_first: bool
) -> None:
    cluster = Cluster(n, offsets_ms)
    run_steps(cluster, steps)
    cluster.deliver_everything(rng, newest_first)

    vectors = {tuple(sorted(cluster.sv(i).items())) for i in range(n)}
    assert len(vectors) == 1, "state vectors differ after full delivery"
    assert len({doc.digest() for doc in cluster.docs}) == 1, "digests differ"
    assert all(doc.settled for doc in cluster.docs)
    assert all(doc.to_dict() == cluster.docs[0].to_dict() for doc in cluster.docs)
    assert all(doc.violations() == [] for doc in cluster.docs)
    check_values(cluster)
    check_stamps(cluster.ops)


@settings(max_examples=40, deadline=None)
@given(
    writes=st.lists(
        st.tuples(st.sampled_from(WRITE_KINDS), st.integers(0, 5), st.integers(1, 9)),
        min_size=1,
        max_size=25,
    ),
    picks=st.lists(st.integers(0, 1 << 20), max_size=30),
)
def test_equal_state_vectors_mean_equal_digests(
    writes: list[tuple[str, int, int]], picks: list[int]
) -> None:
    cluster = Cluster(2, [0, 0])
    for kind, pick, amount in writes:
        sv_before, ops_before = cluster.docs[0].state_vector(), len(cluster.ops)
        cluster.write(0, kind, pick, amount)
        if len(cluster.ops) > ops_before:  # every write moves the state vector
            assert cluster.docs[0].state_vector() != sv_before, f"{kind} left the vector as is"
    # The other replica gets a random selection of the updates, one at a time.
    for p in picks:
        cluster.deliver(1, [p])
        cluster.check_equal_state_vectors_have_equal_digests()
    cluster.sync(0, 1)
    cluster.sync(1, 0)
    assert cluster.docs[1].state_vector() == cluster.docs[0].state_vector()
    assert cluster.docs[1].digest() == cluster.docs[0].digest()


def test_concurrent_add_and_remove_keep_the_element() -> None:
    cluster = Cluster(2, [0, 0])
    cluster.write(0, "add", 0, 1)
    cluster.sync(0, 1)
    cluster.write(1, "remove", 0, 1)  # observed r0's add
    cluster.write(0, "add", 0, 1)  # concurrent re-add: a tag r1 never saw
    cluster.sync(0, 1)
    cluster.sync(1, 0)
    for doc in cluster.docs:
        assert "a" in doc.state.tags  # type: ignore[attr-defined]
    assert expected_set(cluster.ops) == {"a"}
