"""The JSON text a field hands the store with its op decodes to exactly that op."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtstate import LWWMap, LWWRegister, ORSet, Schema
from crdtstate._codec import EncodedOp
from crdtstate.doc import NamespaceDoc
from crdtstate.hlc import HybridClock
from crdtstate.store._checks import encode_op

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**62), max_value=2**62)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=4).filter(str.isprintable), inner, max_size=3)
    ),
    max_leaves=10,
)
KEYS = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x1f"), max_size=8)


class Loose(Schema):
    """Fields holding any JSON value."""

    reg = LWWRegister(dict | list | str | int | float | bool | None, default=None)
    conf = LWWMap(dict | list | str | int | float | bool | None)
    tags = ORSet(str)
    ids = ORSet(int)


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(JSON_VALUES, min_size=1, max_size=4),
    keys=st.lists(KEYS, min_size=1, max_size=4),
    elements=st.lists(st.text(max_size=6).filter(lambda t: t.isprintable()), max_size=4),
    numbers=st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=3),
)
def test_every_field_op_carries_text_that_decodes_to_itself(
    values: list[Any], keys: list[str], elements: list[str], numbers: list[int]
) -> None:
    doc = NamespaceDoc("r1", Loose, client_id=7, clock=HybridClock())
    doc.declare_schema_entries(doc.missing_declarations())
    ops: list[dict[str, Any]] = []
    doc.recorder = lambda _update, op: ops.append(op)
    state: Any = doc.state
    for i, value in enumerate(values):
        state.reg.set(value)
        key = keys[i % len(keys)]
        state.conf.set(key, value)
        if i % 2:
            state.conf.delete(key)
    for element in elements * 2:  # every element added twice: the second add replaces
        state.tags.add(element)
    for element in elements[:2]:
        state.tags.remove(element)
    for n in numbers:
        state.ids.add(n)
        state.ids.remove(n)
    assert ops
    for op in ops:
        assert type(op) is EncodedOp
        assert json.loads(op.text) == dict(op)
        assert encode_op(op) == op.text
        assert json.loads(encode_op(dict(op))) == json.loads(op.text)
