"""Data-plane conformance of the fault proxy (spec §11 B01-B08) on real sockets.

client ⇄ proxy ⇄ echo/sink server, all on 127.0.0.1. The backpressure test runs the proxy
as a real subprocess (``python -m chaos toxiproxy``) so its memory can be read from /proc.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chaos.faultproxy import FaultProxyProcess, FaultProxyServer
from chaos.faultproxy.testing import EchoServer, free_port, wait_until

pytestmark = pytest.mark.timeout(30)


class Api:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        async with self.session.request(method, path, data=data) as response:
            assert response.status < 300, (response.status, await response.read())
            raw = await response.read()
            return json.loads(raw) if raw else None

    async def proxy(self, name: str, upstream: str, listen: str = "127.0.0.1:0") -> int:
        proxy = await self.call(
            "POST", "/proxies", {"name": name, "upstream": upstream, "listen": listen}
        )
        return int(proxy["listen"].rsplit(":", 1)[1])


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with (
        FaultProxyServer("127.0.0.1", 0, seed=3) as server,
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


async def refused(port: int) -> bool:
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def ended(reader: asyncio.StreamReader) -> bool:
    """True once the connection is over: EOF or a reset."""
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


async def test_pass_through_keeps_bytes_intact_in_both_directions(
    api: Api, echo: EchoServer
) -> None:
    port = await api.proxy("p", echo.address)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    big = bytes(range(256)) * 256  # 64 KiB
    writer.write(big)
    writer.write(b"first|")
    writer.write(b"second")
    await writer.drain()
    expected = big + b"first|second"
    assert await asyncio.wait_for(reader.readexactly(len(expected)), 5) == expected
    assert bytes(echo.peers[0].received) == expected
    echo.peers[0].writer.write(b"unprompted")  # server → client without a request
    assert await asyncio.wait_for(reader.readexactly(10), 5) == b"unprompted"
    writer.close()


async def test_upstream_down_accepts_then_closes(api: Api) -> None:
    port = await api.proxy("p", f"127.0.0.1:{free_port()}")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(10), 5) == b""
    writer.close()


async def test_unparsable_upstream_accepts_then_closes(api: Api) -> None:
    port = await api.proxy("p", "not-an-address")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(10), 5) == b""
    writer.close()


async def test_disable_drops_live_connections_and_enable_reopens_the_port(
    api: Api, echo: EchoServer
) -> None:
    port = await api.proxy("p", echo.address)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"hi")
    assert await asyncio.wait_for(reader.readexactly(2), 5) == b"hi"
    await api.call("POST", "/proxies/p", {"enabled": False})
    assert await ended(reader)
    await asyncio.wait_for(echo.peers[0].closed.wait(), 5)
    assert await refused(port)
    await api.call("POST", "/proxies/p", {"enabled": True})
    reader2, writer2 = await asyncio.open_connection("127.0.0.1", port)
    writer2.write(b"back")
    assert await asyncio.wait_for(reader2.readexactly(4), 5) == b"back"
    writer.close()
    writer2.close()


async def test_delete_drops_live_connections_and_frees_the_port(api: Api, echo: EchoServer) -> None:
    port = await api.proxy("p", echo.address)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"hi")
    assert await asyncio.wait_for(reader.readexactly(2), 5) == b"hi"
    await api.call("DELETE", "/proxies/p")
    assert await ended(reader)
    await asyncio.wait_for(echo.peers[0].closed.wait(), 5)
    assert await refused(port)
    assert await api.proxy("q", echo.address, f"127.0.0.1:{port}") == port
    writer.close()


async def test_half_close_delivers_in_flight_data_then_closes_both_sides(
    api: Api, sink: EchoServer
) -> None:
    port = await api.proxy("p", sink.address)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"last words")
    writer.write_eof()
    await asyncio.wait_for(wait_until(lambda: sink.peers and sink.peers[0].closed.is_set()), 5)
    assert bytes(sink.peers[0].received) == b"last words"
    assert await ended(reader)
    writer.close()


async def test_every_byte_arrives_once_in_order_while_toxics_churn(
    api: Api, sink: EchoServer
) -> None:
    port = await api.proxy("p", sink.address)
    records = b"".join(index.to_bytes(2, "big") for index in range(65535))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    latency = {"name": "lat", "type": "latency", "stream": "upstream", "attributes": {"latency": 1}}
    # Every write is followed by one toxic change, so changes land while data is in flight:
    # a latency toxic comes and goes, a noop toxic flips between the streams.
    changes = 0
    for step, offset in enumerate(range(0, len(records), 512)):
        writer.write(records[offset : offset + 512])
        await writer.drain()
        match step % 4:
            case 0:
                await api.call("POST", "/proxies/p/toxics", latency)
            case 1:
                stream = "upstream" if step % 8 == 1 else "downstream"
                await api.call(
                    "POST", "/proxies/p/toxics", {"name": "nop", "type": "noop", "stream": stream}
                )
            case 2:
                await api.call("DELETE", "/proxies/p/toxics/lat")
            case _:
                await api.call("DELETE", "/proxies/p/toxics/nop")
        changes += 1
    writer.write_eof()
    await asyncio.wait_for(sink.peers[0].closed.wait(), 10)
    assert changes == 256
    assert bytes(sink.peers[0].received) == records
    assert await ended(reader)
    writer.close()


async def test_a_toxic_added_to_an_open_connection_affects_its_next_message(
    api: Api, echo: EchoServer
) -> None:
    port = await api.proxy("p", echo.address)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    writer.write(b"before")
    assert await asyncio.wait_for(reader.readexactly(6), 5) == b"before"
    await api.call("POST", "/proxies/p/toxics", {"type": "latency", "attributes": {"latency": 300}})
    started = loop.time()
    writer.write(b"after")
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"after"
    assert loop.time() - started >= 0.3
    writer.close()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _push_until_blocked(port: int, limit_bytes: int) -> tuple[socket.socket, int]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.settimeout(0.5)
    block, sent = b"\x00" * 65536, 0
    try:
        while sent < limit_bytes:
            sent += sock.send(block)
    except TimeoutError:
        pass  # the proxy stopped reading: its backpressure reached us
    return sock, sent


async def test_a_throttled_link_pushes_back_on_the_sender(sink: EchoServer) -> None:
    process = FaultProxyProcess(seed=1)
    await asyncio.to_thread(process.start)
    try:
        async with aiohttp.ClientSession(base_url=process.url) as session:
            api = Api(session)
            port = await api.proxy("p", sink.address)
            await api.call(
                "POST",
                "/proxies/p/toxics",
                {"type": "bandwidth", "stream": "upstream", "attributes": {"rate": 1}},
            )
            rss_before = _rss_kib(process.pid)
            limit = 32 * 1024 * 1024
            sock, sent = await asyncio.to_thread(_push_until_blocked, port, limit)
            try:
                assert sent < 8 * 1024 * 1024  # kernel buffers only; the proxy stopped reading
                assert _rss_kib(process.pid) - rss_before < 5 * 1024
                await wait_until(
                    lambda: sink.peers and len(sink.peers[0].received) > 0, what="trickle"
                )
                assert len(sink.peers[0].received) < 64 * 1024  # 1 KB/s, not the backlog
            finally:
                sock.close()
    finally:
        assert await asyncio.to_thread(process.stop) == 0
