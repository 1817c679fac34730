"""Guardrails: size and rate limits, document quota, namespace cap with idle eviction,
periodic snapshots and trimming only below the watermark."""

from __future__ import annotations

import json

from relay_helpers import (
    DocTarget,
    RawClient,
    RelayProcess,
    collect_broadcasts,
    connect_replica,
    heartbeat_json,
    metric_value,
    signed_update,
    wait_until,
)

from crdtstate._ids import OpId
from crdtstate.sync import wire

LIMITS = """
[limits]
frame_bytes_max = 20000
update_bytes_max = 4096
conn_updates_per_s = 5
conn_updates_burst = 10
namespaces_in_memory_max = 2
namespace_idle_s = 0.2

[namespaces."quota-*"]
doc_bytes_max = 3000
"""


async def _errors(client: RawClient, count: int) -> list[wire.ErrorFrame]:
    found: list[wire.ErrorFrame] = []
    while len(found) < count:
        frame, _ = await client.recv_until(lambda f: isinstance(f, wire.ErrorFrame))
        assert isinstance(frame, wire.ErrorFrame)
        found.append(frame)
    return found


async def test_size_rate_and_quota_limits_answer_with_error_frames(
    relay_factory: type[RelayProcess],
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    relay = relay_factory(tmp_path / "limits", LIMITS).start()
    a = DocTarget("limit-a", "a")
    client, _, _ = await connect_replica(relay.url, a)
    try:
        op = a.write("big", "x" * 5000)
        await client.send(signed_update(a, op, a.outbox[op].update))
        (err,) = await _errors(client, 1)
        assert (err.code, err.op_id) == (wire.ErrorCode.UPDATE_TOO_LARGE, op)
        # A burst above the per-connection rate: some are refused, the connection stays.
        frames = []
        for i in range(30):
            op = a.write(f"k{i}", i)
            frames.append(signed_update(a, op, a.outbox[op].update))
        for f in frames:
            await client.send(f)
        acked = refused = 0
        while acked + refused < 30:
            frame = await client.recv(10)
            assert frame is not None
            if isinstance(frame, wire.Ack):
                acked += 1
            elif isinstance(frame, wire.ErrorFrame):
                assert frame.code == wire.ErrorCode.RATE_LIMITED
                refused += 1
        assert acked >= 1 and refused >= 1
        # A frame above the websocket limit closes with 1009.
        await client.send(wire.SyncUpdate(b"\x00" * 30000))
        assert await client.closed_code() == 1009
    finally:
        await client.close()
    q = DocTarget("quota-1", "q")
    qc, _, _ = await connect_replica(relay.url, q)
    try:
        codes = []
        for i in range(5):
            op = q.write(f"k{i}", "y" * 900)
            await qc.send(signed_update(q, op, q.outbox[op].update))
            frame, _ = await qc.recv_until(lambda f: isinstance(f, wire.Ack | wire.ErrorFrame))
            codes.append(frame.code if isinstance(frame, wire.ErrorFrame) else "ack")
        assert codes[0] == "ack" and wire.ErrorCode.QUOTA_EXCEEDED in codes
    finally:
        await qc.close()
    text = relay.metrics()
    for reason in ("too_large", "rate_conn", "quota", "frame_too_large"):
        assert metric_value(text, "crdtstate_relay_rejects_total", f'reason="{reason}"') >= 1, (
            reason
        )


async def test_namespace_cap_evicts_idle_namespaces_and_refuses_when_all_are_busy(
    relay_factory: type[RelayProcess],
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    relay = relay_factory(tmp_path / "cap", LIMITS).start()
    held = []
    try:
        for name in ("cap-1", "cap-2"):
            client, _, _ = await connect_replica(relay.url, DocTarget(name, "r"))
            held.append(client)
        third = await RawClient.connect(relay.url, "cap-3")
        assert await third.closed_code() == wire.CloseCode.OVERLOADED
        await third.close()
        await held.pop().close()
        await wait_until(
            lambda: metric_value(relay.metrics(), "crdtstate_relay_namespace_evictions_total") >= 1,
            10,
            "the idle namespace to be evicted",
        )
        writer = DocTarget("cap-3", "w")
        client, _, _ = await connect_replica(relay.url, writer)
        held.append(client)
        op = writer.write("x", 1)
        await client.send(signed_update(writer, op, writer.outbox[op].update))
        ack, _ = await client.recv_until(lambda f: isinstance(f, wire.Ack))
        assert isinstance(ack, wire.Ack) and ack.seq == 1
    finally:
        for c in held:
            await c.close()


async def test_periodic_snapshots_trim_only_below_the_watermark(
    relay_factory: type[RelayProcess],
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    relay = relay_factory(
        tmp_path / "snap", "[snapshot]\nevery_updates = 20\nevery_s = 3600\n"
    ).start()
    writer, laggard = DocTarget("snap", "w"), DocTarget("snap", "laggard")
    lag_client, first, _ = await connect_replica(relay.url, laggard)  # applied 0, stays connected
    client, _, _ = await connect_replica(relay.url, writer)
    try:
        for i in range(50):
            op = writer.write(f"k{i}", i)
            await client.send(signed_update(writer, op, writer.outbox[op].update))
        for _ in range(50):
            await client.recv_until(lambda f: isinstance(f, wire.Ack))
        await wait_until(
            lambda: metric_value(relay.metrics(), "crdtstate_relay_snapshots_total") >= 1,
            10,
            "a periodic snapshot",
        )
        status, body = relay.http("POST", "/admin/namespaces/snap/snapshot")
        result = json.loads(body)
        assert status == 200 and result["seq"] == 50
        assert (result["watermark"], result["trimmed"]) == (0, 0)  # the laggard holds it
        await lag_client.send(wire.Heartbeat(heartbeat_json(40)))
        await client.send(wire.Heartbeat(heartbeat_json(50)))
        trimmed_total = []

        async def moved() -> bool:
            status, body = relay.http("POST", "/admin/namespaces/snap/snapshot")
            data = json.loads(body)
            trimmed_total.append(data["trimmed"])
            return status == 200 and data["watermark"] == 40

        await wait_until(moved, 10, "the watermark to follow the heartbeats")
        assert sum(trimmed_total) == 40  # entries 1..40: applied by every live replica
        # The laggard, at 40, catches up with exactly the entries it lacks.
        await lag_client.close()
        again, welcome, _ = await connect_replica(
            relay.url, laggard, last_seq=40, incarnation=first.incarnation
        )
        got = await collect_broadcasts(again, 10)
        await again.close()
        assert welcome.head_seq == 50 and [b.seq for b in got] == list(range(41, 51))
        late = DocTarget("snap", "late")
        lc, _, _ = await connect_replica(relay.url, late)
        snap, _ = await lc.recv_until(lambda f: isinstance(f, wire.Snapshot))
        assert isinstance(snap, wire.Snapshot)
        late.apply_remote(snap.update, snap.seq)
        assert late.snapshot() == writer.snapshot()
        await lc.close()
        # Restart: loads snapshot + tail and keeps numbering.
        assert relay.terminate() == 0
        relay.start()
        client2, welcome2, _ = await connect_replica(relay.url, writer, last_seq=50)
        op = writer.write("after", 1)
        await client2.send(signed_update(writer, op, writer.outbox[op].update))
        ack, _ = await client2.recv_until(lambda f: isinstance(f, wire.Ack))
        assert welcome2.head_seq == 50 and ack == wire.Ack(OpId(op), wire.Seq(51), False)  # type: ignore[attr-defined]
        await client2.close()
    finally:
        await client.close()
        await lag_client.close()
