"""Fan-out framing: a batch framed once, with a sender's own updates cut out of the bytes.

``relay.ws._on_the_wire`` is checked against an independent RFC 6455 encoder for any
frames and any set of left-out indices, fresh and from the memo of the last batch; a real
``Peer`` hands the indices to the socket write, or queues only the frames that are sent.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.config import Access, LimitSettings
from relay.metrics import RelayMetrics
from relay.peer import Peer, PeerKind
from relay.ws import _on_the_wire


def _reference(frames: list[bytes]) -> bytes:
    """Unmasked binary frames with FIN set, as RFC 6455 section 5.2 lays them out."""
    out = b""
    for frame in frames:
        size = len(frame)
        if size < 126:
            out += bytes((0x82, size))
        elif size < 1 << 16:
            out += bytes((0x82, 126)) + struct.pack("!H", size)
        else:
            out += bytes((0x82, 127)) + struct.pack("!Q", size)
        out += frame
    return out


_frames = st.lists(
    st.one_of(st.binary(max_size=140), st.binary(min_size=126, max_size=400)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(frames=_frames, data=st.data())
def test_leaving_frames_out_equals_framing_the_rest(
    frames: list[bytes], data: st.DataObject
) -> None:
    skips = data.draw(
        st.lists(st.sets(st.integers(0, len(frames) - 1)), min_size=1, max_size=4),
        label="skips",
    )
    # The first call frames the batch; the later ones reuse it (the same list object).
    assert _on_the_wire(frames) == _reference(frames)
    for skip in skips:
        indices = sorted(skip)
        kept = [frame for index, frame in enumerate(frames) if index not in skip]
        assert _on_the_wire(frames, indices) == _reference(kept)


def test_a_frame_above_64_kib_gets_the_long_header_and_can_be_left_out() -> None:
    frames = [b"a" * 70_000, b"bc", b"d" * 300]
    assert _on_the_wire(frames) == _reference(frames)
    assert _on_the_wire(frames, [0]) == _reference(frames[1:])
    assert _on_the_wire(frames, [1]) == _reference([frames[0], frames[2]])


def _peer(write_now_result: bool, written: list[tuple[list[bytes], list[int]]]) -> Peer:
    async def send(frame: bytes) -> None:
        raise AssertionError("not used")

    async def send_many(frames: list[bytes]) -> None:
        raise AssertionError("not used")

    async def close(code: int, reason: str) -> None:
        return None

    def write_now(frames: list[bytes], skip: Sequence[int] = ()) -> bool:
        if write_now_result:
            written.append((frames, list(skip)))
        return write_now_result

    peer = Peer(
        "c1",
        Access.WRITE,
        send,
        close,
        LimitSettings(),
        RelayMetrics(),
        send_many=send_many,
        write_now=write_now,
    )
    peer.kind = PeerKind.YJS
    return peer


@pytest.mark.parametrize("skip", [[0], [1, 3], [0, 1, 2]])
async def test_a_peer_writes_the_batch_with_its_indices_or_queues_only_what_it_gets(
    skip: list[int],
) -> None:
    frames = [b"u0", b"u1", b"u22", b"u333"]
    sent = [frame for index, frame in enumerate(frames) if index not in skip]
    size = sum(map(len, sent))

    written: list[tuple[list[bytes], list[int]]] = []
    direct = _peer(True, written)
    assert direct.broadcast_many(frames, size, skip) == size
    assert written == [(frames, skip)]
    assert direct.queue_len == 0

    backed_up = _peer(False, [])
    assert backed_up.broadcast_many(frames, size, skip) == 0
    assert backed_up._next_frames() == (sent, size)


async def test_a_peer_that_sent_everything_in_the_batch_gets_nothing() -> None:
    backed_up = _peer(False, [])
    assert backed_up.broadcast_many([b"a", b"b"], 0, [0, 1]) == 0
    assert backed_up.queue_len == 0
