"""Log: append only, every entry once, causal and identical order everywhere."""

from __future__ import annotations

from typing import Any

import pytest
from pycrdt import Array, Doc

from crdtstate import Log, LogEntry, Schema, Stamp, ValidationError


def sync(*docs: Any) -> None:
    for a in docs:
        for b in docs:
            if a is not b:
                b.apply_update(a.export_update(b.state_vector()))


def test_append_entries_len_and_iteration(make_doc: Any) -> None:
    memory = make_doc("a").state.memory
    assert memory.value == [] and len(memory) == 0 and memory.entries() == []
    first = memory.append({"n": 1})
    second = memory.append({"n": 2})
    assert memory.value == [{"n": 1}, {"n": 2}] == list(memory)
    assert len(memory) == 2
    assert memory.entries() == [LogEntry({"n": 1}, first), LogEntry({"n": 2}, second)]
    assert first < second and isinstance(first, Stamp)


def test_concurrent_appends_get_one_order_everywhere(make_doc: Any) -> None:
    docs = [make_doc(name) for name in "abc"]
    for i, doc in enumerate(docs):
        for k in range(3):
            doc.state.memory.append({"by": i, "k": k})
    sync(*docs)
    orders = [doc.state.memory.value for doc in docs]
    assert orders[0] == orders[1] == orders[2]
    assert len(orders[0]) == 9
    for i in range(3):
        mine = [e["k"] for e in orders[0] if e["by"] == i]
        assert mine == [0, 1, 2]


def test_an_append_comes_after_everything_its_writer_had_seen(make_doc: Any) -> None:
    a, b = make_doc("a"), make_doc("b")
    a.state.memory.append({"cause": True})
    sync(a, b)
    b.state.memory.append({"effect": True})
    a.state.memory.append({"concurrent": True})
    sync(a, b)
    log = a.state.memory.value
    assert log == b.state.memory.value
    assert log.index({"cause": True}) < log.index({"effect": True})


def test_bad_entries_are_refused_naming_the_field(make_doc: Any) -> None:
    doc = make_doc("a")
    for bad in (5, "text", [1], {"x": float("inf")}, {"x": "\ud800"}, {"x": object()}):
        with pytest.raises(ValidationError) as info:
            doc.state.memory.append(bad)
        assert info.value.field == "memory"
    assert doc.state.memory.value == []


def test_an_entry_over_the_size_limit_is_refused(make_doc: Any) -> None:
    doc = make_doc("a")
    with pytest.raises(ValidationError, match="bytes encoded"):
        doc.state.memory.append({"blob": "x" * (1 << 20)})


class Notes(Schema):
    notes = Log(dict)


def test_entries_keep_their_own_stamps_when_foreign_entries_are_skipped(make_doc: Any) -> None:
    raw: Doc[Any] = Doc(client_id=800)
    items = raw.get("notes", type=Array)
    items.append('[1,0,"w",5]')  # well formed, but 5 is not a dict
    items.append('[2,0,"w",{"ok":1}]')
    items.append("not json")
    items.append('[3,0,"w",{"ok":2}]')
    doc = make_doc("a", schema=Notes)
    doc.apply_update(raw.get_update())
    assert doc.state.notes.value == [{"ok": 1}, {"ok": 2}]
    assert len(doc.state.notes) == 2
    assert doc.state.notes.entries() == [
        LogEntry({"ok": 1}, Stamp(2, 0, "w")),
        LogEntry({"ok": 2}, Stamp(3, 0, "w")),
    ]
    details = sorted(v.detail for v in doc.violations())
    assert len(details) == 2
    assert details[0].startswith("entry 0 does not fit") and "foreign log entry at 2" in details[1]
    stamp = doc.state.notes.append({"ok": 3})
    assert doc.state.notes.entries()[-1] == LogEntry({"ok": 3}, stamp)


def test_long_logs_are_kept_in_chunks_and_read_in_order(
    make_doc: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crdtstate.crdt.log as log_module

    monkeypatch.setattr(log_module, "CHUNK_ENTRIES", 4)
    a, b = make_doc("a"), make_doc("b")
    for k in range(10):
        a.state.memory.append({"a": k})
    sync(a, b)
    for k in range(6):  # both extend the same last chunk and open new ones, concurrently
        a.state.memory.append({"a2": k})
        b.state.memory.append({"b": k})
    sync(a, b)
    log = a.state.memory.value
    assert log == b.state.memory.value and len(log) == 22
    assert [e["a"] for e in log[:10]] == list(range(10))
    assert [e["b"] for e in log if "b" in e] == list(range(6))
    chunks = list(a.root_array("memory"))
    assert all(isinstance(c, Array) and 1 <= len(c) <= 4 + 6 for c in chunks)
    assert len(chunks) >= 22 // 4


def test_entries_a_plain_yjs_client_appends_to_the_root_are_read(make_doc: Any) -> None:
    doc = make_doc("a")
    doc.state.memory.append({"n": 1})
    raw: Doc[Any] = Doc(client_id=801)
    raw.apply_update(doc.export_update())
    raw.get("memory", type=Array).append('[1,0,"js",{"n":2}]')
    doc.apply_update(raw.get_update(doc.state_vector()))
    assert doc.state.memory.value == [{"n": 1}, {"n": 2}]
    doc.state.memory.append({"n": 3})  # after a plain entry: opens a new chunk
    assert doc.state.memory.value == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert doc.violations() == []
