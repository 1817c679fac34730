"""Reconnect storm: 500 replicas connect, say hello and vanish, three times over; the relay's
memory stays bounded and every connection is cleaned up."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from relay_helpers import (
    DocTarget,
    RelayProcess,
    connect_replica,
    hello_for,
    metric_value,
    signed_update,
    wait_until,
)

from crdtstate.sync import wire

CLIENTS = 500
ROUNDS = 3
MIB = 1024 * 1024


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    target: DocTarget,
    gate: asyncio.Semaphore,
    abort: bool,
) -> bool:
    async with gate:
        ws = await session.ws_connect(f"{url}/yjs/storm", max_msg_size=0)
    try:
        await ws.send_bytes(wire.encode(hello_for(target)))
        got_snapshot = False
        for _ in range(10):
            msg = await ws.receive(timeout=60)
            if msg.type is not aiohttp.WSMsgType.BINARY:
                break
            if isinstance(wire.decode(msg.data), wire.Snapshot):
                got_snapshot = True
                break
        return got_snapshot
    finally:
        if abort and ws._response.connection is not None:  # vanish without a close frame
            ws._response.connection.transport.abort()  # type: ignore[union-attr]
        else:
            with contextlib.suppress(Exception):
                await ws.close()


async def test_reconnect_storm_of_500_clients_keeps_relay_memory_bounded(
    relay: RelayProcess,
) -> None:
    writer = DocTarget("storm", "writer")
    client, _, _ = await connect_replica(relay.url, writer)
    for i in range(2000):
        op = writer.write(f"k{i}", "x" * 20)
        await client.send(signed_update(writer, op, writer.outbox[op].update))
    for _ in range(2000):
        await client.recv_until(lambda f: isinstance(f, wire.Ack), 30)
    await client.close()
    targets = [DocTarget("storm", f"r{i}") for i in range(CLIENTS)]
    rss: list[int] = [relay.rss_bytes()]
    gate = asyncio.Semaphore(100)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for round_no in range(ROUNDS):
            results = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        _one(session, relay.url, t, gate, abort=(i + round_no) % 2 == 0)
                        for i, t in enumerate(targets)
                    )
                ),
                120,
            )
            assert all(results), "every client got its catch-up snapshot"

            def connections_closed() -> bool:
                text = relay.metrics()
                return (
                    sum(
                        metric_value(text, "crdtstate_relay_connections", f'kind="{k}"')
                        for k in ("pending", "yjs", "replica")
                    )
                    == 0
                )

            await wait_until(connections_closed, 60, "relay to drop every storm connection")
            rss.append(relay.rss_bytes())
    assert relay.alive()
    print(f"relay RSS MiB: {[round(r / MIB, 1) for r in rss]}")
    # Later rounds reuse what the first one allocated: no growth per round.
    assert rss[-1] < rss[1] + 40 * MIB, rss
    assert max(rss) < 400 * MIB, rss
