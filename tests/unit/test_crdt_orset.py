"""ORSet: add wins over a concurrent remove, removes delete what they observed."""

from __future__ import annotations

from typing import Any

import pytest
from pycrdt import Doc, Map

from crdtstate import ORSet, Schema, ValidationError, _codec


def sync(*docs: Any) -> None:
    for a in docs:
        for b in docs:
            if a is not b:
                b.apply_update(a.export_update(b.state_vector()))


def test_add_remove_contains_and_len(make_doc: Any) -> None:
    s = make_doc("a").state.followers
    assert s.value == [] and len(s) == 0 and "bob" not in s
    tag = s.add("bob")
    s.add("alice")
    assert s.value == ["alice", "bob"] and len(s) == 2 and "bob" in s
    assert s.tags("bob") == [tag]
    assert list(s) == ["alice", "bob"]
    assert s.remove("bob") is True
    assert "bob" not in s and s.tags("bob") == []
    assert s.remove("bob") is False  # absent: nothing to remove


def test_re_adding_replaces_the_observed_tags_with_one(make_doc: Any) -> None:
    a, b = make_doc("a"), make_doc("b")
    a.state.followers.add("bob")
    b.state.followers.add("bob")
    sync(a, b)
    assert len(a.state.followers.tags("bob")) == 2
    new_tag = a.state.followers.add("bob")
    assert a.state.followers.tags("bob") == [new_tag]
    assert len(a.root_map("followers")) == 1


def test_tags_are_unique_across_replicas_and_processes(make_doc: Any) -> None:
    docs = [make_doc("a"), make_doc("a", client_id=77), make_doc("b")]
    tags = [doc.state.followers.add(x) for doc in docs for x in ("p", "q")]
    assert len(set(tags)) == len(tags)


def test_concurrent_add_wins_over_remove(make_doc: Any) -> None:
    a, b = make_doc("a"), make_doc("b")
    a.state.followers.add("bob")
    sync(a, b)
    b.state.followers.remove("bob")  # saw a's add
    a.state.followers.add("bob")  # concurrently: a tag b never saw
    sync(a, b)
    assert "bob" in a.state.followers and "bob" in b.state.followers


def test_remove_after_observing_every_add_wins(make_doc: Any) -> None:
    a, b = make_doc("a"), make_doc("b")
    a.state.followers.add("bob")
    b.state.followers.add("bob")
    sync(a, b)
    a.state.followers.remove("bob")
    sync(a, b)
    assert "bob" not in a.state.followers and "bob" not in b.state.followers


def test_concurrent_removes_of_the_same_tags_agree(make_doc: Any) -> None:
    a, b = make_doc("a"), make_doc("b")
    a.state.followers.add("bob")
    sync(a, b)
    assert a.state.followers.remove("bob") and b.state.followers.remove("bob")
    sync(a, b)
    assert a.state.followers.value == b.state.followers.value == []
    assert a.digest() == b.digest()


def test_a_remove_moves_the_state_vector(make_doc: Any) -> None:
    """Otherwise a replica missing only the remove would look up to date to the drift check."""
    a, b = make_doc("a"), make_doc("b")
    a.state.followers.add("bob")
    sync(a, b)
    assert a.state_vector() == b.state_vector() and a.digest() == b.digest()
    a.state.followers.remove("bob")
    assert a.state_vector() != b.state_vector()
    sync(a, b)
    assert a.state_vector() == b.state_vector() and a.digest() == b.digest()
    assert a.violations() == [] and b.violations() == []  # remove marks are not elements


class Things(Schema):
    things = ORSet(dict)
    numbers = ORSet(float)


def test_elements_are_identified_by_canonical_json(make_doc: Any) -> None:
    doc = make_doc("a", schema=Things)
    doc.state.things.add({"a": 1, "b": [1, 2]})
    assert {"b": [1, 2], "a": 1} in doc.state.things
    doc.state.things.add({"b": [1, 2], "a": 1})
    assert len(doc.state.things) == 1
    doc.state.numbers.add(1.5)
    doc.state.numbers.add(2.0)
    assert doc.state.numbers.value == [1.5, 2.0]


@pytest.mark.parametrize("element", [5, None, ["x"], "lone \udc00"], ids=str)
def test_wrong_elements_are_refused_naming_the_field(make_doc: Any, element: Any) -> None:
    doc = make_doc("a")
    before = doc.state_vector()
    with pytest.raises(ValidationError) as info:
        doc.state.followers.add(element)
    assert info.value.field == "followers"
    with pytest.raises(ValidationError):
        doc.state.followers.remove(element)
    assert element not in doc.state.followers  # membership of a bad value is just False
    assert doc.state_vector() == before


def test_foreign_set_keys_are_skipped_and_reported(make_doc: Any) -> None:
    raw: Doc[Any] = Doc(client_id=700)
    root = raw.get("followers", type=Map)
    root["no separator"] = "x"
    root['"eve"\x1f'] = "x"  # empty tag
    root["not json\x1ft1"] = "x"
    root["42\x1ft2"] = "x"  # a number in a set of str
    root['"mallory"\x1ft3'] = "anything"  # well formed: an element
    doc = make_doc("a")
    doc.apply_update(raw.get_update())
    assert doc.state.followers.value == ["mallory"]
    assert {v.key for v in doc.violations()} == {
        "no separator",
        '"eve"\x1f',
        "not json\x1ft1",
        "42\x1ft2",
    }


def test_a_re_add_overwrites_the_replicas_own_key_in_one_map_write(make_doc: Any) -> None:
    a = make_doc("a")
    tags = [a.state.followers.add("bob") for _ in range(3)]
    root = a.root_map("followers")
    assert list(root.keys()) == ['"bob"\x1fa']
    assert _codec.loads(root['"bob"\x1fa'])[2] == tags[-1]
    assert len(set(tags)) == 3 and a.state.followers.tags("bob") == [tags[-1]]


def test_keys_of_the_older_per_tag_layout_are_read_and_replaced(make_doc: Any) -> None:
    raw: Doc[Any] = Doc(client_id=700)
    root = raw.get("followers", type=Map)
    root['"bob"\x1fold.2bc.7'] = "[1,0]"  # key per tag, HLC value
    root['"ann"\x1fz'] = '[1,0,"z.5.1"]'  # key per replica, tag in the value
    a, b = make_doc("a"), make_doc("b")
    for doc in (a, b):
        doc.apply_update(raw.get_update())
    assert a.state.followers.value == ["ann", "bob"]
    assert a.state.followers.tags("bob") == ["old.2bc.7"]
    assert a.state.followers.tags("ann") == ["z.5.1"]
    ops: list[dict[str, Any]] = []
    a.recorder = lambda _update, op: ops.append(op)
    new_tag = a.state.followers.add("bob")
    assert ops[-1]["replaced"] == ["old.2bc.7"]
    assert a.state.followers.remove("ann") and ops[-1]["tags"] == ["z.5.1"]
    sync(a, b)
    assert b.state.followers.value == ["bob"] and b.state.followers.tags("bob") == [new_tag]
