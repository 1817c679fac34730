"""Schemas: declaring fields, descriptors in the doc, reading without the agent's code."""

from __future__ import annotations

import json
import keyword
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtstate import (
    FieldKind,
    GCounter,
    Log,
    LWWMap,
    LWWRegister,
    ORSet,
    PNCounter,
    Replica,
    Schema,
    SchemaError,
    ValueType,
    schema_from_descriptor,
)
from crdtstate.schema import field_from_descriptor, validate_field_name
from crdtstate.store import MemoryStore


class Base(Schema, version=3):
    killswitch = LWWRegister(bool, default=False)
    karma = PNCounter()


class Agent(Base, version=4):
    followers = ORSet(str)
    memory = Log(dict)
    config = LWWMap(int, key_type=int)
    visits = GCounter(doc="page visits")


def test_fields_are_collected_in_declaration_order_with_inherited_ones_first() -> None:
    assert list(Agent.fields()) == [
        "killswitch",
        "karma",
        "followers",
        "memory",
        "config",
        "visits",
    ]
    assert list(Base.fields()) == ["killswitch", "karma"]
    assert Agent.fields()["visits"].doc == "page visits"


def test_descriptor_names_kinds_types_defaults_and_version() -> None:
    assert Agent.descriptor() == {
        "name": "Agent",
        "version": 4,
        "fields": {
            "killswitch": {"kind": "lww", "type": "bool", "default": False},
            "karma": {"kind": "pncounter", "type": "int", "default": 0},
            "followers": {"kind": "orset", "type": "str", "default": []},
            "memory": {"kind": "log", "type": "json", "default": []},
            "config": {"kind": "lwwmap", "type": "int", "default": {}, "key_type": "int"},
            "visits": {"kind": "gcounter", "type": "int", "default": 0},
        },
    }
    json.dumps(Agent.descriptor())  # plain JSON


@pytest.mark.parametrize("version", [0, -1, True, "2", 1.5])
def test_bad_versions_are_refused(version: Any) -> None:
    with pytest.raises(SchemaError, match="schema version must be an integer >= 1"):
        type("Bad", (Schema,), {}, version=version)


@pytest.mark.parametrize(
    "name",
    ["_private", "1st", "with-dash", "x" * 65, "class", "fields", "descriptor", "", "é"],
)
def test_bad_field_names_are_refused_naming_them(name: str) -> None:
    with pytest.raises(SchemaError, match="invalid field name"):
        type("Bad", (Schema,), {name: GCounter()})
    with pytest.raises(SchemaError) as info:
        validate_field_name(name)
    assert repr(name) in str(info.value)


@settings(max_examples=200)
@given(name=st.text(max_size=70))
def test_field_names_are_letters_digits_and_underscores(name: str) -> None:
    ok = (
        name[:1].isascii()
        and name[:1].isalpha()
        and len(name) <= 64
        and all(c.isascii() and (c.isalnum() or c == "_") for c in name)
        and not keyword.iskeyword(name)
        and name not in ("fields", "descriptor")
    )
    if ok:
        assert validate_field_name(name) == name
    else:
        with pytest.raises(SchemaError):
            validate_field_name(name)


def test_state_attributes_cannot_be_assigned(tmp_path: Path) -> None:
    with Replica.open(tmp_path, "ns", Agent, store=MemoryStore()) as r:
        with pytest.raises(SchemaError, match=r"cannot assign 'karma'.*state\.karma\.set"):
            r.state.karma = 5  # type: ignore[assignment]
        assert r.state.karma.value == 0


def test_the_replica_writes_the_descriptor_into_the_doc_once(tmp_path: Path) -> None:
    with Replica.open(tmp_path, "ns", Agent) as r:
        assert r.doc.declared() == Agent.descriptor()["fields"]
        assert r.doc.schema_meta() == {"name": "Agent", "version": 4}
        r.flush()
        declare_ops = [e.op for e in r.store.outbox()]
        assert [op["op"] for op in declare_ops] == ["declare"]
        assert set(declare_ops[0]["entries"]) == {*Agent.fields(), "@schema"}
    with Replica.open(tmp_path, "ns", Agent) as r:
        assert r.outbox_len() == 1  # reopening declares nothing new


def test_a_schema_free_replica_reads_what_a_typed_one_wrote(tmp_path: Path) -> None:
    with Replica.open(tmp_path, "agent", Agent, durability="sync") as typed:
        typed.state.killswitch.set(True)
        typed.state.karma.inc(3)
        typed.state.followers.add("bob")
        typed.state.memory.append({"note": "hi"})
        typed.state.config.set(7, 70)
        expected, digest = typed.to_dict(), typed.digest()
    cli: Replica[Any]
    with Replica.open(tmp_path, "agent", None) as cli:  # same store, no code
        assert cli.to_dict() == expected
        assert cli.digest() == digest
        fields: Any = cli.doc.fields
        assert fields["killswitch"].value is True
        assert fields["config"].value == {7: 70}
        assert fields["followers"].kind is FieldKind.ORSET
        assert cli.violations() == []
        fields["karma"].dec(1)
    with Replica.open(tmp_path, "agent", Agent) as typed:
        assert typed.state.karma.value == 2


def test_a_schema_free_replica_elsewhere_reads_through_an_exported_update(
    tmp_path: Path,
) -> None:
    with Replica.open(tmp_path / "a", "agent", Agent, store=MemoryStore()) as typed:
        typed.state.visits.inc(9)
        update = typed.export_update()
    cli: Replica[Any]
    with Replica.open(tmp_path / "b", "agent", None, store=MemoryStore()) as cli:
        assert cli.to_dict() == {}
        cli.apply_update(update)
        visits: Any = cli.field("visits")
        assert visits.value == 9
        assert sorted(cli.doc.declared()) == sorted(Agent.fields())


def test_schema_from_descriptor_round_trips() -> None:
    rebuilt = schema_from_descriptor(Agent.descriptor(), name="Agent")
    assert rebuilt.descriptor() == Agent.descriptor()
    assert issubclass(rebuilt, Schema)
    assert rebuilt.fields()["config"].key_type is int  # type: ignore[attr-defined]


field_descriptors = st.one_of(
    st.builds(
        lambda vt, default: {"kind": "lww", "type": vt.value, "default": default},
        st.just(ValueType.STR),
        st.text(max_size=5),
    ),
    st.builds(
        lambda default: {"kind": "lww", "type": "int", "default": default},
        st.integers(-100, 100),
    ),
    st.builds(lambda b: {"kind": "lww", "type": "bool", "default": b}, st.booleans()),
    st.builds(
        lambda kind: {"kind": kind, "type": "int", "default": 0},
        st.sampled_from(["gcounter", "pncounter"]),
    ),
    st.builds(
        lambda kind, vt: {"kind": kind, "type": vt, "default": []},
        st.sampled_from(["orset", "log"]),
        st.sampled_from([t.value for t in ValueType]),
    ),
    st.builds(
        lambda vt, kt: {"kind": "lwwmap", "type": vt, "default": {}, "key_type": kt},
        st.sampled_from([t.value for t in ValueType]),
        st.sampled_from(["str", "int"]),
    ),
)
names = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True).filter(
    lambda n: not keyword.iskeyword(n) and n not in ("fields", "descriptor")
)


@settings(max_examples=100)
@given(
    fields=st.dictionaries(names, field_descriptors, max_size=6),
    version=st.integers(1, 50),
)
def test_any_valid_descriptor_round_trips(fields: dict[str, Any], version: int) -> None:
    descriptor = {"name": "Dyn", "version": version, "fields": fields}
    schema = schema_from_descriptor(descriptor, name="Dyn")
    assert schema.descriptor() == descriptor


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


@settings(max_examples=200)
@given(descriptor=json_values)
def test_any_json_gives_a_schema_or_a_schema_error(descriptor: Any) -> None:
    try:
        schema = schema_from_descriptor(descriptor)
    except SchemaError as exc:
        assert str(exc)
    else:
        assert issubclass(schema, Schema)


@settings(max_examples=200)
@given(name=names, descriptor=json_values)
def test_any_json_field_descriptor_gives_a_field_or_a_schema_error(
    name: str, descriptor: Any
) -> None:
    try:
        field = field_from_descriptor(name, descriptor)
    except SchemaError as exc:
        assert repr(name) in str(exc)
    else:
        assert field.name == name


@pytest.mark.parametrize(
    ("descriptor", "message"),
    [
        ({"kind": "counter"}, "unknown kind 'counter'"),
        ({"kind": "lww", "type": "decimal"}, "unknown type 'decimal'"),
        ({"kind": "lww", "type": "int", "default": "zero"}, "bad default 'zero'"),
        ("lww", "descriptor must be an object"),
        ({"kind": ["lww"]}, "unknown kind"),
    ],
)
def test_bad_field_descriptors_say_what_is_wrong(descriptor: Any, message: str) -> None:
    with pytest.raises(SchemaError, match=message) as info:
        field_from_descriptor("score", descriptor)
    assert "'score'" in str(info.value)


@pytest.mark.parametrize("descriptor", [None, [], "fields", {"fields": []}])
def test_bad_schema_descriptors_say_what_is_wrong(descriptor: Any) -> None:
    with pytest.raises(SchemaError, match="descriptor"):
        schema_from_descriptor(descriptor)
