"""The PyPI client ``toxiproxy-python`` drives the fault proxy unchanged (spec §11 D01, D02, C01).

D01 ports douglas/toxiproxy-python's own test modules (``test/toxiproxy_test.py`` and
``toxiproxy_api_test.py``) against a real ``python -m chaos toxiproxy`` subprocess; D02
records the exact requests each client call sends, with the server run in a thread.
The client keeps its server address in class attributes, so every fixture restores them.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import pytest
import requests
from toxiproxy import Toxiproxy
from toxiproxy.api import APIConsumer, validate_response
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists
from toxiproxy.utils import can_connect_to

from chaos.faultproxy import FaultProxyProcess, FaultProxyThread, RecordedRequest
from chaos.faultproxy.testing import ThreadedEchoServer, free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server() -> Iterator[FaultProxyProcess]:
    process = FaultProxyProcess(seed=21)
    process.start()
    try:
        yield process
    finally:
        assert process.stop() == 0


@pytest.fixture
def toxiproxy(server: FaultProxyProcess) -> Iterator[Toxiproxy]:
    client = Toxiproxy()
    saved = (APIConsumer.host, APIConsumer.port)
    client.update_api_consumer("127.0.0.1", server.port)
    try:
        yield client
    finally:
        client.update_api_consumer("127.0.0.1", server.port)
        client.destroy_all()
        client.update_api_consumer(*saved)


@pytest.fixture
def echo() -> Iterator[ThreadedEchoServer]:
    with ThreadedEchoServer() as server:
        yield server


def host_port(listen: str) -> tuple[str, int]:
    host, port = listen.rsplit(":", 1)
    return host, int(port)


def round_trip_s(listen: str, message: bytes = b"ping") -> float:
    with socket.create_connection(host_port(listen), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(message)
        received = b""
        while len(received) < len(message):
            data = sock.recv(100)
            assert data, "connection closed early"
            received += data
        assert received == message
        return time.monotonic() - started


# -- D01: port of toxiproxy-python's test module -----------------------------------------------


def test_create_proxy(toxiproxy: Toxiproxy) -> None:
    listen = f"127.0.0.1:{free_port()}"
    proxy = toxiproxy.create(
        upstream="localhost:3306", name="test_mysql_master", enabled=False, listen=listen
    )
    assert proxy.upstream == "localhost:3306"
    assert proxy.name == "test_mysql_master"
    assert proxy.enabled is False
    assert proxy.listen == listen


def test_destroy_proxy(toxiproxy: Toxiproxy) -> None:
    # Upstream passes the name (a string), which the client silently ignores; pass the Proxy.
    proxy = toxiproxy.create(upstream="localhost:3306", name="test_mysql_master")
    assert toxiproxy.destroy(proxy) is True
    assert "test_mysql_master" not in toxiproxy.proxies()
    assert not can_connect_to(*host_port(proxy.listen))


def test_destroy_invalid_proxy(toxiproxy: Toxiproxy) -> None:
    assert toxiproxy.destroy("invalid_proxy") is False


def test_disable_and_enable_proxy(toxiproxy: Toxiproxy) -> None:
    proxy = toxiproxy.create(upstream="localhost:3306", name="test_mysql_master")
    proxy.disable()
    assert proxy.enabled is False
    assert toxiproxy.get_proxy("test_mysql_master").enabled is False
    assert not can_connect_to(*host_port(proxy.listen))
    proxy.enable()
    assert proxy.enabled is True
    assert can_connect_to(*host_port(proxy.listen))


def test_down_context_takes_the_proxy_down_and_back(toxiproxy: Toxiproxy) -> None:
    proxy = toxiproxy.create(upstream="localhost:3306", name="test_mysql_master")
    with proxy.down():
        assert not can_connect_to(*host_port(proxy.listen))
    assert can_connect_to(*host_port(proxy.listen))


def test_find_invalid_proxy(toxiproxy: Toxiproxy) -> None:
    assert toxiproxy.get_proxy("invalid_proxy") is None


def test_create_and_find_proxy(toxiproxy: Toxiproxy) -> None:
    toxiproxy.create(upstream="localhost:3306", name="test_mysql_master")
    proxy = toxiproxy.get_proxy("test_mysql_master")
    assert proxy.upstream == "localhost:3306"
    assert proxy.name == "test_mysql_master"


def test_cant_create_proxies_same_name(toxiproxy: Toxiproxy) -> None:
    toxiproxy.create(upstream="localhost:3306", name="test_mysql_master")
    with pytest.raises(ProxyExists):
        toxiproxy.create(upstream="localhost:3306", name="test_mysql_master")


def test_version_and_running_of_an_absent_server(toxiproxy: Toxiproxy) -> None:
    toxiproxy.update_api_consumer("0.0.0.0", free_port())
    assert toxiproxy.running() is False
    assert toxiproxy.version() is None


def test_running_and_version(toxiproxy: Toxiproxy) -> None:
    assert toxiproxy.running() is True
    version = toxiproxy.version()
    assert isinstance(version, bytes)
    assert re.fullmatch(rb'\{"version": "\d+\.\d+\.\d+"\}\n', version)


def test_populate_creates_proxies_array(toxiproxy: Toxiproxy) -> None:
    first, second = free_port(), free_port()
    proxies = toxiproxy.populate(
        [
            {
                "name": "test_toxiproxy_populate1",
                "upstream": "localhost:3306",
                "listen": f"localhost:{first}",
            },
            {
                "name": "test_toxiproxy_populate2",
                "upstream": "localhost:3306",
                "listen": f"localhost:{second}",
            },
        ]
    )
    assert sorted(host_port(p.listen)[1] for p in proxies) == sorted([first, second])
    for proxy in proxies:
        assert can_connect_to(*host_port(proxy.listen)) is True


def test_populate_with_a_changed_listen_recreates_the_proxy(toxiproxy: Toxiproxy) -> None:
    first, second = free_port(), free_port()
    toxiproxy.populate(
        [{"name": "pop", "upstream": "localhost:3306", "listen": f"127.0.0.1:{first}"}]
    )
    unchanged = toxiproxy.populate(
        [{"name": "pop", "upstream": "localhost:3306", "listen": f"127.0.0.1:{first}"}]
    )
    assert unchanged == []  # identical: left alone, not returned
    proxies = toxiproxy.populate(
        [{"name": "pop", "upstream": "localhost:3306", "listen": f"127.0.0.1:{second}"}]
    )
    assert [p.listen for p in proxies] == [f"127.0.0.1:{second}"]
    assert can_connect_to("127.0.0.1", second) and not can_connect_to("127.0.0.1", first)


def test_enable_and_disable_proxy_with_toxic(
    toxiproxy: Toxiproxy, echo: ThreadedEchoServer
) -> None:
    proxy = toxiproxy.create(upstream=echo.address, name="test_rubby_server")
    listen = proxy.listen
    proxy.add_toxic(type="latency", attributes={"latency": 123})
    proxy.disable()
    assert can_connect_to(*host_port(listen)) is False
    proxy.enable()
    assert can_connect_to(*host_port(listen)) is True
    assert proxy.get_toxic("latency_downstream").attributes["latency"] == 123
    assert toxiproxy.get_proxy("test_rubby_server").listen == listen


def test_delete_toxic(toxiproxy: Toxiproxy, echo: ThreadedEchoServer) -> None:
    proxy = toxiproxy.create(upstream=echo.address, name="test_rubby_server")
    proxy.add_toxic(type="latency", attributes={"latency": 123})
    assert proxy.get_toxic("latency_downstream").attributes["latency"] == 123
    assert proxy.destroy_toxic("latency_downstream") is True
    assert proxy.toxics() == {}
    with pytest.raises(NotFound):
        proxy.destroy_toxic("latency_downstream")


def test_reset(toxiproxy: Toxiproxy, echo: ThreadedEchoServer) -> None:
    proxy = toxiproxy.create(upstream=echo.address, name="test_rubby_server")
    proxy.disable()
    assert can_connect_to(*host_port(proxy.listen)) is False
    proxy.add_toxic(type="latency", attributes={"latency": 123})
    assert toxiproxy.reset() is True
    assert can_connect_to(*host_port(proxy.listen)) is True
    assert proxy.toxics() == {}


def test_not_found_path_raises_not_found(server: FaultProxyProcess) -> None:
    with pytest.raises(NotFound, match="404 page not found"):
        validate_response(requests.get(f"{server.url}/not_found", timeout=10))


def test_server_side_duplicate_raises_proxy_exists(
    toxiproxy: Toxiproxy, server: FaultProxyProcess
) -> None:
    body = {"upstream": "localhost:3306", "name": "test_mysql_service", "listen": "127.0.0.1:0"}
    validate_response(requests.post(f"{server.url}/proxies", json=body, timeout=10))
    with pytest.raises(ProxyExists, match="proxy already exists"):
        validate_response(requests.post(f"{server.url}/proxies", json=body, timeout=10))


def test_invalid_direction_raises_invalid_toxic(toxiproxy: Toxiproxy) -> None:
    proxy = toxiproxy.create(upstream="localhost:3306", name="p")
    with pytest.raises(InvalidToxic, match="stream was invalid"):
        proxy.add_toxic(type="latency", stream="sideways")


def test_multiple_toxics_of_one_type(toxiproxy: Toxiproxy) -> None:
    proxy = toxiproxy.create(upstream="localhost:3306", name="p")
    proxy.add_toxic(type="latency", name="latency_downstream", attributes={"latency": 1})
    proxy.add_toxic(type="latency", name="second_latency_downstream", attributes={"latency": 2})
    assert sorted(proxy.toxics()) == ["latency_downstream", "second_latency_downstream"]
    with pytest.raises(ProxyExists):  # the client maps a 409 on a toxic to ProxyExists
        proxy.add_toxic(type="latency", name="latency_downstream")


@pytest.mark.parametrize(
    ("streams", "minimum_s"),
    [(("upstream",), 0.1), (("downstream",), 0.1), (("upstream", "downstream"), 0.2)],
)
def test_apply_latency_toxics(
    toxiproxy: Toxiproxy, echo: ThreadedEchoServer, streams: tuple[str, ...], minimum_s: float
) -> None:
    proxy = toxiproxy.create(upstream=echo.address, name="p")
    assert round_trip_s(proxy.listen) < 1.0
    for stream in streams:
        proxy.add_toxic(type="latency", stream=stream, attributes={"latency": 100})
    assert minimum_s <= round_trip_s(proxy.listen) < minimum_s + 2.0


def test_apply_prolong_toxics(toxiproxy: Toxiproxy, echo: ThreadedEchoServer) -> None:
    proxy = toxiproxy.create(upstream=echo.address, name="p")
    proxy.add_toxic(type="latency", name="latency_downstream", attributes={"latency": 100})
    proxy.add_toxic(type="latency", name="second_latency_downstream", attributes={"latency": 100})
    assert 0.2 <= round_trip_s(proxy.listen) < 2.2


# -- D02: the exact requests each client call sends ----------------------------------------------


def test_client_calls_send_exactly_these_requests(echo: ThreadedEchoServer) -> None:
    recorded: list[RecordedRequest] = []
    saved = (APIConsumer.host, APIConsumer.port)
    with FaultProxyThread(seed=2, recorder=recorded.append) as server:
        client = Toxiproxy()
        client.update_api_consumer("127.0.0.1", server.port)
        try:
            steps: list[tuple[str, list[tuple[str, str]]]] = []

            def step(label: str) -> None:
                steps.append((label, [(r.method, r.path) for r in recorded]))
                recorded.clear()

            assert client.running() is True
            step("running")
            client.version()
            step("version")
            proxy = client.create(upstream=echo.address, name="p")
            step("create")
            client.create(
                upstream=echo.address, name="q", listen=f"127.0.0.1:{free_port()}", enabled=False
            )
            create_body = recorded[-1].body
            step("create disabled")
            client.proxies()
            step("proxies")
            client.get_proxy("p")
            step("get_proxy")
            proxy.add_toxic(type="latency", attributes={"latency": 1})
            toxic_body = recorded[-1].body
            step("add_toxic")
            proxy.toxics()
            step("toxics")
            proxy.get_toxic("latency_downstream")
            step("get_toxic")
            with proxy.down():
                pass
            down_bodies = [r.body for r in recorded]
            step("down")
            proxy.destroy_toxic("latency_downstream")
            step("destroy_toxic")
            assert client.reset() is True
            reset_request = recorded[-1]
            step("reset")
            client.populate([{"name": "p", "upstream": echo.address, "listen": proxy.listen}])
            step("populate unchanged")
            client.populate([{"name": "p", "upstream": "127.0.0.1:9", "listen": proxy.listen}])
            step("populate changed")
            client.destroy(proxy)
            step("destroy")
            client.destroy_all()
            step("destroy_all")
        finally:
            client.update_api_consumer(*saved)

    assert steps == [
        ("running", []),
        ("version", [("GET", "/version")]),
        ("create", [("GET", "/proxies"), ("POST", "/proxies")]),
        ("create disabled", [("GET", "/proxies"), ("POST", "/proxies")]),
        ("proxies", [("GET", "/proxies")]),
        ("get_proxy", [("GET", "/proxies")]),
        ("add_toxic", [("POST", "/proxies/p/toxics")]),
        ("toxics", [("GET", "/proxies/p/toxics")]),
        ("get_toxic", [("GET", "/proxies/p/toxics")]),
        ("down", [("POST", "/proxies/p"), ("POST", "/proxies/p")]),
        ("destroy_toxic", [("DELETE", "/proxies/p/toxics/latency_downstream")]),
        ("reset", [("POST", "/reset")]),
        ("populate unchanged", [("GET", "/proxies")]),
        (
            "populate changed",
            [
                ("GET", "/proxies"),
                ("DELETE", "/proxies/p"),
                ("GET", "/proxies"),
                ("POST", "/proxies"),
            ],
        ),
        ("destroy", [("DELETE", "/proxies/p")]),
        ("destroy_all", [("GET", "/proxies"), ("DELETE", "/proxies/q")]),
    ]
    assert b'"enabled": false' in create_body
    assert toxic_body.startswith(b"{") and all(
        key in toxic_body
        for key in (b'"name"', b'"type"', b'"stream"', b'"toxicity"', b'"attributes"')
    )
    assert down_bodies == [b'{"enabled": false}', b'{"enabled": true}']
    assert (reset_request.body, reset_request.content_type) == (b"", "")
    assert reset_request.user_agent.startswith("python-requests/")
