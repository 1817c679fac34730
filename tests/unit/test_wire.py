"""Byte-exact checks of the relay wire format against docs/protocol.md."""

from __future__ import annotations

import pytest

from crdtstate._ids import OpId, ReplicaId, Seq
from crdtstate.errors import RemoteProtocolError
from crdtstate.sync import wire


def test_varuint_examples_match_lib0() -> None:
    frame = wire.encode(wire.Ack(OpId(1), Seq(300), duplicate=True))
    assert frame == bytes.fromhex("6403 01 ac02 01".replace(" ", ""))


def test_documented_examples_are_the_encoded_bytes() -> None:
    examples = {
        "640401017202 7575": wire.Broadcast(Seq(1), "r", b"uu"),
        "6405 02 01 0172 027575 02 0172 0175": wire.BroadcastBatch(
            (wire.Broadcast(Seq(1), "r", b"uu"), wire.Broadcast(Seq(2), "r", b"u"))
        ),
        "6401 01 03 0178": wire.Welcome(1, Seq(3), "x"),
        "6409 01 016d 03": wire.ErrorFrame(1, "m", OpId(3)),
        "0002 01 63": wire.SyncUpdate(b"c"),
        "0000 01 61": wire.SyncStep1(b"a"),
        "0001 01 62": wire.SyncStep2(b"b"),
        "01 01 64": wire.Awareness(b"d"),
        "0200 01 78": wire.AuthDenied("x"),
        "03": wire.QueryAwareness(),
    }
    for hex_text, frame in examples.items():
        raw = bytes.fromhex(hex_text.replace(" ", ""))
        assert wire.encode(frame) == raw
        assert wire.decode(raw) == frame


def test_hello_round_trips_with_every_field() -> None:
    hello = wire.Hello(
        version=1,
        replica_id=ReplicaId("exec-1"),
        public_key=bytes(range(32)),
        last_seq=Seq(2**40),
        state_vector=b"\x01\x02\x03",
        incarnation="ab" * 16,
        instance="i-1",
    )
    assert wire.decode(wire.encode(hello)) == hello


def test_batch_frames_reuses_encoded_broadcasts() -> None:
    frames = [wire.encode_broadcast(s, "origin", bytes([s]) * s) for s in range(1, 5)]
    decoded = wire.decode(wire.batch_frames(frames))
    assert isinstance(decoded, wire.BroadcastBatch)
    assert [e.seq for e in decoded.entries] == [1, 2, 3, 4]
    assert decoded.entries[2].update == b"\x03\x03\x03"
    assert wire.batch_frames(frames[:1]) == frames[0]


def test_batch_frames_refuses_other_frames() -> None:
    with pytest.raises(ValueError, match="encode_broadcast"):
        wire.batch_frames([wire.encode(wire.Ack(OpId(1), Seq(1)))] * 2)
    with pytest.raises(ValueError, match="at least one"):
        wire.batch_frames([])


@pytest.mark.parametrize(
    ("raw", "needle", "code"),
    [
        (b"", "empty frame", wire.ErrorCode.MALFORMED),
        (b"\x07", "unknown message type 7", wire.ErrorCode.UNKNOWN_TYPE),
        (b"\x00\x05\x00", "unknown sync message type 5", wire.ErrorCode.UNKNOWN_TYPE),
        (b"\x64\x63", "unknown crdtstate message type 99", wire.ErrorCode.UNKNOWN_TYPE),
        (b"\x00\x02\x05ab", "claims 5 bytes, only 2 remain", wire.ErrorCode.MALFORMED),
        (
            b"\x00\x02\xff\xff\xff\xff\xff\xff\xff\xff\x01",
            "longer than 8",
            wire.ErrorCode.MALFORMED,
        ),
        (b"\x64\x03\x01", "truncated frame: seq", wire.ErrorCode.MALFORMED),
        (b"\x64\x03\x01\x01\x00\x00", "trailing", wire.ErrorCode.MALFORMED),
        (b"\x64\x03\x01\x01\x05", "ack flags", wire.ErrorCode.MALFORMED),
        (b"\x64\x02\x01\x03abc\x00", "signature is 3 bytes", wire.ErrorCode.MALFORMED),
        (b"\x64\x08\x02\xff\xfe", "UTF-8", wire.ErrorCode.MALFORMED),
        (b"\x64\x05\xff\xff\x03", "batch claims", wire.ErrorCode.MALFORMED),
    ],
)
def test_bad_bytes_raise_frame_error_naming_the_problem(
    raw: bytes, needle: str, code: wire.ErrorCode
) -> None:
    with pytest.raises(wire.FrameError, match=needle) as info:
        wire.decode(raw)
    assert info.value.code == code
    assert isinstance(info.value, RemoteProtocolError)


def test_hello_with_bad_replica_id_or_key_is_refused() -> None:
    good = wire.Hello(1, ReplicaId("r"), b"k" * 32, Seq(0), b"\x00", "", "i")
    raw = wire.encode(good)
    bad_id = raw.replace(b"\x01r", b"\x01!")
    with pytest.raises(wire.FrameError, match="invalid replica id"):
        wire.decode(bad_id)
    short_key = b"\x64\x00\x01\x01r\x03abc\x00\x00\x00\x00"
    with pytest.raises(wire.FrameError, match="public key is 3 bytes"):
        wire.decode(short_key)


def test_signing_payload_is_domain_separated_and_unambiguous() -> None:
    payload = wire.signing_payload("ns", "r1", 7, b"\x00\x00")
    assert payload == b"crdtstate/update/v1\x00" + b"\x02ns" + b"\x02r1" + b"\x07" + b"\x02\x00\x00"
    # Moving a byte between fields changes the payload.
    assert wire.signing_payload("n", "sr1", 7, b"\x00\x00") != payload
    assert wire.signing_payload("ns", "r1", 8, b"\x00\x00") != payload


def test_negotiate_version() -> None:
    assert wire.negotiate_version(wire.PROTOCOL_VERSION + 5) == wire.PROTOCOL_VERSION
    assert wire.negotiate_version(wire.PROTOCOL_VERSION) == wire.PROTOCOL_VERSION
    assert wire.negotiate_version(0) is None


def test_awareness_update_round_trips_and_bounds_entries() -> None:
    entries = [wire.AwarenessEntry(123456, 3, '{"user":"a"}'), wire.AwarenessEntry(1, 0, "null")]
    payload = wire.encode_awareness_update(entries)
    assert wire.decode_awareness_update(payload) == entries
    with pytest.raises(wire.FrameError, match="at most 1"):
        wire.decode_awareness_update(payload, entries_max=1)
    with pytest.raises(wire.FrameError, match="too short"):
        wire.decode_awareness_update(b"\x40")


def test_encode_refuses_out_of_range_fields() -> None:
    with pytest.raises(ValueError, match="negative"):
        wire.encode(wire.Ack(OpId(-1), Seq(1)))
    with pytest.raises(ValueError, match="signature"):
        wire.encode(wire.Update(OpId(1), b"x", b"\x00\x00"))
    with pytest.raises(TypeError, match="not a frame"):
        wire.encode("hello")  # type: ignore[arg-type]
