"""Wrong values are refused with a ValidationError naming the field, for every kind.

Hypothesis throws arbitrary Python values at every write method: a value of the declared
type is stored and read back unchanged; anything else raises ``ValidationError`` whose
``field`` is the field written, and the doc does not change. Nothing else is ever raised.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
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
    ValidationError,
)
from crdtstate.crdt.base import MAX_VALUE_BYTES
from crdtstate.crdt.counter import MAX_STEP


class Typed(Schema):
    flag = LWWRegister(bool, default=False)
    name = LWWRegister(str, default="")
    count = LWWRegister(int, default=0)
    ratio = LWWRegister(float, default=0.0)
    blob = LWWRegister(dict, default={})
    tags = ORSet(str)
    numbers = ORSet(int)
    limits = LWWMap(int)
    notes = LWWMap(str)
    hits = GCounter()
    karma = PNCounter()
    events = Log(dict)
    anything = Log(list)


# Lone surrogates and the \x1f separator included.
any_text = st.text(st.characters(codec=None) | st.just("\x1f"), max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**4400, max_value=10**4500),
    st.floats(),
    any_text,
    st.binary(max_size=6),
    st.complex_numbers(allow_nan=False, allow_infinity=False),
    st.just(object()),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(any_text, inner, max_size=3),
        st.dictionaries(st.integers(), inner, max_size=2),
        st.frozensets(st.integers(), max_size=3),
    ),
    max_leaves=6,
)


def new_doc() -> Any:
    doc = NamespaceDoc("r", Typed, client_id=1, clock=HybridClock(now_ms=lambda: 1000))
    doc.declare_schema_entries(doc.missing_declarations())
    return doc


def utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def fits(kind: str, value: Any) -> bool | None:
    """Whether a value of this Python type must be accepted (None: either way is fine)."""
    if kind == "bool":
        return type(value) is bool
    if kind == "str":
        return type(value) is str and utf8(value)
    if kind == "int":
        return type(value) is int and abs(value) < 10**4000
    if kind == "float":
        if type(value) is float:
            return math.isfinite(value)
        return None  # an int may be widened to a float
    if kind == "key":
        return type(value) is str and utf8(value) and "\x1f" not in value and len(value) <= 1024
    if kind == "step":
        return type(value) is int and 1 <= value <= MAX_STEP
    return None  # containers: decided by pydantic and JSON; only the outcome is checked


WRITES: dict[str, tuple[str, Callable[[Any, Any], Any], Callable[[Any], Any]]] = {
    "flag": ("bool", lambda s, v: s.flag.set(v), lambda s: s.flag.value),
    "name": ("str", lambda s, v: s.name.set(v), lambda s: s.name.value),
    "count": ("int", lambda s, v: s.count.set(v), lambda s: s.count.value),
    "ratio": ("float", lambda s, v: s.ratio.set(v), lambda s: s.ratio.value),
    "blob": ("json", lambda s, v: s.blob.set(v), lambda s: s.blob.value),
    "tags": ("str", lambda s, v: s.tags.add(v), lambda s: s.tags.value[0]),
    "numbers": ("int", lambda s, v: s.numbers.add(v), lambda s: s.numbers.value[0]),
    "limits": ("int", lambda s, v: s.limits.set("k", v), lambda s: s.limits["k"]),
    "notes": ("key", lambda s, v: s.notes.set(v, "x"), lambda s: s.notes.keys()[0]),
    "hits": ("step", lambda s, v: s.hits.inc(v), lambda s: s.hits.value),
    "karma": ("step", lambda s, v: s.karma.dec(v), lambda s: -s.karma.value),
    "events": ("json", lambda s, v: s.events.append(v), lambda s: s.events.value[0]),
    "anything": ("json", lambda s, v: s.anything.append(v), lambda s: s.anything.value[0]),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=values)
@pytest.mark.parametrize("field", sorted(WRITES))
def test_a_value_is_stored_as_given_or_refused_naming_the_field(field: str, value: Any) -> None:
    kind, write, read = WRITES[field]
    doc = new_doc()
    before = doc.state_vector()
    expected = fits(kind, value)
    try:
        write(doc.state, value)
    except ValidationError as exc:
        assert expected is not True, f"{value!r:.60} refused: {exc}"
        assert exc.field == field
        assert str(exc).startswith(f"field {field!r}: ")
        assert doc.state_vector() == before, "a refused write changed the doc"
        return
    assert expected is not False, f"{type(value).__name__} accepted by {field}"
    stored = read(doc.state)
    if kind in ("bool", "str", "int", "step", "key"):
        assert stored == value and type(stored) is type(value)
    elif kind == "float":
        assert stored == value and type(stored) is float
    else:
        # JSON fields read back what JSON can say: tuples become lists, keys strings.
        again = NamespaceDoc("z", Typed, client_id=2, clock=HybridClock())
        again.apply_update(doc.export_update())
        assert read(again.state) == stored


def test_oversized_values_are_refused_naming_the_field() -> None:
    doc = new_doc()
    writes: list[tuple[str, Callable[[Any], Any]]] = [
        ("name", lambda s: s.name.set("é" * (MAX_VALUE_BYTES // 2 + 1))),
        ("blob", lambda s: s.blob.set({"x": "y" * MAX_VALUE_BYTES})),
        ("tags", lambda s: s.tags.add("z" * (MAX_VALUE_BYTES + 1))),
    ]
    for field, write in writes:
        with pytest.raises(ValidationError, match="bytes encoded") as info:
            write(doc.state)
        assert info.value.field == field


def test_a_value_just_under_the_limit_is_accepted() -> None:
    doc = new_doc()
    text = "a" * (MAX_VALUE_BYTES - 2)  # plus two quotes in JSON
    doc.state.name.set(text)
    assert doc.state.name.value == text


def test_non_finite_floats_inside_json_values_are_refused_not_nulled() -> None:
    doc = new_doc()
    for bad in ({"x": float("inf")}, {"x": [float("nan")]}):
        with pytest.raises(ValidationError, match="not representable as JSON") as info:
            doc.state.blob.set(bad)
        assert info.value.field == "blob"
    assert doc.state.blob.value == {}
