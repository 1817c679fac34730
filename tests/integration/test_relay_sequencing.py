"""Sequencing, dedupe, catch-up, snapshots and Yjs interop against a real relay process."""

from __future__ import annotations

import asyncio

from pycrdt import Doc, Map
from relay_helpers import (
    DocTarget,
    RawClient,
    RelayProcess,
    collect_broadcasts,
    connect_replica,
    signed_update,
    wait_until,
)

from crdtstate._ids import OpId
from crdtstate.sync import wire


def _is_ack(frame: wire.Frame) -> bool:
    return isinstance(frame, wire.Ack)


async def test_updates_get_consecutive_seqs_are_acked_and_not_echoed(relay: RelayProcess) -> None:
    a, b = DocTarget("seq", "a"), DocTarget("seq", "b")
    ca, _, _ = await connect_replica(relay.url, a)
    cb, _, _ = await connect_replica(relay.url, b)
    try:
        for i in range(5):
            op = a.write(f"k{i}", i)
            await ca.send(signed_update(a, op, a.outbox[op].update))
        acks = []
        for _ in range(5):
            ack, before = await ca.recv_until(_is_ack)
            assert not [f for f in before if isinstance(f, wire.Broadcast | wire.BroadcastBatch)]
            acks.append(ack)
        assert [(x.op_id, x.seq, x.duplicate) for x in acks] == [  # type: ignore[union-attr]
            (i + 1, i + 1, False) for i in range(5)
        ]
        got = await collect_broadcasts(cb, 5)
        assert [(x.seq, x.origin) for x in got] == [(i + 1, "a") for i in range(5)]
        for entry in got:
            b.apply_remote(entry.update, entry.seq)
        assert b.snapshot() == a.snapshot()
        # b writes: a's next stream frame is that broadcast (no echo of its own five).
        op = b.write("from-b", 1)
        await cb.send(signed_update(b, op, b.outbox[op].update))
        frame, _ = await ca.recv_until(lambda f: isinstance(f, wire.Broadcast))
        assert isinstance(frame, wire.Broadcast)
        assert (frame.seq, frame.origin) == (6, "b")
    finally:
        await ca.close()
        await cb.close()


async def test_resent_update_is_acked_with_its_original_seq_and_stored_once(
    relay: RelayProcess,
) -> None:
    a, b = DocTarget("dedupe", "a"), DocTarget("dedupe", "b")
    ca, _, _ = await connect_replica(relay.url, a)
    cb, _, _ = await connect_replica(relay.url, b)
    try:
        op1 = a.write("x", 1)
        frame = signed_update(a, op1, a.outbox[op1].update)
        await ca.send(frame)
        await ca.send(frame)  # resent on the same connection
        first, _ = await ca.recv_until(_is_ack)
        second, _ = await ca.recv_until(_is_ack)
        assert first == wire.Ack(OpId(1), wire.Seq(1), False)  # type: ignore[attr-defined]
        assert second == wire.Ack(OpId(1), wire.Seq(1), True)  # type: ignore[attr-defined]
        await ca.close()
        # ... and on a new connection, after a reconnect.
        ca, _, _ = await connect_replica(relay.url, a, last_seq=1)
        await ca.send(frame)
        again, _ = await ca.recv_until(_is_ack)
        assert again == wire.Ack(OpId(1), wire.Seq(1), True)  # type: ignore[attr-defined]
        op2 = a.write("y", 2)
        await ca.send(signed_update(a, op2, a.outbox[op2].update))
        ack2, _ = await ca.recv_until(_is_ack)
        assert isinstance(ack2, wire.Ack) and ack2.seq == 2
        got = await collect_broadcasts(cb, 2)
        assert [x.seq for x in got] == [1, 2]
        assert "crdtstate_relay_duplicate_updates_total 2.0" in relay.metrics()
    finally:
        await ca.close()
        await cb.close()


async def test_reconnecting_replica_receives_the_entries_after_its_last_seq(
    relay: RelayProcess,
) -> None:
    a, b = DocTarget("catchup", "a"), DocTarget("catchup", "b")
    ca, welcome, _ = await connect_replica(relay.url, a)
    try:
        for i in range(10):
            op = a.write(f"k{i}", i)
            await ca.send(signed_update(a, op, a.outbox[op].update))
            await ca.recv_until(_is_ack)
        # b had applied up to 4 in this incarnation: it gets exactly 5..10, as broadcasts.
        cb, welcome_b, _ = await connect_replica(
            relay.url, b, last_seq=4, incarnation=welcome.incarnation
        )
        assert welcome_b.head_seq == 10
        got = await collect_broadcasts(cb, 6)
        assert [x.seq for x in got] == list(range(5, 11))
        await cb.close()
    finally:
        await ca.close()


async def test_late_joiner_catches_up_through_a_snapshot_and_then_live(
    relay: RelayProcess,
) -> None:
    a = DocTarget("late", "a")
    ca, _, _ = await connect_replica(relay.url, a)
    try:
        for i in range(30):
            op = a.write(f"k{i}", i)
            await ca.send(signed_update(a, op, a.outbox[op].update))
        for _ in range(30):
            await ca.recv_until(_is_ack)
        status, body = relay.http("POST", "/admin/namespaces/late/snapshot")
        assert status == 200 and '"seq": 30' in body
        # Restart: the new process loads snapshot + tail.
        assert relay.terminate() == 0
        relay.start()
        late = DocTarget("late", "late")
        cl, welcome, _ = await connect_replica(relay.url, late)
        assert welcome.head_seq == 30
        snap, _ = await cl.recv_until(lambda f: isinstance(f, wire.Snapshot))
        assert isinstance(snap, wire.Snapshot) and snap.seq == 30
        late.apply_remote(snap.update, snap.seq)
        assert late.snapshot() == a.snapshot()
        ca2, _, _ = await connect_replica(relay.url, a, last_seq=30)
        op = a.write("after", True)
        await ca2.send(signed_update(a, op, a.outbox[op].update))
        got = await collect_broadcasts(cl, 1)
        assert got[0].seq == 31
        await cl.close()
        await ca2.close()
    finally:
        await ca.close()


async def test_plain_yjs_client_and_replica_see_each_others_writes(relay: RelayProcess) -> None:
    a = DocTarget("yjs", "a")
    ca, _, _ = await connect_replica(relay.url, a)
    op = a.write("from-replica", 1)
    await ca.send(signed_update(a, op, a.outbox[op].update))
    await ca.recv_until(_is_ack)
    y = await RawClient.connect(relay.url, "yjs")
    try:
        step1 = await y.recv()
        assert isinstance(step1, wire.SyncStep1)
        doc: Doc = Doc()
        ymap = doc.get("m", type=Map)
        await y.send(wire.SyncStep1(doc.get_state()))
        await y.send(wire.SyncStep2(doc.get_update(step1.state_vector)))  # empty: ignored
        step2, _ = await y.recv_until(lambda f: isinstance(f, wire.SyncStep2))
        assert isinstance(step2, wire.SyncStep2)
        doc.apply_update(step2.update)
        assert ymap.to_py() == {"from-replica": 1}
        before = doc.get_state()
        ymap["from-yjs"] = 2
        await y.send(wire.SyncUpdate(doc.get_update(before)))
        got = await collect_broadcasts(ca, 1)
        assert got[0].origin.startswith("yjs:") and got[0].seq == 2
        a.apply_remote(got[0].update, got[0].seq)
        assert a.snapshot() == {"from-replica": 1, "from-yjs": 2}
        op = a.write("again", 3)
        await ca.send(signed_update(a, op, a.outbox[op].update))
        upd, _ = await y.recv_until(lambda f: isinstance(f, wire.SyncUpdate))
        assert isinstance(upd, wire.SyncUpdate)
        doc.apply_update(upd.update)
        assert ymap.to_py() == a.snapshot()
    finally:
        await y.close()
        await ca.close()


async def test_awareness_is_forwarded_and_cleared_on_disconnect(relay: RelayProcess) -> None:
    y1 = await RawClient.connect(relay.url, "aw")
    y2 = await RawClient.connect(relay.url, "aw")
    try:
        for y in (y1, y2):
            await y.send(wire.SyncStep1(b"\x00"))
            await y.recv_until(lambda f: isinstance(f, wire.SyncStep2))
        state = wire.encode_awareness_update([wire.AwarenessEntry(77, 1, '{"user":"x"}')])
        await y1.send(wire.Awareness(state))
        frame, _ = await y2.recv_until(lambda f: isinstance(f, wire.Awareness))
        assert isinstance(frame, wire.Awareness)
        assert wire.decode_awareness_update(frame.update)[0].client_id == 77
        await y2.send(wire.QueryAwareness())
        frame, _ = await y2.recv_until(lambda f: isinstance(f, wire.Awareness))
        assert isinstance(frame, wire.Awareness)
        assert [e.client_id for e in wire.decode_awareness_update(frame.update)] == [77]
        await y1.close()
        frame, _ = await y2.recv_until(lambda f: isinstance(f, wire.Awareness))
        assert isinstance(frame, wire.Awareness)
        gone = wire.decode_awareness_update(frame.update)
        assert [(e.client_id, e.state) for e in gone] == [(77, "null")]
    finally:
        await y1.close()
        await y2.close()


async def test_lagging_subscriber_gets_coalesced_batches(relay: RelayProcess) -> None:
    a, b = DocTarget("batch", "a"), DocTarget("batch", "b")
    ca, _, _ = await connect_replica(relay.url, a)
    cb, _, _ = await connect_replica(relay.url, b)
    try:
        frames = []
        for i in range(300):
            op = a.write(f"k{i}", i)
            frames.append(signed_update(a, op, a.outbox[op].update))
        # Send everything at once while b does not read.
        await asyncio.gather(*(ca.send(f) for f in frames))
        for _ in range(300):
            await ca.recv_until(_is_ack)
        received: list[wire.Frame] = []
        seqs: list[int] = []
        while len(seqs) < 300:
            frame = await cb.recv(10)
            assert frame is not None
            received.append(frame)
            if isinstance(frame, wire.BroadcastBatch):
                seqs.extend(e.seq for e in frame.entries)
            elif isinstance(frame, wire.Broadcast):
                seqs.append(frame.seq)
        assert seqs == list(range(1, 301))
        assert any(isinstance(f, wire.BroadcastBatch) for f in received)
    finally:
        await ca.close()
        await cb.close()


async def test_healthz_reports_ok(relay: RelayProcess) -> None:
    status, body = relay.http("GET", "/healthz")
    assert status == 200 and '"status": "ok"' in body
    await wait_until(lambda: relay.alive(), 1, "relay alive")


async def test_pycrdt_websocket_provider_syncs_through_the_relay_unchanged(
    relay: RelayProcess,
) -> None:
    import aiohttp
    from pycrdt import Provider
    from pycrdt.websocket.websocket import HttpxWebsocket

    a = DocTarget("provider", "a")
    ca, _, _ = await connect_replica(relay.url, a)
    op = a.write("from-replica", 1)
    await ca.send(signed_update(a, op, a.outbox[op].update))
    await ca.recv_until(_is_ack)
    doc: Doc = Doc()
    ymap = doc.get("m", type=Map)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{relay.url}/yjs/provider")
        async with Provider(doc, HttpxWebsocket(ws, "provider")) as provider:
            await asyncio.wait_for(provider.synced.wait(), 10)
            await wait_until(lambda: ymap.to_py() == {"from-replica": 1}, 10, "initial sync")
            ymap["from-provider"] = 2
            # The provider may first echo what it received (sequenced too, harmless).
            # Broadcasts may arrive batched, so every entry of a frame is applied.
            for _ in range(5):
                for entry in await collect_broadcasts(ca, 1):
                    assert entry.origin.startswith("yjs:")
                    a.apply_remote(entry.update, entry.seq)
                if "from-provider" in a.snapshot():
                    break
            assert a.snapshot() == {"from-replica": 1, "from-provider": 2}
            op = a.write("live", 3)
            await ca.send(signed_update(a, op, a.outbox[op].update))
            await wait_until(lambda: ymap.to_py() == a.snapshot(), 10, "live update")
        await ws.close()
    await ca.close()
