"""Control-plane conformance of the fault proxy (spec §11 A01-A39, D03) over raw HTTP.

Every test runs a real FaultProxyServer on 127.0.0.1 (API port 0) and a real echo server,
and checks status codes, bodies and what the sockets do (a port accepts, refuses, a live
connection survives or not), never the server's internal state.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chaos.faultproxy import FaultProxyServer
from chaos.faultproxy.testing import EchoServer, free_port

pytestmark = pytest.mark.timeout(30)


@dataclass
class Reply:
    status: int
    body: bytes
    headers: Any

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Api:
    """Raw HTTP access to the API, as a client with any headers and body would do it."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        async with self.session.request(method, path, data=data, headers=headers) as response:
            return Reply(response.status, await response.read(), response.headers)

    async def create(
        self, name: str, upstream: str, listen: str = "127.0.0.1:0", **extra: Any
    ) -> Any:
        reply = await self.call(
            "POST", "/proxies", {"name": name, "upstream": upstream, "listen": listen, **extra}
        )
        assert reply.status == 201, reply.body
        return reply.json

    async def add_toxic(self, proxy: str, **toxic: Any) -> Any:
        reply = await self.call("POST", f"/proxies/{proxy}/toxics", toxic)
        assert reply.status == 200, reply.body
        return reply.json


def assert_error(
    reply: Reply, status: int, message: str | None = None, prefix: str | None = None
) -> None:
    """A handler error: JSON ``{"error", "status"}`` plus a newline, with the given text."""
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.body.endswith(b"\n")
    body = reply.json
    assert body["status"] == status
    if message is not None:
        assert body["error"] == message
    if prefix is not None:
        assert body["error"].startswith(prefix), body["error"]


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


async def accepts(port: int) -> bool:
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except OSError:
        return False
    writer.close()
    return True


async def round_trip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), 5)


@pytest.fixture
async def server() -> AsyncIterator[FaultProxyServer]:
    fault_proxy = FaultProxyServer("127.0.0.1", 0, seed=7)
    await fault_proxy.start()
    try:
        yield fault_proxy
    finally:
        await fault_proxy.stop()


@pytest.fixture
async def api(server: FaultProxyServer) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(base_url=server.url) as session:
        yield Api(session)


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    async with EchoServer() as server:
        yield server


# -- A01-A03 -----------------------------------------------------------------------------------


async def test_version_is_one_exact_json_line_at_least_2_6(api: Api) -> None:
    reply = await api.call("GET", "/version")
    assert reply.status == 200
    match = re.fullmatch(rb'\{"version": "(\d+)\.(\d+)\.(\d+)"\}\n', reply.body)
    assert match is not None, reply.body
    assert tuple(int(part) for part in match.groups()) >= (2, 6, 0)
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.headers["X-Fault-Proxy"].startswith("crdtstate-chaos/")
    assert reply.headers["X-Toxiproxy-Request-Id"]


async def test_api_port_accepts_an_ipv4_tcp_connect(server: FaultProxyServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        assert sock.connect_ex(("127.0.0.1", server.port)) == 0


async def test_fresh_server_lists_an_empty_object(api: Api) -> None:
    reply = await api.call("GET", "/proxies")
    assert (reply.status, reply.json) == (200, {})


# -- A04-A11: create ---------------------------------------------------------------------------


async def test_create_binds_an_ephemeral_port_and_reports_it(api: Api, echo: EchoServer) -> None:
    proxy = await api.create("p", echo.address)
    assert proxy["name"] == "p" and proxy["upstream"] == echo.address
    assert proxy["enabled"] is True and proxy["toxics"] == []
    assert re.fullmatch(r"127\.0\.0\.1:\d+", proxy["listen"]) and port_of(proxy["listen"]) != 0
    assert await accepts(port_of(proxy["listen"]))


async def test_create_disabled_echoes_listen_verbatim_and_refuses(
    api: Api, echo: EchoServer
) -> None:
    port = free_port()
    proxy = await api.create("p", echo.address, f"127.0.0.1:{port}", enabled=False)
    assert proxy["enabled"] is False and proxy["listen"] == f"127.0.0.1:{port}"
    assert not await accepts(port)


async def test_localhost_listen_is_normalised_when_bound_verbatim_when_not(
    api: Api, echo: EchoServer
) -> None:
    port = free_port()
    bound = await api.create("a", echo.address, f"localhost:{port}")
    assert bound["listen"] == f"127.0.0.1:{port}"
    other = free_port()
    unbound = await api.create("b", echo.address, f"localhost:{other}", enabled=False)
    assert unbound["listen"] == f"localhost:{other}"


async def test_null_enabled_means_true_and_ruby_default_listen_works(
    api: Api, echo: EchoServer
) -> None:
    reply = await api.call(
        "POST",
        "/proxies",
        {"name": "rb", "upstream": echo.address, "listen": "localhost:0", "enabled": None},
    )
    assert reply.status == 201
    assert reply.json["enabled"] is True
    assert await accepts(port_of(reply.json["listen"]))


async def test_create_accepts_a_null_toxics_key(api: Api, echo: EchoServer) -> None:
    reply = await api.call(
        "POST",
        "/proxies",
        {
            "name": "go",
            "listen": "127.0.0.1:0",
            "upstream": echo.address,
            "enabled": True,
            "toxics": None,
        },
    )
    assert reply.status == 201 and reply.json["toxics"] == []


async def test_create_without_name_upstream_or_body_is_400(api: Api) -> None:
    assert_error(
        await api.call("POST", "/proxies", {"upstream": "127.0.0.1:1"}),
        400,
        "missing required field: name",
    )
    assert_error(
        await api.call("POST", "/proxies", {"name": "x"}), 400, "missing required field: upstream"
    )
    assert_error(await api.call("POST", "/proxies", raw=b""), 400, prefix="bad request body")
    assert_error(await api.call("POST", "/proxies", raw=b"{nope"), 400, prefix="bad request body")
    assert (await api.call("GET", "/proxies")).json == {}


async def test_duplicate_is_409_and_name_and_port_are_reusable_after_delete(
    api: Api, echo: EchoServer
) -> None:
    proxy = await api.create("p", echo.address)
    reply = await api.call(
        "POST", "/proxies", {"name": "p", "upstream": echo.address, "listen": "127.0.0.1:0"}
    )
    assert_error(reply, 409, "proxy already exists")
    assert (await api.call("DELETE", "/proxies/p")).status == 204
    again = await api.create("p", echo.address, proxy["listen"])
    assert again["listen"] == proxy["listen"]
    assert await accepts(port_of(again["listen"]))


async def test_listen_port_already_bound_is_500_and_nothing_created(
    api: Api, echo: EchoServer
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        reply = await api.call(
            "POST",
            "/proxies",
            {"name": "p", "upstream": echo.address, "listen": f"127.0.0.1:{port}"},
        )
    assert_error(reply, 500)
    assert "address already in use" in reply.json["error"]
    assert_error(await api.call("GET", "/proxies/p"), 404, "proxy not found")


# -- A12-A17: read, update, delete ---------------------------------------------------------


async def test_get_one_proxy_and_unknown_proxy(api: Api, echo: EchoServer) -> None:
    created = await api.create("p", echo.address)
    reply = await api.call("GET", "/proxies/p")
    assert (reply.status, reply.json) == (200, created)
    assert_error(await api.call("GET", "/proxies/nope"), 404, "proxy not found")


async def test_percent_encoded_names_are_decoded(api: Api, echo: EchoServer) -> None:
    await api.create("a b", echo.address)
    reply = await api.call("GET", "/proxies/a%20b")
    assert reply.status == 200 and reply.json["name"] == "a b"


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_disable_then_enable_toggles_the_same_port(
    api: Api, echo: EchoServer, method: str
) -> None:
    proxy = await api.create("p", echo.address)
    port = port_of(proxy["listen"])
    off = await api.call(method, "/proxies/p", {"enabled": False})
    assert off.status == 200 and off.json["enabled"] is False
    assert not await accepts(port)
    on = await api.call(method, "/proxies/p", {"enabled": True})
    assert on.status == 200 and on.json["enabled"] is True and on.json["listen"] == proxy["listen"]
    assert await accepts(port)


async def test_saving_the_full_go_object_changes_only_enabled(api: Api, echo: EchoServer) -> None:
    await api.create("p", echo.address)
    await api.add_toxic("p", type="latency", attributes={"latency": 5})
    current = (await api.call("GET", "/proxies/p")).json
    reply = await api.call("POST", "/proxies/p", {**current, "enabled": False})
    assert reply.status == 200
    assert reply.json == {**current, "enabled": False}


async def test_update_listen_rebinds_and_same_listen_keeps_connections(
    api: Api, echo: EchoServer
) -> None:
    proxy = await api.create("p", echo.address)
    old_port = port_of(proxy["listen"])
    reader, writer = await asyncio.open_connection("127.0.0.1", old_port)
    assert await round_trip(reader, writer, b"one") == b"one"
    # localhost:P names the stored 127.0.0.1:P: no restart, the connection lives on.
    same = await api.call("POST", "/proxies/p", {"listen": f"localhost:{old_port}"})
    assert same.status == 200 and same.json["listen"] == proxy["listen"]
    assert await round_trip(reader, writer, b"two") == b"two"
    moved = await api.call("POST", "/proxies/p", {"listen": "127.0.0.1:0"})
    assert moved.status == 200
    new_port = port_of(moved.json["listen"])
    assert new_port not in (0, old_port)
    assert await accepts(new_port) and not await accepts(old_port)
    assert await asyncio.wait_for(reader.read(10), 5) == b""  # restarted: old connection dropped
    writer.close()


async def test_update_with_unresolvable_listen_is_500(api: Api, echo: EchoServer) -> None:
    await api.create("p", echo.address)
    assert_error(await api.call("POST", "/proxies/p", {"listen": "no-port-here"}), 500)
    assert_error(await api.call("POST", "/proxies/p", raw=b""), 400, prefix="bad request body")
    assert_error(
        await api.call("POST", "/proxies/nope", {"enabled": False}), 404, "proxy not found"
    )


async def test_delete_frees_the_port_and_a_second_delete_is_404(api: Api, echo: EchoServer) -> None:
    proxy = await api.create("p", echo.address)
    reply = await api.call("DELETE", "/proxies/p")
    assert reply.status == 204 and reply.body == b""
    assert not await accepts(port_of(proxy["listen"]))
    assert_error(await api.call("DELETE", "/proxies/p"), 404, "proxy not found")


# -- A18-A28: toxics -----------------------------------------------------------------------


async def test_create_toxic_answers_200_with_every_attribute(api: Api, echo: EchoServer) -> None:
    await api.create("p", echo.address)
    body = {
        "name": "latency_downstream",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 1.0,
        "attributes": {"latency": 123},
    }
    reply = await api.call("POST", "/proxies/p/toxics", body)
    assert reply.status == 200
    assert reply.json == {
        "attributes": {"latency": 123, "jitter": 0},
        "name": "latency_downstream",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 1,
    }


async def test_toxic_defaults_and_one_per_stream(api: Api, echo: EchoServer) -> None:
    await api.create("p", echo.address)
    down = await api.add_toxic("p", type="latency")
    assert down == {
        "attributes": {"latency": 0, "jitter": 0},
        "name": "latency_downstream",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 1,
    }
    up = await api.add_toxic("p", type="latency", stream="upstream")
    assert up["name"] == "latency_upstream" and up["stream"] == "upstream"
    shouted = await api.add_toxic("p", type="noop", stream="UpStream")
    assert shouted["name"] == "noop_UpStream" and shouted["stream"] == "UpStream"


async def test_toxic_create_errors(api: Api, echo: EchoServer) -> None:
    await api.create("p", echo.address)
    stream_error = "stream was invalid, can be either upstream or downstream"
    assert_error(
        await api.call("POST", "/proxies/p/toxics", {"type": "latency", "stream": "sideways"}),
        400,
        stream_error,
    )
    assert_error(
        await api.call("POST", "/proxies/p/toxics", {"type": "latency", "stream": ""}),
        400,
        stream_error,
    )
    assert_error(
        await api.call("POST", "/proxies/p/toxics", {"type": "nope"}), 400, "invalid toxic type"
    )
    assert_error(
        await api.call("POST", "/proxies/p/toxics", {"stream": "upstream"}),
        400,
        "invalid toxic type",
    )
    await api.add_toxic("p", name="t", type="latency", stream="upstream")
    for stream in ("upstream", "downstream"):
        reply = await api.call(
            "POST", "/proxies/p/toxics", {"name": "t", "type": "noop", "stream": stream}
        )
        assert_error(reply, 409, "toxic already exists")
    assert_error(
        await api.call("POST", "/proxies/nope/toxics", {"type": "latency"}), 404, "proxy not found"
    )
    assert_error(
        await api.call("POST", "/proxies/p/toxics", raw=b"[1]"), 400, prefix="bad request body"
    )


@pytest.mark.parametrize(
    ("attributes", "named"),
    [
        ({"latency": "x"}, "attributes.latency"),
        ({"latency": 100.0}, "attributes.latency"),
        ({"latency": True}, "attributes.latency"),
        ({"latency": -1}, "attributes.latency"),
        ({"jitter": 2**63}, "attributes.jitter"),
        ({"latency": {"a": 1}}, "attributes.latency"),
        ([1, 2], "attributes"),
    ],
)
async def test_toxic_attribute_of_wrong_type_or_range_is_400_naming_it(
    api: Api, echo: EchoServer, attributes: Any, named: str
) -> None:
    await api.create("p", echo.address)
    reply = await api.call(
        "POST", "/proxies/p/toxics", {"type": "latency", "attributes": attributes}
    )
    assert_error(reply, 400, prefix=f"bad request body: {named}")
    assert (await api.call("GET", "/proxies/p/toxics")).json == []


async def test_noop_toxic_without_stream(api: Api, echo: EchoServer) -> None:
    await api.create("p", echo.address)
    toxic = await api.add_toxic("p", type="noop")
    assert toxic == {
        "attributes": {},
        "name": "noop_downstream",
        "type": "noop",
        "stream": "downstream",
        "toxicity": 1,
    }


async def test_toxicity_round_trips(api: Api, echo: EchoServer) -> None:
    await api.create("p", echo.address)
    toxic = await api.add_toxic("p", type="latency", toxicity=0.2)
    assert toxic["toxicity"] == pytest.approx(0.2, rel=1e-6)
    listed = (await api.call("GET", "/proxies/p/toxics/latency_downstream")).json
    assert listed["toxicity"] == pytest.approx(0.2, rel=1e-6)


async def test_toxic_list_puts_upstream_first_and_is_empty_array_when_none(
    api: Api, echo: EchoServer
) -> None:
    await api.create("p", echo.address)
    empty = await api.call("GET", "/proxies/p/toxics")
    assert (empty.status, empty.body) == (200, b"[]")
    await api.add_toxic("p", name="d1", type="noop")
    await api.add_toxic("p", name="u1", type="noop", stream="upstream")
    await api.add_toxic("p", name="d2", type="noop")
    await api.add_toxic("p", name="u2", type="noop", stream="upstream")
    names = [toxic["name"] for toxic in (await api.call("GET", "/proxies/p/toxics")).json]
    assert names == ["u1", "u2", "d1", "d2"]
    assert [t["name"] for t in (await api.call("GET", "/proxies/p")).json["toxics"]] == names
    assert_error(await api.call("GET", "/proxies/nope/toxics"), 404, "proxy not found")


async def test_get_one_toxic_and_unknown_toxic(api: Api, echo: EchoServer) -> None:
    await api.create("p", echo.address)
    created = await api.add_toxic("p", type="bandwidth", attributes={"rate": 10})
    reply = await api.call("GET", "/proxies/p/toxics/bandwidth_downstream")
    assert (reply.status, reply.json) == (200, created)
    assert_error(await api.call("GET", "/proxies/p/toxics/nope"), 404, "toxic not found")
    assert_error(await api.call("GET", "/proxies/nope/toxics/x"), 404, "proxy not found")


@pytest.mark.parametrize("method", ["PATCH", "POST"])
async def test_toxic_update_merges_attributes_and_keeps_toxicity(
    api: Api, echo: EchoServer, method: str
) -> None:
    await api.create("p", echo.address)
    await api.add_toxic("p", type="latency", attributes={"latency": 10, "jitter": 3})
    path = "/proxies/p/toxics/latency_downstream"
    first = await api.call(method, path, {"attributes": {"latency": 1000}, "toxicity": 0.5})
    assert first.status == 200
    assert (
        first.json["attributes"] == {"latency": 1000, "jitter": 3} and first.json["toxicity"] == 0.5
    )
    second = await api.call(method, path, {"attributes": {"latency": 500}})
    assert (
        second.json["attributes"] == {"latency": 500, "jitter": 3}
        and second.json["toxicity"] == 0.5
    )
    name_ignored = await api.call(
        method, path, {"name": "renamed", "type": "noop", "stream": "upstream"}
    )
    assert (
        name_ignored.json["name"] == "latency_downstream" and name_ignored.json["type"] == "latency"
    )
    assert_error(
        await api.call(method, path, {"attributes": {"latency": "slow"}}),
        400,
        prefix="bad request body: attributes.latency",
    )
    assert (await api.call("GET", path)).json["attributes"] == {"latency": 500, "jitter": 3}
    assert_error(await api.call(method, "/proxies/p/toxics/nope", {}), 404, "toxic not found")


async def test_toxic_delete_then_again_404(api: Api, echo: EchoServer) -> None:
    await api.create("p", echo.address)
    await api.add_toxic("p", type="latency")
    reply = await api.call("DELETE", "/proxies/p/toxics/latency_downstream")
    assert (reply.status, reply.body) == (204, b"")
    assert (await api.call("GET", "/proxies/p/toxics")).json == []
    assert_error(
        await api.call("DELETE", "/proxies/p/toxics/latency_downstream"), 404, "toxic not found"
    )


async def test_toxics_survive_disable_and_enable(api: Api, echo: EchoServer) -> None:
    proxy = await api.create("p", echo.address)
    toxic = await api.add_toxic("p", type="latency", attributes={"latency": 123})
    await api.call("POST", "/proxies/p", {"enabled": False})
    after = (await api.call("POST", "/proxies/p", {"enabled": True})).json
    assert after["toxics"] == [toxic] and after["listen"] == proxy["listen"]


async def test_toxic_added_to_a_disabled_proxy_is_kept(api: Api, echo: EchoServer) -> None:
    await api.create("p", echo.address, enabled=False)
    await api.add_toxic("p", type="slow_close", attributes={"delay": 1})
    assert [t["name"] for t in (await api.call("GET", "/proxies/p/toxics")).json] == [
        "slow_close_downstream"
    ]


# -- A29-A35: reset, populate, config ------------------------------------------------------


async def test_reset_enables_every_proxy_and_removes_every_toxic(
    api: Api, echo: EchoServer
) -> None:
    first = await api.create("a", echo.address)
    await api.create("b", echo.address)
    await api.add_toxic("a", type="latency", attributes={"latency": 100})
    await api.add_toxic("b", type="noop", stream="upstream")
    await api.call("POST", "/proxies/a", {"enabled": False})
    async with api.session.post("/reset") as response:  # no body, no content type
        assert response.status == 204 and await response.read() == b""
    proxies = (await api.call("GET", "/proxies")).json
    assert sorted(proxies) == ["a", "b"]
    assert all(p["enabled"] and p["toxics"] == [] for p in proxies.values())
    assert proxies["a"]["listen"] == first["listen"]
    assert await accepts(port_of(first["listen"]))


async def test_populate_creates_new_proxies_in_input_order(api: Api, echo: EchoServer) -> None:
    body = [
        {"name": "z", "upstream": echo.address, "listen": "127.0.0.1:0"},
        {"name": "a", "upstream": echo.address, "listen": "127.0.0.1:0"},
    ]
    reply = await api.call("POST", "/populate", body)
    assert reply.status == 201
    proxies = reply.json["proxies"]
    assert [p["name"] for p in proxies] == ["z", "a"]
    for proxy in proxies:
        assert proxy["enabled"] and await accepts(port_of(proxy["listen"]))


async def test_populate_entry_without_name_changes_nothing(api: Api, echo: EchoServer) -> None:
    body = [
        {"name": "a", "upstream": echo.address, "listen": "127.0.0.1:0"},
        {"upstream": echo.address},
    ]
    assert_error(
        await api.call("POST", "/populate", body), 400, "missing required field: name at proxy 2"
    )
    body = [{"name": "a", "upstream": echo.address}, {"name": "b"}]
    assert_error(
        await api.call("POST", "/populate", body),
        400,
        "missing required field: upstream at proxy 2",
    )
    assert (await api.call("GET", "/proxies")).json == {}
    bad = await api.call("POST", "/populate", {"name": "a"})
    assert_error(bad, 400, prefix="bad request body")
    assert bad.json["proxies"] is None


async def test_populate_stops_at_an_unusable_listen_and_keeps_earlier_entries(
    api: Api, echo: EchoServer
) -> None:
    body = [
        {"name": "one", "upstream": echo.address, "listen": "127.0.0.1:0"},
        {"name": "two", "upstream": echo.address, "listen": "local373"},
        {"name": "three", "upstream": echo.address, "listen": "127.0.0.1:0"},
    ]
    reply = await api.call("POST", "/populate", body)
    assert_error(reply, 500)
    assert [p["name"] for p in reply.json["proxies"]] == ["one"]
    assert sorted((await api.call("GET", "/proxies")).json) == ["one"]


async def test_populate_keeps_identical_replaces_changed_and_creates_disabled(
    api: Api, echo: EchoServer
) -> None:
    kept = await api.create("kept", echo.address)
    await api.add_toxic("kept", type="latency", attributes={"latency": 7})
    changed = await api.create("changed", echo.address)
    await api.add_toxic("changed", type="noop")
    port = port_of(kept["listen"])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = [
        {"name": "kept", "upstream": echo.address, "listen": f"localhost:{port}"},
        {"name": "changed", "upstream": "127.0.0.1:9", "listen": changed["listen"]},
        {
            "name": "off",
            "upstream": echo.address,
            "listen": f"127.0.0.1:{free_port()}",
            "enabled": False,
        },
    ]
    reply = await api.call("POST", "/populate", body)
    assert reply.status == 201
    result = {p["name"]: p for p in reply.json["proxies"]}
    assert result["kept"] == {
        **kept,
        "toxics": [(await api.call("GET", "/proxies/kept/toxics")).json[0]],
    }
    assert result["changed"]["upstream"] == "127.0.0.1:9" and result["changed"]["toxics"] == []
    assert result["off"]["enabled"] is False and not await accepts(port_of(result["off"]["listen"]))
    assert await round_trip(reader, writer, b"still here") == b"still here"
    writer.close()


async def test_populate_with_an_empty_array_answers_an_empty_list(api: Api) -> None:
    reply = await api.call("POST", "/populate", [])
    assert (reply.status, reply.json) == (201, {"proxies": []})


async def test_config_file_creates_proxies_before_the_api_answers(
    tmp_path: Path, echo: EchoServer
) -> None:
    port = free_port()
    config = tmp_path / "proxies.json"
    config.write_text(
        json.dumps([{"name": "cfg", "upstream": echo.address, "listen": f"127.0.0.1:{port}"}])
    )
    async with (
        FaultProxyServer("127.0.0.1", 0, config_path=config) as server,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(f"{server.url}/proxies") as response:
            proxies = await response.json()
        assert proxies["cfg"]["listen"] == f"127.0.0.1:{port}" and proxies["cfg"]["enabled"]
        assert await accepts(port)


async def test_bad_config_file_is_logged_and_the_server_still_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "bad.json"
    config.write_text('[{"name": "x"}')
    async with (
        FaultProxyServer("127.0.0.1", 0, config_path=config) as server,
        aiohttp.ClientSession() as session,
        session.get(f"{server.url}/proxies") as response,
    ):
        assert (response.status, await response.json()) == (200, {})
    assert "bad.json" in caplog.text


# -- A36-A39: HTTP layer ------------------------------------------------------------------


async def test_browser_user_agent_is_refused(api: Api) -> None:
    browser = await api.call(
        "GET", "/proxies", headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)"}
    )
    assert (browser.status, browser.body) == (403, b"User agent not allowed\n")
    wget = await api.call("GET", "/proxies", headers={"User-Agent": "Wget/1.0"})
    assert wget.status == 200


async def test_unknown_path_is_404_and_wrong_method_is_405(api: Api) -> None:
    unknown = await api.call("GET", "/nope")
    assert (unknown.status, unknown.body) == (404, b"404 page not found\n")
    wrong = await api.call("PUT", "/proxies")
    assert (wrong.status, wrong.body) == (405, b"")


async def test_chunked_request_bodies_are_accepted(api: Api, echo: EchoServer) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"name": "chunked", "upstream": "'
        yield echo.address.encode() + b'", "listen": "127.0.0.1:0"}'

    async with api.session.post("/proxies", data=body()) as response:
        assert response.status == 201
        assert (await response.json())["name"] == "chunked"


async def test_api_answers_promptly_while_the_data_plane_is_stuck(
    api: Api, echo: EchoServer
) -> None:
    proxy = await api.create("p", echo.address)
    port = port_of(proxy["listen"])
    await api.add_toxic(
        "p", name="stall", type="bandwidth", stream="upstream", attributes={"rate": 0}
    )
    await api.add_toxic(
        "p", name="rst", type="reset_peer", stream="downstream", attributes={"timeout": 60_000}
    )
    writers = []
    for _ in range(3):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x" * 65536)
        writers.append(writer)
    # The peers never read; a stalled toxic holds data; a reset is pending a minute out.
    for method, path in [
        ("DELETE", "/proxies/p/toxics/stall"),
        ("POST", "/reset"),
        ("POST", "/proxies/p"),
        ("DELETE", "/proxies/p"),
    ]:
        body = {"enabled": False} if path == "/proxies/p" and method == "POST" else None
        reply = await asyncio.wait_for(api.call(method, path, body), timeout=5)
        assert reply.status in (200, 204)
    for writer in writers:
        writer.transport.abort()


# -- D03: the Go and Ruby clients' wire requests, replayed ---------------------------------


GO_HEADERS = {"User-Agent": "toxiproxy-cli", "Content-Type": "application/json"}
RUBY_HEADERS = {"User-Agent": "Ruby", "Content-Type": "application/json"}


async def test_go_client_request_sequence(api: Api, echo: EchoServer) -> None:
    h = GO_HEADERS
    created = await api.call(
        "POST",
        "/proxies",
        {
            "name": "go",
            "listen": "127.0.0.1:0",
            "upstream": echo.address,
            "enabled": True,
            "toxics": None,
        },
        headers=h,
    )
    assert created.status == 201
    proxy = (await api.call("GET", "/proxies/go", headers=h)).json
    toxic = await api.call(
        "POST",
        "/proxies/go/toxics",
        {
            "name": "lat",
            "type": "latency",
            "stream": "upstream",
            "toxicity": 0,
            "attributes": {"latency": 1000},
        },
        headers=h,
    )
    assert toxic.status == 200 and toxic.json["toxicity"] == 0
    patched = await api.call(
        "PATCH", "/proxies/go/toxics/lat", {"attributes": {"latency": 5}}, headers=h
    )
    assert (
        patched.json["attributes"] == {"latency": 5, "jitter": 0} and patched.json["toxicity"] == 0
    )
    proxy = (await api.call("GET", "/proxies/go", headers=h)).json
    saved = await api.call("POST", "/proxies/go", {**proxy, "enabled": False}, headers=h)
    assert saved.status == 200 and saved.json["enabled"] is False
    assert saved.json["toxics"] == proxy["toxics"]
    listing = await api.call("GET", "/proxies", headers=h)
    assert listing.json["go"]["enabled"] is False
    populated = await api.call(
        "POST",
        "/populate",
        [
            {
                "name": "go2",
                "listen": "127.0.0.1:0",
                "upstream": echo.address,
                "enabled": True,
                "toxics": None,
            }
        ],
        headers=h,
    )
    assert populated.status == 201 and populated.json["proxies"][0]["name"] == "go2"
    assert (await api.call("DELETE", "/proxies/go/toxics/lat", headers=h)).status == 204
    assert (await api.call("POST", "/reset", raw=b"", headers=h)).status == 204
    assert (await api.call("DELETE", "/proxies/go", headers=h)).status == 204
    error = await api.call("GET", "/proxies/go", headers=h)
    assert_error(error, 404, "proxy not found")  # the Go client shows "HTTP 404: proxy not found"


async def test_ruby_client_request_sequence(api: Api, echo: EchoServer) -> None:
    h = RUBY_HEADERS
    version = json.loads((await api.call("GET", "/version", headers=h)).body)["version"]
    assert tuple(int(x) for x in version.split(".")) >= (2, 6, 0)  # so Ruby uses PATCH below
    created = await api.call(
        "POST",
        "/proxies",
        {"upstream": echo.address, "name": "rb", "listen": "localhost:0", "enabled": None},
        headers=h,
    )
    assert created.status == 201 and created.json["enabled"] is True
    port = port_of(created.json["listen"])
    toxic = await api.call(
        "POST",
        "/proxies/rb/toxics",
        {
            "name": "latency_downstream",
            "type": "latency",
            "stream": "downstream",
            "toxicity": 1.0,
            "attributes": {"latency": 1},
        },
        headers=h,
    )
    assert toxic.json["attributes"]["latency"] == 1 and toxic.json["toxicity"] == 1
    assert (await api.call("PATCH", "/proxies/rb", {"enabled": False}, headers=h)).status == 200
    assert not await accepts(port)
    assert (await api.call("PATCH", "/proxies/rb", {"enabled": True}, headers=h)).status == 200
    assert await accepts(port)
    toxics = (await api.call("GET", "/proxies/rb/toxics", headers=h)).json
    assert [(t["type"], t["name"], t["stream"]) for t in toxics] == [
        ("latency", "latency_downstream", "downstream")
    ]
    assert (
        await api.call("DELETE", "/proxies/rb/toxics/latency_downstream", headers=h)
    ).status == 204
    populated = await api.call("POST", "/populate", [], headers=h)
    assert populated.json == {"proxies": []}
    assert (await api.call("POST", "/reset", raw=b"", headers=h)).status == 204
    assert (await api.call("DELETE", "/proxies/rb", headers=h)).status == 204
    assert not await accepts(port)
