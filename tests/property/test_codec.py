"""The reused JSON encoders give exactly what the standard encoder gives, and refuse alike."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtstate import _codec
from crdtstate.store._checks import encode_op

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=JSON_VALUES)
def test_canonical_encoding_matches_the_standard_encoder(value: Any) -> None:
    expected = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    assert _codec.dumps(value) == expected
    assert _codec.loads(_codec.dumps(value)) == value


@settings(max_examples=200, deadline=None)
@given(op=st.dictionaries(st.text(), JSON_VALUES, max_size=4))
def test_op_encoding_is_ascii_and_round_trips(op: dict[str, Any]) -> None:
    text = encode_op(op)
    assert text.isascii()
    assert json.loads(text) == op


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), [1, float("-inf")]])
def test_non_finite_numbers_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="Out of range"):
        _codec.dumps(bad)


def test_a_value_containing_itself_is_refused_and_the_encoder_keeps_working() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(_codec.NestingError):
        _codec.dumps(loop)
    with pytest.raises(ValueError, match="nested too deeply"):
        encode_op({"value": loop})
    # A failed encoding leaves nothing behind that spoils the next one.
    shared = [1]
    assert _codec.dumps({"a": shared, "b": shared}) == '{"a":[1],"b":[1]}'


def test_unencodable_objects_name_their_type() -> None:
    with pytest.raises(TypeError, match="object"):
        _codec.dumps({"x": object()})
    with pytest.raises(TypeError, match="not JSON-encodable"):
        encode_op({"x": {1, 2}})
