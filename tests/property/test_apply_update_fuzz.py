"""Bad input to the merge API: clear errors, no crash, nothing half-applied.

Bytes offered to ``apply_update`` (garbage, every prefix of a real update, bit flips,
splices, oversized, other types) either merge, because some mutations are still valid
updates, or raise ``InvalidUpdate``; on ``InvalidUpdate`` the state vector, the value, the
digest and the store (outbox, tail) are exactly as before. Whatever happened, the replica
keeps working. A raw pycrdt doc writing foreign shapes into the fields' roots (wrong value
types, text that is not JSON, nested shared types, a map's list half) is read as defaults
with the bad entries skipped, reported by ``violations()``, and never raises.
"""

from __future__ import annotations

import functools
import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text

from crdtstate import (
    GCounter,
    HybridClock,
    InvalidUpdate,
    Log,
    LWWMap,
    LWWRegister,
    ORSet,
    PNCounter,
    Replica,
    Schema,
)
from crdtstate.doc import MAX_UPDATE_BYTES
from crdtstate.store import MemoryStore

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Target(Schema):
    flag = LWWRegister(bool, default=False)
    title = LWWRegister(str, default="none")
    hits = GCounter()
    karma = PNCounter()
    followers = ORSet(str)
    config = LWWMap(int)
    memory = Log(dict)


MAP_FIELDS = ("flag", "title", "hits", "karma", "followers", "config")
DEFAULTS = {
    "flag": False,
    "title": "none",
    "hits": 0,
    "karma": 0,
    "followers": [],
    "config": {},
    "memory": [],
}


@functools.cache
def real_updates() -> tuple[bytes, ...]:
    """A full state, one write's update, and a state-vector diff, from a busy replica."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Replica.open(tmp, "fuzz", Target, store=MemoryStore(), client_id=7)
        try:
            s: Any = source.state
            for i in range(4):
                s.flag.set(i % 2 == 0)
                s.title.set(f"title {i}")
                s.hits.inc(i + 1)
                s.karma.dec(2)
                s.followers.add(f"user{i}")
                s.config.set(f"k{i}", i)
                s.memory.append({"i": i, "text": "é" * i})
            s.followers.remove("user1")
            s.config.delete("k2")
            middle = source.state_vector()
            s.memory.append({"last": True})
            one_write = source.store.outbox(limit=1000)[-1].update
            return (source.export_update(), one_write, source.export_update(middle))
        finally:
            source.close()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-replica")


@pytest.fixture
def replica(data_dir: Path) -> Iterator[Replica[Target]]:
    """A replica over a memory store with a few writes of its own."""
    r = Replica.open(data_dir, "fuzz", Target, store=MemoryStore(), client_id=99)
    s: Any = r.state
    s.title.set("mine")
    s.karma.inc(5)
    s.followers.add("me")
    s.memory.append({"mine": 1})
    try:
        yield r
    finally:
        r.close()


def observe(r: Replica[Any]) -> tuple[Any, ...]:
    return (
        r.state_vector(),
        r.to_dict(),
        r.digest(),
        r.outbox_len(),
        r.store.tail_stats(),
        [(e.op_id, e.op) for e in r.store.outbox(limit=10_000)],
    )


def offer(r: Replica[Any], data: Any) -> bool:
    """Apply ``data``; check the outcome is a merge or a clean refusal. True if merged."""
    before = observe(r)
    tail_before = r.store.tail_stats()[0]
    try:
        r.apply_update(data)
    except InvalidUpdate as exc:
        assert str(exc), "InvalidUpdate without a message"
        assert observe(r) == before, "a refused update changed something"
        merged = False
    else:
        assert r.store.tail_stats()[0] == tail_before + 1, "merged update not in the tail"
        assert r.outbox_len() == before[3], "a remote update entered the outbox"
        merged = True
    keeps_working(r)
    return merged


def keeps_working(r: Replica[Any]) -> None:
    s: Any = r.state
    n = len(s.memory)
    s.memory.append({"probe": n})
    assert {"probe": n} in s.memory.value
    s.hits.inc()
    assert s.hits.value >= 1
    r.digest()
    r.violations()


@FUZZ
@given(data=st.binary(max_size=400))
def test_garbage_bytes_merge_or_are_refused(replica: Replica[Target], data: bytes) -> None:
    offer(replica, data)


@FUZZ
@given(
    which=st.integers(0, 2),
    flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 7)), min_size=1, max_size=4),
)
def test_bit_flipped_updates_merge_or_are_refused(
    replica: Replica[Target], which: int, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(real_updates()[which])
    for position, bit in flips:
        data[position % len(data)] ^= 1 << bit
    offer(replica, bytes(data))


@FUZZ
@given(
    which=st.integers(0, 2),
    start=st.integers(0, 1 << 16),
    cut=st.integers(0, 64),
    insert=st.binary(max_size=16),
)
def test_spliced_updates_merge_or_are_refused(
    replica: Replica[Target], which: int, start: int, cut: int, insert: bytes
) -> None:
    data = real_updates()[which]
    start %= len(data)
    offer(replica, data[:start] + insert + data[start + cut :])


def test_every_prefix_of_a_real_update_merges_or_is_refused(data_dir: Path) -> None:
    r = Replica.open(data_dir, "fuzz", Target, store=MemoryStore(), client_id=98)
    try:
        for update in real_updates():
            for end in range(len(update)):  # bounded: about 1700 prefixes in all
                before = (r.state_vector(), r.digest(), r.store.tail_stats(), r.outbox_len())
                try:
                    r.apply_update(update[:end])
                except InvalidUpdate:
                    after = (r.state_vector(), r.digest(), r.store.tail_stats(), r.outbox_len())
                    assert after == before, f"prefix of {end} bytes changed the replica"
        keeps_working(r)
        r.apply_update(real_updates()[0])  # the whole update still merges afterwards
        s: Any = r.state
        assert s.title.value == "title 3"
        assert "user1" not in s.followers and "user3" in s.followers
    finally:
        r.close()


def test_oversized_update_is_refused_by_size(replica: Replica[Target]) -> None:
    before = observe(replica)
    with pytest.raises(InvalidUpdate, match=r"exceeds"):
        replica.apply_update(bytes(MAX_UPDATE_BYTES + 1))
    assert observe(replica) == before


@pytest.mark.parametrize(
    "value",
    [None, "text", 42, 1.5, [1, 2], {"update": b"x"}, object(), b"", b"\x00", bytearray(b"\x01")],
    ids=lambda v: type(v).__name__ + (f"-{len(v)}" if isinstance(v, bytes | bytearray) else ""),
)
def test_wrong_types_and_tiny_buffers_are_refused(replica: Replica[Target], value: Any) -> None:
    before = observe(replica)
    with pytest.raises(InvalidUpdate) as info:
        replica.apply_update(value)
    assert type(value).__name__ in str(info.value) or "truncated" in str(info.value)
    assert observe(replica) == before
    keeps_working(replica)


def test_buffer_types_carrying_a_real_update_merge(replica: Replica[Target]) -> None:
    assert offer(replica, bytearray(real_updates()[0]))
    assert offer(replica, memoryview(real_updates()[1]))
    assert replica.state.title.value in ("title 3", "mine")


def test_refused_update_leaves_a_sqlite_store_readable(tmp_path: Path) -> None:
    r = Replica.open(tmp_path, "fuzz", Target, durability="sync")
    try:
        r.state.title.set("kept")
        bad_inputs: list[Any] = [b"\xff" * 40, real_updates()[0][:-3], b"\x00\x01\x02", "text"]
        for bad in bad_inputs:
            before = observe(r)
            with pytest.raises(InvalidUpdate):
                r.apply_update(bad)
            assert observe(r) == before
        expected = r.to_dict()
    finally:
        r.close()
    again = Replica.open(tmp_path, "fuzz", Target)
    try:
        assert again.to_dict() == expected
        assert again.violations() == []
    finally:
        again.close()


@FUZZ
@given(sv=st.binary(max_size=64))
def test_garbage_state_vector_gives_a_diff_or_invalid_update(
    replica: Replica[Target], sv: bytes
) -> None:
    try:
        diff = replica.export_update(sv)
    except InvalidUpdate as exc:
        assert "state vector" in str(exc)
    else:
        assert isinstance(diff, bytes)
    keeps_working(replica)


# -- foreign shapes --------------------------------------------------------------------------

SAFE_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
NOT_JSON = SAFE_TEXT.map(lambda t: "not json: " + t)
PLAIN_VALUES = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.binary(max_size=8),
    st.dictionaries(SAFE_TEXT, st.integers(0, 9), max_size=3),
    st.lists(st.integers(0, 9), max_size=3),
)
SHARED_VALUES = st.sampled_from(["map", "array", "text"])


def shared(kind: str) -> Any:
    if kind == "map":
        return Map({"nested": "1"})
    if kind == "array":
        return Array(["1", "2"])
    return Text("some text")


# Slot values that no field kind stored in a map accepts.
FOREIGN_SLOT = st.one_of(
    PLAIN_VALUES,
    SHARED_VALUES,
    NOT_JSON,
    st.sampled_from(["[]", "{}", '"x"', "[1]", "[1,2,3,4]", '["a",0,1]', "[1.5,0,1]"]),
)
KEYS = st.one_of(SAFE_TEXT, st.just("fz"))


def slot_garbage(field: str) -> st.SearchStrategy[tuple[str, Any]]:
    """(key, value) pairs that ``field`` must report as foreign."""
    if field == "flag":
        typed = st.sampled_from(['[1,0,"not a bool"]', "5"])
    elif field == "title":
        typed = st.sampled_from(["[1,0,5]", "[1,0]", "5"])
    elif field in ("hits", "karma"):
        typed = st.sampled_from(['"5"', "-1", "1.5", "true"])
    elif field == "followers":
        return st.one_of(
            SAFE_TEXT.filter(lambda k: "\x1f" not in k and not k.startswith("\x1e")),
            st.sampled_from(['"x"\x1f', "not json\x1ftag", "5\x1ftag", "[1]\x1ftag"]),
        ).map(lambda k: (k, "[1,0]"))
    else:  # config
        return st.one_of(
            st.tuples(SAFE_TEXT.filter(lambda k: "\x1f" not in k), st.just("[1,0,1]")),
            st.tuples(st.just("key\x1f"), st.just("[1,0,1]")),
            st.tuples(st.just("key\x1ffz"), st.one_of(FOREIGN_SLOT, st.just('[1,0,"s"]'))),
        )
    if field == "karma":
        return st.one_of(
            st.tuples(st.sampled_from(["+fz", "-fz", "+", "-"]), st.one_of(FOREIGN_SLOT, typed)),
            st.tuples(st.sampled_from(["fz", "*fz", ""]), st.just("5")),
        )
    return st.tuples(KEYS, st.one_of(FOREIGN_SLOT, typed))


LOG_GARBAGE = st.one_of(
    PLAIN_VALUES,
    SHARED_VALUES,
    NOT_JSON,
    st.sampled_from(['[1,0,"w"]', '[1,0,5,{"a":1}]', '[1,0,"w",5]', '[true,0,"w",{}]']),
)

garbage_plans = st.fixed_dictionaries(
    {},
    optional={
        **{f: st.lists(slot_garbage(f), min_size=1, max_size=3) for f in MAP_FIELDS},
        "memory": st.lists(LOG_GARBAGE, min_size=1, max_size=3),
        "list_half": st.lists(st.sampled_from(MAP_FIELDS), min_size=1, max_size=2),
        "map_half": st.just(True),
        "schema": st.lists(
            st.sampled_from(["not json", '{"kind":"nope"}', "[1]", '{"kind":"lww","type":"x"}']),
            min_size=1,
            max_size=2,
        ),
    },
)


def write_garbage(plan: dict[str, Any]) -> tuple[bytes, set[str]]:
    """Build a raw doc from ``plan``; returns its update and the fields it spoils."""
    raw: Doc[Any] = Doc(client_id=4242)
    spoiled: set[str] = set()
    with raw.transaction():
        for name in MAP_FIELDS:
            for key, value in plan.get(name, ()):
                root = raw.get(name, type=Map)
                root[key] = shared(value) if value in ("map", "array", "text") else value
                spoiled.add(name)
        for value in plan.get("memory", ()):
            root_array = raw.get("memory", type=Array)
            root_array.append(shared(value) if value in ("map", "array", "text") else value)
            spoiled.add("memory")
        for name in plan.get("list_half", ()):
            raw.get(name, type=Array).append("list item in a map root")
            spoiled.add(name)
        if plan.get("map_half"):
            raw.get("memory", type=Map)["key"] = '[1,0,"w",{}]'
            spoiled.add("memory")
        for i, text in enumerate(plan.get("schema", ())):
            raw.get("_schema", type=Map)[f"bogus{i}"] = text
    return raw.get_update(), spoiled


def read_everything(r: Replica[Any]) -> dict[str, Any]:
    s: Any = r.state
    values = {
        "flag": s.flag.value,
        "title": s.title.value,
        "hits": s.hits.value,
        "karma": s.karma.value,
        "followers": s.followers.value,
        "config": s.config.value,
        "memory": s.memory.value,
    }
    assert isinstance(values["flag"], bool) and isinstance(values["title"], str)
    assert isinstance(values["hits"], int) and isinstance(values["karma"], int)
    s.flag.stamp, s.hits.by_replica(), s.karma.by_replica(), s.config.keys()
    s.memory.entries(), len(s.memory), len(s.followers), "x" in s.followers
    s.followers.tags("x"), s.config.get("k"), s.config.stamp("k"), len(s.config)
    r.to_dict(), r.digest(), r.doc.declared(), r.doc.schema_meta()
    return values


@settings(max_examples=120, deadline=None)
@given(plan=garbage_plans)
def test_foreign_shapes_read_as_defaults_and_are_reported(plan: dict[str, Any]) -> None:
    assume(plan)
    update, spoiled = write_garbage(plan)
    with tempfile.TemporaryDirectory() as tmp:
        r = Replica.open(tmp, "fuzz", Target, store=MemoryStore(), replica_id="fz", client_id=5)
        try:
            r.apply_update(update)
            assert read_everything(r) == DEFAULTS
            reported = {v.field for v in r.violations()}
            assert spoiled <= reported, f"unreported: {spoiled - reported}"
            if plan.get("schema"):
                assert {f"bogus{i}" for i in range(len(plan["schema"]))} & reported
            # Every field still takes writes, and reads them back over the garbage.
            s: Any = r.state
            s.flag.set(True)
            s.title.set("fine")
            s.hits.inc(2)
            s.karma.dec(1)
            s.followers.add("ok")
            s.config.set("k", 1)
            s.memory.append({"ok": True})
            assert (s.flag.value, s.title.value, s.hits.value, s.karma.value) == (
                True,
                "fine",
                2,
                -1,
            )
            assert s.followers.value == ["ok"] and s.config.value == {"k": 1}
            assert s.memory.value == [{"ok": True}]
            assert [e.value for e in s.memory.entries()] == [{"ok": True}]
        finally:
            r.close()


def test_a_schema_free_replica_reads_garbage_without_raising(tmp_path: Path) -> None:
    update, _ = write_garbage(
        {
            "flag": [("fz", "not json")],
            "memory": [5, '[1,0,"w",{"a":1}]'],
            "schema": ["not json", '{"kind":"nope"}'],
            "list_half": ["hits"],
        }
    )
    typed = Replica.open(tmp_path / "typed", "fuzz", Target, store=MemoryStore())
    try:
        typed.state.title.set("declared")
        declared = typed.export_update()
    finally:
        typed.close()
    cli: Replica[Any] = Replica.open(tmp_path / "cli", "fuzz", None, store=MemoryStore())
    try:
        cli.apply_update(declared)
        cli.apply_update(update)
        assert cli.field("title").value == "declared"  # type: ignore[attr-defined]
        assert cli.to_dict()["memory"] == [{"a": 1}]
        fields = {v.field for v in cli.violations()}
        assert {"flag", "memory", "hits", "bogus1"} <= fields
    finally:
        cli.close()


@pytest.mark.parametrize("count", [1, 3])
def test_clock_is_untouched_by_foreign_register_slots(tmp_path: Path, count: int) -> None:
    """A foreign slot with an enormous stamp is skipped: it neither wins nor drags the HLC."""
    raw: Doc[Any] = Doc(client_id=77)
    for i in range(count):
        raw.get("title", type=Map)[f"evil{i}"] = f"[{2**62},0,5]"  # wrong type for a str
    clock_now = itertools.count(1_000)
    r = Replica.open(
        tmp_path,
        "fuzz",
        Target,
        store=MemoryStore(),
        clock=HybridClock(now_ms=lambda: next(clock_now)),
    )
    try:
        r.apply_update(raw.get_update())
        stamp = r.state.title.set("mine")
        assert stamp.wall_ms < 2**62
        assert r.state.title.value == "mine"
        assert len([v for v in r.violations() if v.field == "title"]) == count
    finally:
        r.close()
