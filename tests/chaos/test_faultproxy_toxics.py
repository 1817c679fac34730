"""Toxic behaviour measured on the wire (spec §11 C01-C20).

A real client talks through a real FaultProxyServer to a real echo (or sink) server on
127.0.0.1. Times are lower bounds with generous upper bounds only; "nothing arrives" is
checked over a short window; connection ends are read from the sockets.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from chaos.faultproxy import FaultProxyServer
from chaos.faultproxy.testing import EchoServer, wait_until

pytestmark = pytest.mark.timeout(30)

SLACK_S = 2.0
"""Generous upper-bound slack on a loaded 2-core machine; lower bounds are strict."""


class Api:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        async with self.session.request(method, path, data=data) as response:
            assert response.status < 300, (response.status, await response.read())
            raw = await response.read()
            return json.loads(raw) if raw else None

    async def proxy(self, name: str, upstream: str) -> int:
        proxy = await self.call(
            "POST", "/proxies", {"name": name, "upstream": upstream, "listen": "127.0.0.1:0"}
        )
        return int(proxy["listen"].rsplit(":", 1)[1])

    async def toxic(self, proxy: str, type_: str, stream: str = "downstream", **fields: Any) -> Any:
        return await self.call(
            "POST", f"/proxies/{proxy}/toxics", {"type": type_, "stream": stream, **fields}
        )


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with (
        FaultProxyServer("127.0.0.1", 0, seed=11) as server,
        aiohttp.ClientSession(base_url=server.url) as s,
    ):
        yield Api(s)


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    async with EchoServer() as server:
        yield server


@pytest.fixture
async def sink() -> AsyncIterator[EchoServer]:
    async with EchoServer(echo=False) as server:
        yield server


Connect = Callable[[int], Awaitable["Client"]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Open client connections through the proxy; all are closed at teardown."""
    opened: list[Client] = []

    async def open_client(port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opened.append(Client(reader, writer))
        return opened[-1]

    yield open_client
    for client in opened:
        client.close()


class Client:
    """A client connection through the proxy, with timing helpers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def round_trip_s(self, data: bytes = b"ping") -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self.send(data)
        assert await asyncio.wait_for(self.reader.readexactly(len(data)), 10) == data
        return loop.time() - started

    async def read_to_eof(self, timeout_s: float = 5) -> bytes:
        return await asyncio.wait_for(self.reader.read(), timeout_s)

    async def nothing_within(self, window_s: float) -> bool:
        try:
            data = await asyncio.wait_for(self.reader.read(1), window_s)
        except TimeoutError:
            return True
        raise AssertionError(f"expected silence, read {data!r}")

    def close(self) -> None:
        self.writer.transport.abort()


# -- latency -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("streams", "minimum_s"),
    [(("downstream",), 0.1), (("upstream",), 0.1), (("upstream", "downstream"), 0.2)],
)
async def test_latency_delays_the_round_trip(
    api: Api, echo: EchoServer, streams: tuple[str, ...], minimum_s: float, connect: Connect
) -> None:
    port = await api.proxy("p", echo.address)
    for stream in streams:
        await api.toxic("p", "latency", stream, attributes={"latency": 100})
    client = await connect(port)
    elapsed = await client.round_trip_s()
    assert minimum_s <= elapsed < minimum_s + SLACK_S
    client.close()


async def test_two_latency_toxics_on_one_stream_add_up(
    api: Api, echo: EchoServer, connect: Connect
) -> None:
    port = await api.proxy("p", echo.address)
    await api.toxic("p", "latency", name="latency_downstream", attributes={"latency": 100})
    await api.toxic("p", "latency", name="second_latency_downstream", attributes={"latency": 100})
    client = await connect(port)
    elapsed = await client.round_trip_s()
    assert 0.2 <= elapsed < 0.2 + SLACK_S
    client.close()


async def test_jitter_stays_within_latency_plus_or_minus_jitter(
    api: Api, echo: EchoServer, connect: Connect
) -> None:
    port = await api.proxy("p", echo.address)
    await api.toxic("p", "latency", attributes={"latency": 100, "jitter": 50})
    client = await connect(port)
    for _ in range(5):
        elapsed = await client.round_trip_s()
        assert 0.05 <= elapsed < 0.15 + SLACK_S
    client.close()


async def test_latency_delays_but_does_not_throttle_a_stream(
    api: Api, echo: EchoServer, connect: Connect
) -> None:
    port = await api.proxy("p", echo.address)
    await api.toxic("p", "latency", attributes={"latency": 100})
    client = await connect(port)
    payload = bytes(range(256)) * 4096 * 4  # 4 MiB, ~128 chunks of 32 KiB
    loop = asyncio.get_running_loop()
    started = loop.time()
    sender = asyncio.create_task(client.send(payload))
    received = await asyncio.wait_for(client.reader.readexactly(len(payload)), 20)
    elapsed = loop.time() - started
    await sender
    assert received == payload
    # Throttled to one 32 KiB chunk per 100 ms this would take > 12 s.
    assert 0.1 <= elapsed < 6.0
    client.close()


async def test_removing_latency_releases_held_chunks_at_once_in_order(
    api: Api, echo: EchoServer, connect: Connect
) -> None:
    port = await api.proxy("p", echo.address)
    await api.toxic("p", "latency", attributes={"latency": 20_000})
    client = await connect(port)
    for part in (b"one,", b"two,", b"three"):
        await client.send(part)
    await wait_until(
        lambda: len(echo.peers) == 1 and len(echo.peers[0].received) == 13, what="echo got all"
    )
    assert await client.nothing_within(0.1)
    await api.call("DELETE", "/proxies/p/toxics/latency_downstream")
    assert await asyncio.wait_for(client.reader.readexactly(13), SLACK_S) == b"one,two,three"
    client.close()


async def test_latency_toxicity_zero_then_one_on_a_live_connection(
    api: Api, echo: EchoServer, connect: Connect
) -> None:
    port = await api.proxy("p", echo.address)
    await api.toxic("p", "latency", toxicity=0, attributes={"latency": 3000})
    client = await connect(port)
    assert await client.round_trip_s() < 3.0  # inactive: no 3 s delay
    await api.call(
        "PATCH",
        "/proxies/p/toxics/latency_downstream",
        {"toxicity": 1, "attributes": {"latency": 200}},
    )
    assert 0.2 <= await client.round_trip_s() < 0.2 + SLACK_S
    client.close()


# -- bandwidth ---------------------------------------------------------------------------------


async def test_bandwidth_1000_kbps_takes_at_least_480_ms_for_480_kb(
    api: Api, sink: EchoServer, connect: Connect
) -> None:
    port = await api.proxy("p", sink.address)
    await api.toxic("p", "bandwidth", "upstream", attributes={"rate": 1000})
    client = await connect(port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await client.send(b"b" * 480_000)
    await wait_until(
        lambda: sink.peers and len(sink.peers[0].received) == 480_000, timeout_s=10, what="480 kB"
    )
    elapsed = loop.time() - started
    assert 0.48 <= elapsed < 0.48 * 1.25 + SLACK_S
    client.close()


async def test_bandwidth_zero_stalls_without_loss_until_removed(
    api: Api, sink: EchoServer, connect: Connect
) -> None:
    port = await api.proxy("p", sink.address)
    await api.toxic("p", "bandwidth", "upstream", attributes={"rate": 0})
    client = await connect(port)
    payload = bytes(range(251)) * 400
    client.writer.write(payload)
    await wait_until(lambda: len(sink.peers) == 1, what="upstream connection")
    assert await client.nothing_within(0.3)  # no EOF: the connection stays open
    assert bytes(sink.peers[0].received) == b""
    await api.call("DELETE", "/proxies/p/toxics/bandwidth_upstream")
    await wait_until(lambda: len(sink.peers[0].received) == len(payload), what="backlog delivered")
    assert bytes(sink.peers[0].received) == payload
    client.close()


# -- slow_close ---------------------------------------------------------------------------------


async def test_slow_close_delays_the_close_not_the_data(
    api: Api, sink: EchoServer, connect: Connect
) -> None:
    port = await api.proxy("p", sink.address)
    await api.toxic("p", "slow_close", "upstream", attributes={"delay": 300})
    client = await connect(port)
    await client.send(b"data first")
    await wait_until(
        lambda: sink.peers and bytes(sink.peers[0].received) == b"data first", timeout_s=SLACK_S
    )
    loop = asyncio.get_running_loop()
    closed_at = loop.time()
    client.writer.close()
    await asyncio.wait_for(sink.peers[0].closed.wait(), 5)
    assert 0.3 <= loop.time() - closed_at < 0.3 + SLACK_S


# -- timeout -----------------------------------------------------------------------------------


async def test_timeout_zero_blackholes_until_removed_then_both_sides_end(
    api: Api, sink: EchoServer, connect: Connect
) -> None:
    port = await api.proxy("p", sink.address)
    await api.toxic("p", "timeout", "upstream", attributes={"timeout": 0})
    client = await connect(port)
    for _ in range(10):
        await client.send(b"x" * 1000)  # writes succeed
    await wait_until(lambda: len(sink.peers) == 1, what="upstream connection")
    assert await client.nothing_within(0.5)
    assert bytes(sink.peers[0].received) == b"" and not sink.peers[0].closed.is_set()
    await api.call("DELETE", "/proxies/p/toxics/timeout_upstream")
    assert await client.read_to_eof(SLACK_S) == b""
    await asyncio.wait_for(sink.peers[0].closed.wait(), SLACK_S)
    assert bytes(sink.peers[0].received) == b""


async def test_timeout_closes_an_idle_connection_and_traffic_keeps_it_open(
    api: Api, echo: EchoServer, connect: Connect
) -> None:
    port = await api.proxy("p", echo.address)
    await api.toxic("p", "timeout", "downstream", attributes={"timeout": 100})
    loop = asyncio.get_running_loop()
    idle = await connect(port)
    opened_at = loop.time()
    assert await idle.read_to_eof() == b""
    assert 0.1 <= loop.time() - opened_at < 0.1 + SLACK_S
    await api.call(
        "PATCH", "/proxies/p/toxics/timeout_downstream", {"attributes": {"timeout": 400}}
    )
    busy = await connect(port)
    for _ in range(30):  # replies every 20 ms for 0.6 s keep restarting the 400 ms idle timer
        busy.writer.write(b"tick")
        last_sent = loop.time()
        await asyncio.sleep(0.02)
    assert await busy.nothing_within(0.01)  # still open, replies swallowed
    assert await busy.read_to_eof() == b""
    assert loop.time() - last_sent >= 0.4
    busy.close()


async def test_reset_closes_blackholed_connections_and_spares_others(
    api: Api, echo: EchoServer, connect: Connect
) -> None:
    holed_port = await api.proxy("holed", echo.address)
    fine_port = await api.proxy("fine", echo.address)
    await api.toxic("holed", "timeout", "upstream", attributes={"timeout": 0})
    await api.toxic("fine", "latency", "upstream", attributes={"latency": 1})
    holed, fine = await connect(holed_port), await connect(fine_port)
    await holed.send(b"lost")
    assert await fine.round_trip_s() < SLACK_S
    async with api.session.post("/reset") as response:
        assert response.status == 204
    assert await holed.read_to_eof(SLACK_S) == b""
    assert await fine.round_trip_s(b"after reset") < SLACK_S
    fine.close()


# -- reset_peer -------------------------------------------------------------------------------


async def test_reset_peer_upstream_resets_the_client(
    api: Api, echo: EchoServer, connect: Connect
) -> None:
    port = await api.proxy("p", echo.address)
    await api.toxic("p", "reset_peer", "upstream", attributes={"timeout": 0})
    client = await connect(port)
    await client.send(b"hello")
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(client.reader.read(100), 5)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(client.reader.read(100), 5)
    await wait_until(
        lambda: len(echo.peers) == 1 and echo.peers[0].closed.is_set(), what="upstream ended"
    )
    assert bytes(echo.peers[0].received) == b""


async def test_reset_peer_downstream_resets_after_its_timeout(
    api: Api, echo: EchoServer, connect: Connect
) -> None:
    port = await api.proxy("p", echo.address)
    await api.toxic("p", "reset_peer", "downstream", attributes={"timeout": 100})
    client = await connect(port)
    loop = asyncio.get_running_loop()
    sent_at = loop.time()  # the reply, and so the reset's 100 ms, can only start after this
    await client.send(b"ping")
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(client.reader.read(100), 5)
    assert 0.1 <= loop.time() - sent_at < 0.1 + SLACK_S
    assert bytes(echo.peers[0].received) == b"ping"  # the echo did reply


async def test_reset_peer_with_toxicity_zero_closes_with_fin(
    api: Api, echo: EchoServer, connect: Connect
) -> None:
    port = await api.proxy("p", echo.address)
    await api.toxic("p", "reset_peer", "downstream", toxicity=0, attributes={"timeout": 0})
    await api.toxic("p", "reset_peer", "upstream", toxicity=0, attributes={"timeout": 0})
    client = await connect(port)
    assert await client.round_trip_s(b"fine") < SLACK_S
    echo.peers[0].writer.close()  # the server ends the connection normally
    assert await client.read_to_eof() == b""  # EOF, not ECONNRESET
    second = await connect(port)
    assert await second.round_trip_s(b"again") < SLACK_S
    second.writer.close()
    await asyncio.wait_for(echo.peers[1].closed.wait(), 5)
    assert echo.peers[1].error is None


# -- slicer -------------------------------------------------------------------------------------


async def test_slicer_delivers_the_same_bytes_in_more_reads(
    api: Api, echo: EchoServer, connect: Connect
) -> None:
    port = await api.proxy("p", echo.address)
    await api.toxic(
        "p", "slicer", attributes={"average_size": 1, "size_variation": 0, "delay": 20_000}
    )
    client = await connect(port)
    message = b"abcdefghijklmnopqrstuvwx"
    await client.send(message)
    received, reads = b"", 0
    while len(received) < len(message) and reads < 100:
        received += await asyncio.wait_for(client.reader.read(100), 5)
        reads += 1
    assert received == message
    assert reads >= 6  # one-byte pieces 20 ms apart; unsliced, 24 bytes come in one read
    client.close()


@pytest.mark.parametrize(
    "attributes",
    [
        {"average_size": 1024, "size_variation": 512, "delay": 10},
        {"average_size": 0, "size_variation": 0, "delay": 0},
    ],
)
async def test_slicer_keeps_large_payloads_intact(
    api: Api, echo: EchoServer, attributes: dict[str, int], connect: Connect
) -> None:
    port = await api.proxy("p", echo.address)
    await api.toxic("p", "slicer", attributes=attributes)
    client = await connect(port)
    payload = bytes(range(256)) * (480_000 // 256 if attributes["average_size"] else 16)
    sender = asyncio.create_task(client.send(payload))
    assert await asyncio.wait_for(client.reader.readexactly(len(payload)), 20) == payload
    await sender
    client.close()


# -- limit_data --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "writes", "expected"),
    [(100, [150], 100), (100, [90, 20], 100), (100, [25, 25, 25, 25], 100), (0, [10], 0)],
)
async def test_limit_data_forwards_exactly_n_bytes_then_closes(
    api: Api, sink: EchoServer, limit: int, writes: list[int], expected: int, connect: Connect
) -> None:
    port = await api.proxy("p", sink.address)
    await api.toxic("p", "limit_data", "upstream", attributes={"bytes": limit})
    client = await connect(port)
    sent = 0
    for size in writes:
        await client.send(bytes(range(sent, sent + size)))
        target = min(sent + size, limit)

        def reached(target: int = target) -> bool:
            return bool(sink.peers) and len(sink.peers[0].received) >= target

        await wait_until(reached, what=f"{target} bytes")
        sent += size
    await asyncio.wait_for(sink.peers[0].closed.wait(), 5)
    assert bytes(sink.peers[0].received) == bytes(range(expected))
    assert await client.read_to_eof() == b""


async def test_limit_data_count_survives_an_update(
    api: Api, sink: EchoServer, connect: Connect
) -> None:
    port = await api.proxy("p", sink.address)
    await api.toxic("p", "limit_data", "upstream", attributes={"bytes": 100})
    client = await connect(port)
    await client.send(b"a" * 60)
    await wait_until(
        lambda: sink.peers and len(sink.peers[0].received) == 60, what="first 60 bytes"
    )
    await api.call("PATCH", "/proxies/p/toxics/limit_data_upstream", {"attributes": {"bytes": 110}})
    await client.send(b"b" * 60)
    await asyncio.wait_for(sink.peers[0].closed.wait(), 5)
    assert bytes(sink.peers[0].received) == b"a" * 60 + b"b" * 50  # 110 in all, not 60 + 60


# -- noop and toxicity --------------------------------------------------------------------------


async def test_noop_leaves_data_unchanged(api: Api, echo: EchoServer, connect: Connect) -> None:
    port = await api.proxy("p", echo.address)
    await api.toxic("p", "noop")
    await api.toxic("p", "noop", "upstream")
    client = await connect(port)
    payload = bytes(range(256)) * 64
    await client.send(payload)
    assert await asyncio.wait_for(client.reader.readexactly(len(payload)), 5) == payload
    client.close()


async def affected_pattern(connect: Connect, port: int, connections: int) -> list[bool]:
    """For each new connection: True if the toxic cut it (EOF instead of the echo)."""
    pattern = []
    for _ in range(connections):
        client = await connect(port)
        await client.send(b"?")
        pattern.append(await asyncio.wait_for(client.reader.read(1), 5) == b"")
        client.close()
    return pattern


async def test_toxicity_is_a_fraction_of_connections(
    api: Api, echo: EchoServer, connect: Connect
) -> None:
    port = await api.proxy("p", echo.address)
    await api.toxic("p", "limit_data", "upstream", toxicity=0.5, attributes={"bytes": 0})
    pattern = await affected_pattern(connect, port, 200)
    assert 0.35 <= sum(pattern) / len(pattern) <= 0.65


async def test_same_seed_gives_the_same_toxicity_decisions(
    echo: EchoServer, connect: Connect
) -> None:
    patterns = []
    for seed in (5, 5, 6):
        async with (
            FaultProxyServer("127.0.0.1", 0, seed=seed) as server,
            aiohttp.ClientSession(base_url=server.url) as s,
        ):
            api = Api(s)
            port = await api.proxy("p", echo.address)
            await api.toxic("p", "limit_data", "upstream", toxicity=0.5, attributes={"bytes": 0})
            patterns.append(await affected_pattern(connect, port, 40))
    assert patterns[0] == patterns[1]
    assert patterns[0] != patterns[2]  # equal by chance with probability 2**-40
