"""Durability: SIGKILL mid-stream loses nothing acknowledged; SIGTERM drains cleanly."""

from __future__ import annotations

import asyncio
import contextlib

from relay_helpers import (
    DocTarget,
    RawClient,
    RelayProcess,
    connect_replica,
    signed_update,
    wait_until,
)

from crdtstate._ids import OpId, Seq
from crdtstate.sync import wire
from crdtstate.sync.client import SyncClient
from crdtstate.sync.session import SyncSettings

FAST = SyncSettings(backoff_s_initial=0.05, backoff_s_max=0.5, heartbeat_interval_s=0.5)


async def _writer(
    client: RawClient, target: DocTarget, acked: dict[OpId, Seq], stop: asyncio.Event
) -> None:
    """Send signed writes as fast as acks allow (window 32) until the socket dies."""

    async def reader() -> None:
        while True:
            frame = await client.recv(30)
            if frame is None:
                return
            if isinstance(frame, wire.Ack):
                acked[frame.op_id] = frame.seq

    read = asyncio.create_task(reader())
    try:
        for i in range(5000):
            if stop.is_set() or read.done():
                break
            op = target.write(f"{target.replica_id}-{i}", i)
            try:
                await client.send(signed_update(target, op, target.outbox[op].update))
            except (ConnectionError, RuntimeError):
                break
            while len(target.outbox) - len(acked) > 32 and not read.done():
                await asyncio.sleep(0.001)
        await asyncio.wait_for(read, 30)
    finally:
        read.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await read


async def test_sigkill_mid_stream_loses_nothing_acknowledged(relay: RelayProcess) -> None:
    targets = [DocTarget("crash", f"w{i}") for i in range(3)]
    acked: list[dict[OpId, Seq]] = [{} for _ in targets]
    stop = asyncio.Event()
    clients = [(await connect_replica(relay.url, t))[0] for t in targets]
    tasks = [
        asyncio.create_task(_writer(c, t, a, stop))
        for c, t, a in zip(clients, targets, acked, strict=True)
    ]
    try:
        await wait_until(lambda: sum(map(len, acked)) >= 300, 30, "300 acks before the kill")
        relay.kill()  # SIGKILL while every writer still has updates in flight
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        stop.set()
        for c in clients:
            await c.close()
    relay.start()
    joiner = DocTarget("crash", "joiner")
    client, welcome, _ = await connect_replica(relay.url, joiner)
    try:
        snap, _ = await client.recv_until(lambda f: isinstance(f, wire.Snapshot))
        assert isinstance(snap, wire.Snapshot)
        joiner.apply_remote(snap.update, snap.seq)
        content = joiner.snapshot()
        all_acked = [
            (t, op, seq) for t, a in zip(targets, acked, strict=True) for op, seq in a.items()
        ]
        assert len(all_acked) >= 300
        assert welcome.head_seq >= max(seq for _, _, seq in all_acked)
        for target, op, _seq in all_acked:
            key = target.outbox[op].op["set"]
            assert key in content, f"acked write {key} lost"
        # Resending an acked op gives back its original seq.
        target, op, seq = all_acked[len(all_acked) // 2]
        resend, _, _ = await connect_replica(relay.url, target, last_seq=int(welcome.head_seq))
        await resend.send(signed_update(target, op, target.outbox[op].update))
        ack, _ = await resend.recv_until(lambda f: isinstance(f, wire.Ack))
        assert ack == wire.Ack(op, seq, True)
        await resend.close()
    finally:
        await client.close()


async def test_sync_clients_converge_after_the_relay_is_killed_and_restarted(
    relay: RelayProcess,
) -> None:
    targets = [DocTarget("restart", name) for name in ("executor", "supervisor", "dashboard")]
    clients = [SyncClient(t, relay.url, settings=FAST) for t in targets]
    for c in clients:
        await c.start()
    try:
        for i in range(50):
            for t in targets:
                t.write(f"{t.replica_id}-{i}", i)
        await asyncio.gather(*(c.synced(20) for c in clients))
        relay.kill()
        # Writes keep working while the relay is down.
        for i in range(50, 80):
            for t in targets:
                t.write(f"{t.replica_id}-{i}", i)
        await wait_until(
            lambda: all(c.state.value == "connecting" or c.reconnects > 0 for c in clients),
            10,
            "clients noticing the relay is gone",
        )
        relay.start()
        await asyncio.gather(*(c.synced(30) for c in clients))
        views = [t.snapshot() for t in targets]
        assert views[0] == views[1] == views[2]
        assert len(views[0]) == 3 * 80
        assert all(not t.outbox for t in targets)
        assert all(c.reconnects >= 1 for c in clients)
    finally:
        for c in clients:
            await c.stop()


async def test_sigterm_drains_acks_closes_with_1001_and_exits_0(relay: RelayProcess) -> None:
    a, b = DocTarget("drain", "a"), DocTarget("drain", "b")
    ca, _, _ = await connect_replica(relay.url, a)
    cb, _, _ = await connect_replica(relay.url, b)
    try:
        frames = []
        for i in range(200):
            op = a.write(f"k{i}", i)
            frames.append(signed_update(a, op, a.outbox[op].update))
        for f in frames:
            await ca.send(f)
        first_ack, _ = await ca.recv_until(lambda f: isinstance(f, wire.Ack))
        assert relay.proc is not None
        relay.proc.send_signal(15)
        acked: dict[OpId, Seq] = {}
        assert isinstance(first_ack, wire.Ack)
        acked[first_ack.op_id] = first_ack.seq
        while True:
            frame = await ca.recv(20)
            if frame is None:
                break
            if isinstance(frame, wire.Ack):
                acked[frame.op_id] = frame.seq
        assert ca.close_code == wire.CloseCode.GOING_AWAY
        assert await cb.closed_code(20) == wire.CloseCode.GOING_AWAY
        assert relay.proc.wait(timeout=20) == 0
    finally:
        await ca.close()
        await cb.close()
    relay.start()
    joiner = DocTarget("drain", "joiner")
    client, welcome, _ = await connect_replica(relay.url, joiner)
    try:
        snap, _ = await client.recv_until(lambda f: isinstance(f, wire.Snapshot))
        assert isinstance(snap, wire.Snapshot)
        joiner.apply_remote(snap.update, snap.seq)
        for op in acked:
            assert a.outbox[op].op["set"] in joiner.snapshot()
        assert welcome.head_seq >= len(acked)
    finally:
        await client.close()
