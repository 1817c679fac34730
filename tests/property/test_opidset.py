"""OpIdSet behaves as a set of ints under any sequence of adds and discards."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtstate.store._idset import OpIdSet

OPS = st.lists(st.tuples(st.sampled_from(["add", "next", "discard"]), st.integers(0, 60)))


@settings(max_examples=400, deadline=None)
@given(
    start=st.integers(0, 20), length=st.integers(0, 30), others=st.sets(st.integers(0, 80)), ops=OPS
)
def test_matches_a_plain_set(
    start: int, length: int, others: set[int], ops: list[tuple[str, int]]
) -> None:
    ids = OpIdSet(range(start, start + length), others)
    model = set(range(start, start + length)) | others
    for verb, value in ops:
        if verb == "add":
            ids.add(value)
            model.add(value)
        elif verb == "next":
            nxt = max(model, default=0) + 1
            ids.add(nxt)
            model.add(nxt)
        else:
            ids.discard(value)
            model.discard(value)
        assert len(ids) == len(model)
    assert {x for x in range(max(model, default=0) + 2) if x in ids} == model
    assert "1" not in ids and None not in ids
