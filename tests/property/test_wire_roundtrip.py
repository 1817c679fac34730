"""Hypothesis: every frame round-trips, and arbitrary bytes never crash the decoder."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtstate._ids import OpId, ReplicaId, Seq
from crdtstate.sync import wire

_U53 = st.integers(min_value=0, max_value=2**53 - 1)
_REPLICA = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")
_SHORT_TEXT = st.text(max_size=20)
_BYTES = st.binary(max_size=64)

_broadcast = st.builds(
    wire.Broadcast,
    _U53.map(Seq),
    st.text(max_size=30).filter(lambda s: len(s.encode()) <= 128),
    _BYTES,
)

frames = st.one_of(
    st.builds(wire.SyncStep1, _BYTES),
    st.builds(wire.SyncStep2, _BYTES),
    st.builds(wire.SyncUpdate, _BYTES),
    st.builds(wire.Awareness, _BYTES),
    st.builds(wire.AuthDenied, _SHORT_TEXT),
    st.just(wire.QueryAwareness()),
    st.builds(
        wire.Hello,
        _U53,
        _REPLICA.map(ReplicaId),
        st.binary(min_size=32, max_size=32),
        _U53.map(Seq),
        _BYTES,
        _SHORT_TEXT,
        _SHORT_TEXT,
    ),
    st.builds(wire.Welcome, _U53, _U53.map(Seq), _SHORT_TEXT),
    st.builds(
        wire.Update,
        _U53.map(OpId),
        st.one_of(st.just(b""), st.binary(min_size=64, max_size=64)),
        _BYTES,
    ),
    st.builds(wire.Ack, _U53.map(OpId), _U53.map(Seq), st.booleans()),
    _broadcast,
    st.lists(_broadcast, max_size=5).map(lambda es: wire.BroadcastBatch(tuple(es))),
    st.builds(wire.Snapshot, _U53.map(Seq), _BYTES),
    st.builds(wire.ResyncRequired, _U53.map(Seq), _SHORT_TEXT),
    st.builds(wire.Heartbeat, st.text(max_size=100)),
    st.builds(wire.ErrorFrame, _U53, _SHORT_TEXT, _U53.map(OpId)),
)


@given(frames)
def test_every_frame_round_trips(frame: wire.Frame) -> None:
    assert wire.decode(wire.encode(frame)) == frame


@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_frame_error(raw: bytes) -> None:
    try:
        frame = wire.decode(raw)
    except wire.FrameError as exc:
        assert str(exc)
        assert exc.code in (wire.ErrorCode.MALFORMED, wire.ErrorCode.UNKNOWN_TYPE)
    else:
        assert isinstance(frame, wire.Frame)  # type: ignore[arg-type,misc]


@given(frames, st.data())
def test_truncated_extension_frames_are_refused(frame: wire.Frame, data: st.DataObject) -> None:
    raw = wire.encode(frame)
    if raw[0] != wire.MessageType.CRDTSTATE or len(raw) < 3:
        return
    cut = data.draw(st.integers(min_value=1, max_value=len(raw) - 1))
    # Every extension frame ends with a counted field, so no proper prefix is a frame.
    with pytest.raises(wire.FrameError):
        wire.decode(raw[:cut])


@given(st.lists(st.builds(wire.AwarenessEntry, _U53, _U53, _SHORT_TEXT), max_size=10))
def test_awareness_payload_round_trips(entries: list[wire.AwarenessEntry]) -> None:
    assert wire.decode_awareness_update(wire.encode_awareness_update(entries)) == entries
