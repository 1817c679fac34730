"""SyncClient against a real relay process: sync, read-your-writes, rotation, refusals,
resync after overflow, repair after the relay lost its data. Plus the sans-I/O session
driven frame by frame over an in-memory transport."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket

import pytest
from relay_helpers import (
    DocTarget,
    RawClient,
    RelayProcess,
    connect_replica,
    signed_update,
    wait_until,
)

from crdtstate._ids import OpId, Seq
from crdtstate.errors import AuthError, SyncTimeout
from crdtstate.sync import wire
from crdtstate.sync.client import SyncClient, relay_url
from crdtstate.sync.session import ConnectionState, SyncSession, SyncSettings
from crdtstate.transport.base import ConnectionClosed, Transport
from crdtstate.transport.memory import memory_pipe

FAST = SyncSettings(backoff_s_initial=0.05, backoff_s_max=0.3, heartbeat_interval_s=0.2)


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"ws://127.0.0.1:{port}"


async def test_two_clients_converge_with_read_your_writes(relay: RelayProcess) -> None:
    a, b = DocTarget("rw", "a"), DocTarget("rw", "b")
    ca, cb = SyncClient(a, relay.url, settings=FAST), SyncClient(b, [relay.url], settings=FAST)
    await ca.start()
    await cb.start()
    try:
        op = a.write("killswitch", True)
        seq = await ca.wait_acked(op, 10)
        assert seq >= 1
        await cb.wait_seq(seq, 10)  # b now sees a's write
        assert b.snapshot()["killswitch"] is True
        for i in range(100):
            a.write(f"a{i}", i)
            b.write(f"b{i}", i)
        await asyncio.gather(ca.synced(15), cb.synced(15))
        assert a.snapshot() == b.snapshot() and len(a.snapshot()) == 201
        assert ca.state is ConnectionState.LIVE and ca.lag == 0
        assert ca.head_seq == cb.head_seq == 201
        await wait_until(lambda: a.heartbeats > 0, 5, "a heartbeat")
    finally:
        await ca.stop()
        await cb.stop()
    assert ca.state is ConnectionState.STOPPED


async def test_client_rotates_past_a_dead_relay_url(relay: RelayProcess) -> None:
    a = DocTarget("rotate", "a")
    client = SyncClient(a, [_dead_url(), relay.url], settings=FAST)
    await client.start()
    try:
        op = a.write("x", 1)
        await client.wait_acked(op, 10)
        assert client.connected_url == relay_url(relay.url, "rotate")
    finally:
        await client.stop()


async def test_wait_acked_times_out_while_no_relay_is_reachable() -> None:
    a = DocTarget("down", "a")
    client = SyncClient(a, _dead_url(), settings=FAST)
    await client.start()
    try:
        op = a.write("x", 1)
        with pytest.raises(SyncTimeout, match="ack of op 1"):
            await client.wait_acked(op, 0.5)
        assert op in a.outbox  # the write is kept
        assert client.state in (ConnectionState.CONNECTING, ConnectionState.DISCONNECTED)
        assert client.last_error and "cannot connect" in client.last_error
    finally:
        await client.stop()


async def test_refused_token_fails_the_client_for_good(
    relay_factory: type[RelayProcess], tmp_path
) -> None:  # type: ignore[no-untyped-def]
    secured = relay_factory(
        tmp_path / "sec", '[[tokens]]\ntoken = "good-token-123"\naccess = "write"\n'
    ).start()
    a = DocTarget("auth", "a")
    client = SyncClient(a, secured.url, "bad-token-456", settings=FAST)
    await client.start()
    try:
        with pytest.raises(AuthError, match="4001"):
            await client.synced(10)
        assert client.state is ConnectionState.FAILED
    finally:
        await client.stop()
    good = SyncClient(a, secured.url, "good-token-123", settings=FAST)
    await good.start()
    try:
        a.write("ok", 1)
        await good.synced(10)
    finally:
        await good.stop()


async def test_overflowing_subscriber_is_told_to_resync_and_catches_up(
    relay_factory: type[RelayProcess],
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    small = relay_factory(
        tmp_path / "small", "[limits]\nqueue_frames_max = 64\nqueue_bytes_max = 4096\n"
    ).start()
    a, slow = DocTarget("lag", "a"), DocTarget("lag", "slow")
    ca, _, _ = await connect_replica(small.url, a)
    cs, welcome, _ = await connect_replica(small.url, slow)
    try:
        frames = []
        for i in range(200):
            op = a.write(f"k{i}", "v" * 50)
            frames.append(signed_update(a, op, a.outbox[op].update))
        await asyncio.gather(*(ca.send(f) for f in frames))
        for _ in range(200):
            await ca.recv_until(lambda f: isinstance(f, wire.Ack), 20)
        _resync, before = await cs.recv_until(lambda f: isinstance(f, wire.ResyncRequired), 20)
        applied = 0
        for frame in before:
            for entry in (
                wire.BroadcastBatch((frame,)).entries
                if isinstance(frame, wire.Broadcast)
                else (frame.entries if isinstance(frame, wire.BroadcastBatch) else ())
            ):
                slow.apply_remote(entry.update, entry.seq)
                applied = entry.seq
        await cs.send(
            wire.Hello(
                1,
                slow.replica_id,
                slow.public_key,
                Seq(applied),
                slow.state_vector(),
                welcome.incarnation,
                "test-instance",
            )
        )
        again, _ = await cs.recv_until(lambda f: isinstance(f, wire.Welcome), 20)
        assert isinstance(again, wire.Welcome) and again.head_seq == 200
        while slow.applied_seq < 200:
            frame = await cs.recv(20)
            assert frame is not None
            if isinstance(frame, wire.Snapshot):
                slow.apply_remote(frame.update, frame.seq)
            elif isinstance(frame, wire.Broadcast | wire.BroadcastBatch):
                entries = frame.entries if isinstance(frame, wire.BroadcastBatch) else (frame,)
                for entry in entries:
                    slow.apply_remote(entry.update, entry.seq)
        assert slow.snapshot() == a.snapshot()
        assert "crdtstate_relay_resync_required_total 1.0" in small.metrics()
    finally:
        await ca.close()
        await cs.close()


async def test_clients_repair_a_relay_that_lost_its_data(relay: RelayProcess) -> None:
    targets = [DocTarget("lost", n) for n in ("a", "b")]
    clients = [SyncClient(t, relay.url, settings=FAST) for t in targets]
    for c in clients:
        await c.start()
    try:
        for i in range(20):
            for t in targets:
                t.write(f"{t.replica_id}{i}", i)
        await asyncio.gather(*(c.synced(10) for c in clients))
        old = targets[0].relay_incarnation
        relay.kill()
        shutil.rmtree(relay.data_dir)
        relay.start()
        await wait_until(
            lambda: all(t.relay_incarnation not in ("", old) for t in targets),
            15,
            "clients to see the new incarnation",
        )
        await asyncio.gather(*(c.synced(15) for c in clients))
        joiner = DocTarget("lost", "joiner")
        cj, _, _ = await connect_replica(relay.url, joiner)
        snap, _ = await cj.recv_until(lambda f: isinstance(f, wire.Snapshot))
        assert isinstance(snap, wire.Snapshot)
        joiner.apply_remote(snap.update, snap.seq)
        await cj.close()
        assert joiner.snapshot() == targets[0].snapshot() == targets[1].snapshot()
        assert len(joiner.snapshot()) == 40
    finally:
        for c in clients:
            await c.stop()


# -- the sans-I/O session over an in-memory transport ------------------------------------


class _ScriptedRelay:
    """Relay end of a memory pipe, driven by the test."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def expect(self, kind: type) -> wire.Frame:  # type: ignore[type-arg]
        while True:
            frame = wire.decode(await asyncio.wait_for(self.transport.receive(), 5))
            if isinstance(frame, kind):
                return frame

    async def send(self, frame: wire.Frame) -> None:
        await self.transport.send(wire.encode(frame))


async def test_session_applies_in_order_detects_gaps_and_resends_after_reconnect() -> None:
    relay_ends: asyncio.Queue[_ScriptedRelay] = asyncio.Queue()

    async def connector(url: str, token: str | None) -> Transport:
        client_end, relay_end = memory_pipe()
        relay_ends.put_nowait(_ScriptedRelay(relay_end))
        return client_end

    source = DocTarget("mem", "source")
    target = DocTarget("mem", "me")
    client = SyncClient(target, "ws://memory", settings=FAST, connector=connector)
    await client.start()
    try:
        relay = await asyncio.wait_for(relay_ends.get(), 5)
        hello = await relay.expect(wire.Hello)
        assert isinstance(hello, wire.Hello) and hello.last_seq == 0
        await relay.send(wire.SyncStep1(b"\x00"))
        await relay.send(wire.Welcome(1, Seq(2), "inc-1"))
        updates = []
        for i in range(4):
            before = source.doc.get_state()
            source.write(f"s{i}", i)
            updates.append(source.doc.get_update(before))
        await relay.send(wire.Broadcast(Seq(1), "source", updates[0]))
        await relay.send(wire.Broadcast(Seq(2), "source", updates[1]))
        await client.wait_seq(Seq(2), 5)
        assert client.state is ConnectionState.LIVE
        # A gap (3 missing): the session asks again with a hello from what it applied.
        await relay.send(wire.Broadcast(Seq(4), "source", updates[3]))
        again = await relay.expect(wire.Hello)
        assert isinstance(again, wire.Hello) and again.last_seq == 2
        await relay.send(wire.Welcome(1, Seq(4), "inc-1"))
        await relay.send(
            wire.BroadcastBatch(
                (
                    wire.Broadcast(Seq(3), "source", updates[2]),
                    wire.Broadcast(Seq(4), "source", updates[3]),
                )
            )
        )
        await client.wait_seq(Seq(4), 5)
        assert target.snapshot() == source.snapshot()
        # A local write is sent signed; the connection drops before the ack.
        op = target.write("mine", 1)
        sent = await relay.expect(wire.Update)
        assert isinstance(sent, wire.Update) and sent.op_id == op
        payload = wire.signing_payload("mem", "me", op, sent.update)
        target.key.public_key().verify(sent.signature, payload)
        await relay.transport.close(1006, "gone")
        relay = await asyncio.wait_for(relay_ends.get(), 5)
        hello = await relay.expect(wire.Hello)
        assert isinstance(hello, wire.Hello)
        assert (hello.last_seq, hello.incarnation) == (4, "inc-1")
        await relay.send(wire.Welcome(1, Seq(4), "inc-1"))
        resent = await relay.expect(wire.Update)
        assert isinstance(resent, wire.Update) and resent.op_id == op
        await relay.send(wire.Ack(OpId(op), Seq(5)))
        assert await client.wait_acked(op, 5) == 5
        await client.synced(5)
        assert target.applied_seq == 5 and not target.outbox
    finally:
        await client.stop()


async def test_session_retries_transient_refusals_and_reports_permanent_ones() -> None:
    target = DocTarget("mem", "me")
    session = SyncSession(target, SyncSettings(resend_delay_s=1.0))
    session.connection_made(0.0)
    session.receive(wire.encode(wire.Welcome(1, Seq(0), "i")), 0.0)
    first = target.write("a", 1)
    second = target.write("b", 2)
    sent = session.outbox_changed(0.0)
    assert [wire.decode(f).op_id for f in sent] == [first, second]  # type: ignore[union-attr]
    session.receive(
        wire.encode(wire.ErrorFrame(wire.ErrorCode.RATE_LIMITED, "slow down", OpId(first))), 0.1
    )
    session.receive(
        wire.encode(wire.ErrorFrame(wire.ErrorCode.INVALID_UPDATE, "bad", OpId(second))), 0.1
    )
    assert session.outbox_changed(0.5) == []  # still waiting
    resent = [wire.decode(f) for f in session.outbox_changed(1.2)]
    assert [f.op_id for f in resent] == [first]  # type: ignore[union-attr]
    assert second in session.rejected
    session.receive(wire.encode(wire.Ack(OpId(first), Seq(1))), 1.3)
    assert session.applied_seq == 1 and first not in target.outbox


async def test_session_treats_a_new_incarnation_as_state_loss_and_repairs() -> None:
    target = DocTarget("mem", "me")
    target.write("kept", 1)
    target.on_ack(OpId(1), Seq(7))
    target.note_applied(Seq(7))
    target.relay_incarnation = "old"
    session = SyncSession(target, SyncSettings())
    hello = wire.decode(session.connection_made(0.0)[0])
    assert isinstance(hello, wire.Hello) and (hello.last_seq, hello.incarnation) == (7, "old")
    session.receive(wire.encode(wire.SyncStep1(b"\x00")), 0.0)
    out = session.receive(wire.encode(wire.Welcome(1, Seq(0), "new")), 0.0)
    repair = wire.decode(out[0])
    assert (
        isinstance(repair, wire.Update) and repair.op_id == 0 and repair.update != wire.EMPTY_UPDATE
    )
    # The new incarnation is adopted for good only once the repair is acknowledged: a
    # replica restarted before that must see a new incarnation again, and repair again.
    assert session.applied_seq == 0 and target.relay_incarnation == "old"
    session.receive(wire.encode(wire.Ack(OpId(0), Seq(1))), 0.0)
    assert session.applied_seq == 1 and target.relay_incarnation == "new"


def test_backoff_is_capped_and_jittered() -> None:
    client = SyncClient(
        DocTarget("b", "b"),
        "ws://x",
        settings=SyncSettings(backoff_s_initial=0.1, backoff_s_max=2.0, backoff_jitter=0.5),
        rng=random.Random(7),
    )
    delays = [client._backoff_s(n) for n in range(12)]
    assert all(0.05 <= d <= 2.0 for d in delays)
    assert max(delays[8:]) <= 2.0 and min(delays[8:]) >= 1.0
    assert len(set(delays)) == len(delays)


async def test_memory_transport_reports_the_close_code() -> None:
    a, b = memory_pipe()
    await a.send(b"x")
    assert await b.receive() == b"x"
    await a.close(4010, "replaced")
    with pytest.raises(ConnectionClosed) as info:
        await b.receive()
    assert info.value.code == 4010
    with pytest.raises(ConnectionClosed):
        await b.send(b"y")


def test_relay_url_appends_the_namespace_path() -> None:
    assert relay_url("ws://h:1", "ns") == "ws://h:1/yjs/ns"
    assert relay_url("http://h:1/", "ns") == "ws://h:1/yjs/ns"
    assert relay_url("wss://h/yjs/other", "ns") == "wss://h/yjs/other"


async def test_raw_client_helper_sees_relay_step1(relay: RelayProcess) -> None:
    client = await RawClient.connect(relay.url, "step")
    try:
        assert isinstance(await client.recv(), wire.SyncStep1)
    finally:
        await client.close()


def _heartbeats(frames: list[bytes]) -> int:
    return sum(isinstance(wire.decode(f), wire.Heartbeat) for f in frames)


async def test_session_heartbeats_when_live_and_after_changes_but_not_faster() -> None:
    """Drift views need a fresh heartbeat soon after a replica catches up or is acked,
    without a heartbeat per write: changes are reported at most every min interval."""
    target = DocTarget("mem", "me")
    settings = SyncSettings(heartbeat_interval_s=10.0, heartbeat_min_interval_s=0.5)
    session = SyncSession(target, settings)
    session.connection_made(0.0)
    assert _heartbeats(session.tick(0.1)) == 0  # not welcomed yet: nothing to report
    session.receive(wire.encode(wire.Welcome(1, Seq(0), "i")), 0.2)
    assert _heartbeats(session.tick(0.3)) == 1  # went live
    assert _heartbeats(session.tick(0.4)) == 0  # nothing changed
    first = target.write("a", 1)
    session.outbox_changed(0.5)
    session.receive(wire.encode(wire.Ack(OpId(first), Seq(1))), 0.6)
    assert _heartbeats(session.tick(0.7)) == 0  # changed, but within the min interval
    assert _heartbeats(session.tick(0.9)) == 1  # the ack is reported
    assert _heartbeats(session.tick(5.0)) == 0
    assert _heartbeats(session.tick(11.0)) == 1  # the periodic one
