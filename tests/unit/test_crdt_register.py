"""LWWRegister and LWWMap: last writer by (HLC, replica id), typed values, foreign slots."""

from __future__ import annotations

from typing import Any

import pytest
from pycrdt import Doc, Map
from pydantic import BaseModel

from crdtstate import LWWMap, LWWRegister, Schema, SchemaError, ValidationError


def sync(*docs: Any) -> None:
    for a in docs:
        for b in docs:
            if a is not b:
                b.apply_update(a.export_update(b.state_vector()))


def test_register_reads_its_default_until_written(make_doc: Any) -> None:
    doc = make_doc("a")
    assert doc.state.flag.value is False
    assert doc.state.flag.stamp is None
    stamp = doc.state.flag.set(True)
    assert doc.state.flag.value is True
    assert doc.state.flag.stamp == stamp
    assert stamp.replica_id == "a"


def test_register_keeps_one_slot_per_writer(make_doc: Any) -> None:
    a, b = make_doc("a"), make_doc("b")
    for i in range(5):
        a.state.title.set(f"a{i}")
    b.state.title.set("b")
    sync(a, b)
    assert set(a.root_map("title").keys()) == {"a", "b"}


def test_concurrent_register_writes_converge_on_the_greatest_stamp(
    make_doc: Any, manual_time: Any
) -> None:
    a, b = make_doc("a"), make_doc("b")
    a.state.title.set("older")
    manual_time.advance(10)
    b.state.title.set("newer")
    sync(a, b)
    assert a.state.title.value == b.state.title.value == "newer"
    assert a.digest() == b.digest()


class Profile(BaseModel):
    name: str
    age: int


class Rich(Schema):
    profile = LWWRegister(Profile, default=Profile(name="nobody", age=0))
    maybe = LWWRegister(str | None, default=None)  # type: ignore[arg-type]
    ratio = LWWRegister(float, default=0.5)
    by_id = LWWMap(str, key_type=int)


def test_register_of_a_model_stores_json_and_reads_back_the_model(make_doc: Any) -> None:
    a, b = make_doc("a", schema=Rich), make_doc("b", schema=Rich)
    assert a.state.profile.value == Profile(name="nobody", age=0)
    a.state.profile.set(Profile(name="ada", age=36))
    sync(a, b)
    assert b.state.profile.value == Profile(name="ada", age=36)
    assert b.to_dict()["profile"] == {"name": "ada", "age": 36}
    a.state.profile.set({"name": "bob", "age": 1})  # a dict of the right shape validates
    assert a.state.profile.value == Profile(name="bob", age=1)
    with pytest.raises(ValidationError) as info:
        a.state.profile.set({"name": "bob", "age": "one"})
    assert info.value.field == "profile" and "age" in str(info.value)


def test_optional_register_takes_none_and_floats_keep_their_type(make_doc: Any) -> None:
    doc = make_doc("a", schema=Rich)
    assert doc.state.maybe.value is None
    doc.state.maybe.set("x")
    doc.state.maybe.set(None)
    assert doc.state.maybe.value is None
    doc.state.ratio.set(0.25)
    assert doc.state.ratio.value == 0.25
    with pytest.raises(ValidationError, match="ratio"):
        doc.state.ratio.set(float("nan"))


def test_register_declaration_checks_its_default() -> None:
    with pytest.raises(ValidationError, match="Input should be a valid string"):
        LWWRegister(str, default=5)


def test_a_declared_field_cannot_be_used_unbound(all_kinds: Any) -> None:
    with pytest.raises(SchemaError, match="declaration"):
        all_kinds.title.set("x")


def test_map_set_get_delete_and_stamps(make_doc: Any) -> None:
    doc = make_doc("a")
    config = doc.state.config
    assert config.value == {} and len(config) == 0 and config.get("k") is None
    set_stamp = config.set("k", 1)
    config.set("j", 2)
    assert config["k"] == 1 and "k" in config and config.keys() == ["j", "k"]
    assert config.stamp("k") == set_stamp
    delete_stamp = config.delete("k")
    assert "k" not in config and config.get("k", -1) == -1
    assert config.stamp("k") == delete_stamp > set_stamp
    assert doc.to_dict()["config"] == {"j": 2}
    with pytest.raises(KeyError):
        config["k"]


def test_map_delete_and_concurrent_set_resolve_by_stamp(make_doc: Any, manual_time: Any) -> None:
    a, b = make_doc("a"), make_doc("b")
    a.state.config.set("k", 1)
    sync(a, b)
    b.state.config.delete("k")
    manual_time.advance(5)
    a.state.config.set("k", 2)  # concurrent, later: wins over the delete
    sync(a, b)
    assert a.state.config.value == b.state.config.value == {"k": 2}
    b.state.config.delete("k")  # after observing: wins
    sync(a, b)
    assert a.state.config.value == b.state.config.value == {}


def test_map_with_int_keys(make_doc: Any) -> None:
    doc = make_doc("a", schema=Rich)
    doc.state.by_id.set(10, "ten")
    doc.state.by_id.set(9, "nine")
    assert doc.state.by_id.keys() == [9, 10]
    assert doc.state.by_id.value == {9: "nine", 10: "ten"}
    assert doc.to_dict()["by_id"] == {"10": "ten", "9": "nine"}
    with pytest.raises(ValidationError, match="bad key"):
        doc.state.by_id.set("10", "string key")
    with pytest.raises(ValidationError, match="bad key"):
        doc.state.by_id.set(True, "bool key")


@pytest.mark.parametrize(
    "key",
    ["with\x1fseparator", "x" * 1025, "lone \ud800 surrogate", 5, None, 10**5000],
    ids=["separator", "too-long", "surrogate", "int", "none", "huge-int"],
)
def test_map_refuses_bad_keys_naming_the_field(make_doc: Any, key: Any) -> None:
    doc = make_doc("a")
    before = doc.state_vector()
    with pytest.raises(ValidationError) as info:
        doc.state.config.set(key, 1)
    assert info.value.field == "config" and "bad key" in str(info.value)
    assert doc.state_vector() == before


def test_map_accepts_the_longest_allowed_key(make_doc: Any) -> None:
    doc = make_doc("a")
    doc.state.config.set("x" * 1024, 1)
    assert doc.state.config["x" * 1024] == 1


def test_foreign_register_and_map_slots_are_skipped_and_reported(make_doc: Any) -> None:
    raw: Doc[Any] = Doc(client_id=500)
    title = raw.get("title", type=Map)
    title["intruder"] = "[9999999999999,0,42]"  # a number in a str register
    title["garbage"] = "not json"
    config = raw.get("config", type=Map)
    config["k\x1fintruder"] = '[1,0,"not an int"]'
    config["no separator"] = "[1,0,1]"
    doc = make_doc("a")
    doc.state.config.set("k", 7)
    doc.apply_update(raw.get_update())
    assert doc.state.title.value == ""
    assert doc.state.config.value == {"k": 7}
    keys = {(v.field, v.key) for v in doc.violations()}
    assert {
        ("title", "intruder"),
        ("title", "garbage"),
        ("config", "k\x1fintruder"),
        ("config", "no separator"),
    } <= keys
