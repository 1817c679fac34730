"""NamespaceDoc: the one write path, remote merges, schema in the doc, change events."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import pytest
from pycrdt import Array, Doc, Map

import crdtstate.doc as doc_module
from crdtstate import (
    Change,
    GCounter,
    HybridClock,
    InvalidUpdate,
    LWWRegister,
    NamespaceDoc,
    Schema,
    SchemaError,
    StoreClosedError,
    UnknownFieldError,
)
from crdtstate.doc import SCHEMA_META_KEY, SCHEMA_ROOT


def test_every_write_hands_one_update_and_its_operation_to_the_recorder(make_doc: Any) -> None:
    doc = make_doc("a")
    base = doc.export_update()  # the schema declaration
    recorded: list[tuple[bytes, dict[str, Any]]] = []
    doc.recorder = lambda update, op: recorded.append((update, op))
    s = doc.state
    s.flag.set(True)
    s.hits.inc(3)
    s.karma.dec(2)
    tag = s.followers.add("bob")
    s.followers.remove("bob")
    s.config.set("k", 1)
    s.config.delete("k")
    s.memory.append({"m": 1})
    assert [op for _, op in recorded] == [
        {"field": "flag", "op": "set", "value": True},
        {"field": "hits", "op": "inc", "n": 3},
        {"field": "karma", "op": "dec", "n": 2},
        {"field": "followers", "op": "add", "value": "bob", "tag": tag, "replaced": []},
        {"field": "followers", "op": "remove", "value": "bob", "tags": [tag]},
        {"field": "config", "op": "set", "key": "k", "value": 1},
        {"field": "config", "op": "delete", "key": "k"},
        {"field": "memory", "op": "append", "value": {"m": 1}},
    ]
    # The declaration plus the recorded updates rebuild the same state elsewhere.
    replay = NamespaceDoc("b", None, client_id=50, clock=HybridClock())
    replay.apply_update(base)
    for update, _ in recorded:
        replay.apply_update(update)
    assert replay.state_vector() == doc.state_vector()
    assert replay.to_dict() == doc.to_dict()
    assert replay.digest() == doc.digest()


def test_remote_updates_are_not_recorded(make_doc: Any) -> None:
    a, b = make_doc("a"), make_doc("b")
    recorded: list[bytes] = []
    b.recorder = lambda update, _op: recorded.append(update)
    a.state.hits.inc()
    b.apply_update(a.export_update())
    assert recorded == []
    b.state.hits.inc()
    assert len(recorded) == 1


def test_write_guard_refuses_before_the_doc_changes(make_doc: Any) -> None:
    doc = make_doc("a")
    before = doc.export_update()

    def refuse() -> None:
        raise StoreClosedError("closed")

    doc.write_guard = refuse
    with pytest.raises(StoreClosedError):
        doc.state.title.set("never")
    with pytest.raises(StoreClosedError):
        doc.state.memory.append({"never": 1})
    assert doc.export_update() == before
    assert doc.state.title.value == ""


def test_a_failing_recorder_does_not_leave_a_stale_cached_value(make_doc: Any) -> None:
    doc = make_doc("a")
    doc.state.title.set("first")

    def broken(_update: bytes, _op: dict[str, Any]) -> None:
        raise OSError("disk full")

    doc.recorder = broken
    with pytest.raises(OSError, match="disk full"):
        doc.state.title.set("second")
    truth = NamespaceDoc("z", type(doc.state), client_id=9, clock=HybridClock())
    truth.apply_update(doc.export_update())
    assert doc.state.title.value == truth.state.title.value  # type: ignore[attr-defined]


def test_subscribers_see_local_and_remote_changes_with_old_and_new(make_doc: Any) -> None:
    a, b = make_doc("a"), make_doc("b")
    seen: list[Change] = []
    unsubscribe = a.subscribe("hits", seen.append)
    a.state.hits.inc(2)
    b.state.hits.inc(5)
    a.apply_update(b.export_update())
    b.state.title.set("other field")
    a.apply_update(b.export_update())  # hits unchanged: no event
    assert seen == [Change("hits", 0, 2, local=True), Change("hits", 2, 7, local=False)]
    unsubscribe()
    unsubscribe()  # twice is harmless
    a.state.hits.inc()
    assert len(seen) == 2
    assert not a.has_subscribers("hits")


def test_a_failing_callback_is_logged_and_the_write_stands(
    make_doc: Any, caplog: pytest.LogCaptureFixture
) -> None:
    doc = make_doc("a")
    calls: list[Change] = []

    def broken(_change: Change) -> None:
        raise RuntimeError("subscriber bug")

    doc.subscribe("title", broken)
    doc.subscribe("title", calls.append)
    with caplog.at_level(logging.ERROR, logger="crdtstate"):
        doc.state.title.set("x")
    assert doc.state.title.value == "x"
    assert [c.new for c in calls] == ["x"]
    assert "change callback failed for title" in caplog.text


def test_subscribing_to_an_unknown_field_names_the_known_ones(make_doc: Any) -> None:
    doc = make_doc("a")
    with pytest.raises(UnknownFieldError, match=r"unknown field 'nope' \(fields: config, "):
        doc.subscribe("nope", lambda _c: None)
    with pytest.raises(KeyError):  # also a KeyError, for callers treating fields as a mapping
        doc.field("nope")


def test_the_schema_descriptor_is_kept_in_the_doc(make_doc: Any, all_kinds: Any) -> None:
    doc = make_doc("a")
    assert doc.declared() == all_kinds.descriptor()["fields"]
    assert doc.schema_meta() == {"name": "AllKinds", "version": 1}
    assert doc.missing_declarations() == {}
    raw = doc.root_map(SCHEMA_ROOT)
    assert json.loads(raw["hits"]) == {"kind": "gcounter", "type": "int", "default": 0}
    assert SCHEMA_META_KEY in raw


def test_declaring_at_run_time_is_idempotent(make_doc: Any) -> None:
    doc = make_doc("cli", schema=None)
    field = doc.declare("score", {"kind": "pncounter", "type": "int"})
    sv = doc.state_vector()
    assert doc.declare("score", {"kind": "pncounter", "type": "int"}) is field
    assert doc.state_vector() == sv  # nothing written the second time
    field.inc(4)
    assert doc.to_dict() == {"score": 4}


def test_declaring_another_kind_or_type_is_refused(make_doc: Any) -> None:
    doc = make_doc("a")
    with pytest.raises(SchemaError, match=r"'hits' is already declared as gcounter:int"):
        doc.declare("hits", {"kind": "lww", "type": "int"})
    with pytest.raises(SchemaError, match=r"already declared as lww:str, not lww:int"):
        doc.declare("title", {"kind": "lww", "type": "int"})
    with pytest.raises(SchemaError, match="unknown kind"):
        doc.declare("new", {"kind": "counter"})
    assert doc.declared()["title"]["type"] == "str"


class Defaults(Schema):
    level = LWWRegister(int, default=7)


def test_declaring_a_typed_field_again_keeps_its_default(make_doc: Any) -> None:
    typed = make_doc("a", schema=Defaults)
    cli = make_doc("cli", schema=None)
    cli.apply_update(typed.export_update())
    cli.declare("level", {"kind": "lww", "type": "int"})  # the CLI's default would be 0
    assert cli.field("level").value == 7
    typed.apply_update(cli.export_update())
    assert typed.declared()["level"]["default"] == 7


def test_concurrent_equal_declarations_converge(make_doc: Any) -> None:
    a, b = make_doc("a", schema=None), make_doc("b", schema=None)
    a.declare("score", {"kind": "gcounter", "type": "int"}).inc(1)
    b.declare("score", {"kind": "gcounter", "type": "int"}).inc(2)
    a.apply_update(b.export_update())
    b.apply_update(a.export_update())
    assert a.to_dict() == b.to_dict() == {"score": 3}
    assert a.digest() == b.digest()


def test_a_schema_free_doc_binds_fields_declared_by_others(make_doc: Any) -> None:
    typed, cli = make_doc("a"), make_doc("cli", schema=None)
    typed.state.karma.inc(3)
    typed.state.followers.add("bob")
    cli.apply_update(typed.export_update())
    assert cli.field("karma").value == 3
    assert cli.field("followers").value == ["bob"]
    assert cli.to_dict() == typed.to_dict()
    assert cli.digest() == typed.digest()
    cli.field("karma").dec(1)
    typed.apply_update(cli.export_update())
    assert typed.state.karma.value == 2


class Rival(Schema):
    hits = LWWRegister(str, default="")


def test_a_field_declared_as_another_kind_is_a_violation(make_doc: Any) -> None:
    doc = make_doc("a")
    rival = make_doc("b", schema=Rival)
    doc.apply_update(rival.export_update())
    problems = [v for v in doc.violations() if v.field == "hits"]
    assert problems and "schema says gcounter:int" in problems[0].detail


def test_to_dict_and_digest_are_canonical(make_doc: Any) -> None:
    doc = make_doc("a")
    doc.state.config.set("b", 2)
    doc.state.config.set("a", 1)
    doc.state.memory.append({"z": 1, "a": [1, "é"]})
    data = doc.to_dict()
    assert list(data) == sorted(data)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert doc.digest() == hashlib.sha256(canonical.encode()).hexdigest()
    data["hits"] = 99  # a copy: changing it changes nothing
    assert doc.to_dict()["hits"] == 0


def test_export_since_a_state_vector_sends_only_the_difference(make_doc: Any) -> None:
    a, b = make_doc("a"), make_doc("b")
    for i in range(20):
        a.state.memory.append({"i": i})
    b.apply_update(a.export_update())
    a.state.memory.append({"i": "new"})
    diff = a.export_update(b.state_vector())
    assert len(diff) < len(a.export_update()) / 4
    b.apply_update(diff)
    assert b.state.memory.value == a.state.memory.value
    with pytest.raises(InvalidUpdate, match="state vector"):
        a.export_update(b"\xff\xff\xff")


def test_updates_arriving_out_of_order_still_converge(make_doc: Any) -> None:
    """yrs 0.27+ loses the middle update of [a=x], [a=y], [c=z] delivered as 2, 3, 1."""
    a, b = make_doc("a"), make_doc("b")
    b.apply_update(a.export_update())
    updates: list[bytes] = []
    a.recorder = lambda update, _op: updates.append(update)
    a.state.title.set("x")
    a.state.title.set("y")
    a.state.hits.inc()
    b.apply_update(updates[1])
    b.apply_update(updates[2])
    assert not b.settled  # items wait for the first update
    b.apply_update(updates[0])
    assert b.settled
    assert b.digest() == a.digest()
    assert b.state.title.value == "y" and b.state.hits.value == 1


def test_a_joiners_catch_up_is_decoded_once_even_after_local_writes(
    make_doc: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica declares its schema (a local write) before the relay's snapshot arrives:
    the snapshot, a full state and the first update from elsewhere, is applied without the
    integration check that would decode it a second time; later ones are checked."""
    a, b = make_doc("a"), make_doc("b")  # both wrote their schema declarations
    for i in range(20):
        a.state.memory.append({"i": i})
    checks: list[bytes] = []
    real = doc_module.get_update

    def counting(update: bytes, state: bytes) -> bytes:
        checks.append(update)
        return real(update, state)

    monkeypatch.setattr(doc_module, "get_update", counting)
    b.state.hits.inc()  # more local writes: still fresh
    full = a.export_update()
    b.apply_update(full, full_state=True)
    assert checks == []
    assert b.settled and b.state.memory.value == a.state.memory.value
    a.state.hits.inc()
    diff = a.export_update(b.state_vector())
    b.apply_update(diff)
    assert checks == [diff]
    assert b.state.hits.value == 2


def test_a_first_partial_update_is_checked_and_held_until_it_integrates(make_doc: Any) -> None:
    """Only a full state skips the check: a partial first update (here the second of two)
    can arrive ahead of what it depends on and must be kept and applied again."""
    a, b = make_doc("a"), make_doc("b")
    first, second = [], []
    a.recorder = lambda update, op: (second if first else first).append(update)
    a.state.title.set("x")
    a.state.title.set("y")
    b.apply_update(second[0])
    assert not b.settled
    b.apply_update(a.export_update())  # everything, the declarations included
    assert b.settled and b.state.title.value == "y"
    assert b.digest() == a.digest()


def test_foreign_content_in_the_other_half_of_a_root_is_reported(make_doc: Any) -> None:
    raw: Doc[Any] = Doc(client_id=900)
    raw.get("title", type=Array).append("an array item in a map field")
    raw.get("memory", type=Map)["k"] = "a map entry in a log field"
    raw.get(SCHEMA_ROOT, type=Map)["junk"] = "not json"
    doc = make_doc("a")
    doc.apply_update(raw.get_update())
    assert doc.state.title.value == "" and doc.state.memory.value == []
    fields = {v.field for v in doc.violations()}
    assert {"title", "memory", "junk"} <= fields


class Counter(Schema):
    n = GCounter()


def test_notify_false_skips_subscribers(make_doc: Any) -> None:
    a, b = make_doc("a", schema=Counter), make_doc("b", schema=Counter)
    seen: list[Change] = []
    b.subscribe("n", seen.append)
    a.state.n.inc()
    b.apply_update(a.export_update(), notify=False)
    assert seen == [] and b.state.n.value == 1


def _recorded_updates(make_doc: Any) -> tuple[list[bytes], str]:
    """Updates of three writers interleaved as one replica would have stored them."""
    writers = [make_doc(name) for name in "abc"]
    stored = [doc.export_update() for doc in writers]  # their schema declarations
    for doc in writers:
        doc.recorder = lambda update, op: stored.append(update)
    for i in range(40):
        s: Any = writers[i % 3].state
        s.hits.inc(i + 1)
        s.followers.add(f"f{i % 5}")
        if i % 4 == 0:
            s.followers.remove(f"f{(i + 1) % 5}")
        s.config.set(f"k{i % 3}", i)
        s.memory.append({"i": i})
        s.title.set(f"t{i}")
    for a in writers:
        for b in writers:
            if a is not b:
                b.apply_update(a.export_update(b.state_vector()))
    assert len({doc.digest() for doc in writers}) == 1
    return stored, writers[0].digest()


def test_restore_merging_the_tail_gives_the_state_of_applying_it_update_by_update(
    make_doc: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored, expected = _recorded_updates(make_doc)
    one_by_one = make_doc("r1")
    for update in stored:
        one_by_one.apply_update(update)
    merged = make_doc("r2")
    merged.restore(None, stored)
    monkeypatch.setattr(doc_module, "RESTORE_GROUP_BYTES", 200)  # many small groups
    grouped = make_doc("r3")
    grouped.restore(stored[0], stored[1:])
    assert one_by_one.digest() == merged.digest() == grouped.digest() == expected
    assert one_by_one.settled and merged.settled and grouped.settled


def test_restore_names_an_unreadable_stored_update(make_doc: Any) -> None:
    stored, _ = _recorded_updates(make_doc)
    doc = make_doc("r")
    with pytest.raises(InvalidUpdate, match="cannot decode update"):
        doc.restore(None, [*stored[:5], b"\x01\x02garbage", *stored[5:]])
