"""A relay snapshot the replica cannot apply is not claimed, and is asked for again later."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crdtstate import Replica
from crdtstate.store import MemoryStore
from crdtstate.sync import wire
from crdtstate.sync.session import ConnectionState, SyncSession, SyncSettings
from tests.conftest import AllKinds

_SETTINGS = SyncSettings(resend_delay_s=0.5, instance="test")


def _hellos(frames: list[bytes]) -> list[wire.Hello]:
    return [f for f in map(wire.decode, frames) if isinstance(f, wire.Hello)]


def test_an_unreadable_snapshot_is_not_claimed_and_is_asked_for_again(tmp_path: Path) -> None:
    with Replica.open(tmp_path / "src", "ns", AllKinds, store=MemoryStore()) as src:
        s: Any = src.state
        s.title.set("from the relay")
        s.memory.append({"n": 1})
        state, expected = src.export_update(), src.to_dict()
    with Replica.open(tmp_path / "r", "ns", AllKinds, store=MemoryStore()) as r:
        session = SyncSession(r, _SETTINGS)
        session.connection_made(0.0)
        welcome = wire.Welcome(wire.PROTOCOL_VERSION, wire.Seq(7), "inc-1")
        session.receive(wire.encode(welcome), 0.0)
        bad = wire.Snapshot(wire.Seq(7), b"\x01\x02 not a yjs update")
        session.receive(wire.encode(bad), 0.0)
        assert session.applied_seq == 0 and r.applied_seq == 0
        assert "cannot apply" in (session.last_error or "")
        assert session.state is not ConnectionState.LIVE
        # What follows the bad snapshot is not applied either, and nothing is asked yet.
        later = wire.Broadcast(wire.Seq(8), "src", state)
        assert session.receive(wire.encode(later), 0.1) == []
        assert session.applied_seq == 0
        assert _hellos(session.tick(0.2)) == []
        # After the pause, one hello from what was really applied; a good snapshot settles it.
        hellos = _hellos(session.tick(0.6))
        assert len(hellos) == 1 and hellos[0].last_seq == 0
        session.receive(wire.encode(welcome), 0.7)
        session.receive(wire.encode(wire.Snapshot(wire.Seq(7), state)), 0.7)
        assert session.applied_seq == 7 and session.state is ConnectionState.LIVE
        assert r.to_dict() == expected
