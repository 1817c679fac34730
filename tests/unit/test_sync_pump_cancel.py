"""Regression: the sync client's outbox pump must end when its connection ends.

Found by the chaos plugin (kill -9 of the relay while replicas write): on Python 3.11,
``asyncio.wait_for(event.wait(), t)`` swallows a cancel that arrives in the same loop step as
the event is set (a local write just as the connection drops). The pump then looped forever,
``_run_connection`` waited for it forever, and the replica never reconnected.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from crdtstate import GCounter, Replica, Schema
from crdtstate.sync.client import SyncClient


class Counter(Schema):
    hits = GCounter()


class _SilentTransport:
    async def send(self, frame: bytes) -> None:
        return None


async def test_pump_ends_when_cancelled_as_a_write_arrives(tmp_path: Path) -> None:
    replica = Replica.open(tmp_path, "pump", Counter, durability="sync")
    try:
        client = SyncClient(replica, "ws://127.0.0.1:9")
        for _ in range(20):  # the race is exact on 3.11: every round hits it
            pump = asyncio.create_task(client._pump(_SilentTransport()))
            await asyncio.sleep(0)
            client._outbox_event.set()
            pump.cancel()
            done, _pending = await asyncio.wait({pump}, timeout=2.0)
            assert pump in done, "the pump swallowed its cancellation"
            assert pump.cancelled()
    finally:
        replica.close()
