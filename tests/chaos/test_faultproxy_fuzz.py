"""Hypothesis fuzz of the API: random JSON and random bytes never crash the server.

A real FaultProxyServer runs in a thread for the whole module; examples are sent with a
keep-alive ``http.client`` connection. Properties: every answer is a 2xx or a 4xx with the
JSON error shape, invalid toxic attributes are refused with the attribute named, a refused
update leaves the toxic unchanged, and the server keeps serving after every example.
"""

from __future__ import annotations

import http.client
import json
import math
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaos.faultproxy import FaultProxyThread
from chaos.faultproxy.model import FLOAT32_MAX, INT64_MAX
from chaos.faultproxy.toxics import TOXIC_TYPES

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


class Http:
    def __init__(self, port: int) -> None:
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        try:
            self.connection.request(method, path, body=body)
            response = self.connection.getresponse()
            return response.status, response.read()
        except (http.client.HTTPException, OSError):
            self.connection.close()
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            raise

    def json(self, method: str, path: str, value: Any) -> tuple[int, bytes]:
        return self.call(method, path, json.dumps(value).encode())


@pytest.fixture(scope="module")
def api() -> Iterator[Http]:
    with FaultProxyThread(seed=5) as server:
        client = Http(server.port)
        status, _ = client.json(
            "POST", "/proxies", {"name": "p", "upstream": "127.0.0.1:9", "listen": "127.0.0.1:0"}
        )
        assert status == 201
        yield client
        client.connection.close()


def assert_answer(status: int, body: bytes, allowed: set[int]) -> None:
    assert status in allowed, (status, body)
    if status >= 400:
        error = json.loads(body)
        assert error["status"] == status and isinstance(error["error"], str) and error["error"]


def assert_still_serving(api: Http) -> None:
    status, body = api.call("GET", "/version")
    assert (status, body) == (200, b'{"version": "2.12.0"}\n')


def cleanup_proxies(api: Http) -> None:
    status, body = api.call("GET", "/proxies")
    assert status == 200
    for name in json.loads(body):
        if name != "p":
            api.call("DELETE", f"/proxies/{quote(name, safe='')}")


@FUZZ
@given(body=json_values)
def test_random_proxy_bodies_are_created_or_refused(api: Http, body: Any) -> None:
    if isinstance(body, dict):
        body["enabled"] = False  # nothing is bound: random listen strings stay strings
    status, answer = api.json("POST", "/proxies", body)
    assert_answer(status, answer, {201, 400, 409})
    if status == 201:
        created = json.loads(answer)
        assert created["name"] == body["name"] and created["enabled"] is False
    cleanup_proxies(api)
    assert_still_serving(api)


@FUZZ
@given(body=json_values)
def test_random_populate_bodies_are_applied_or_refused(api: Http, body: Any) -> None:
    if isinstance(body, list):
        for entry in body:
            if isinstance(entry, dict):
                entry["enabled"] = False
                entry.pop("listen", None)
    status, answer = api.json("POST", "/populate", body)
    assert_answer(status, answer, {201, 400})
    cleanup_proxies(api)
    assert_still_serving(api)


def attribute_ok(value: Any) -> bool:
    return value is None or (type(value) is int and 0 <= value <= INT64_MAX)


def toxicity_ok(value: Any) -> bool:
    return value is None or (
        type(value) in (int, float) and math.isfinite(value) and abs(value) <= FLOAT32_MAX
    )


@FUZZ
@given(
    kind=st.sampled_from(sorted(TOXIC_TYPES)),
    stream=st.sampled_from(["upstream", "downstream", "UPSTREAM", "sideways", ""]),
    toxicity=scalars,
    extra=st.dictionaries(st.text(max_size=6), scalars, max_size=2),
    data=st.data(),
)
def test_random_toxics_are_accepted_exactly_when_valid(
    api: Http, kind: str, stream: str, toxicity: Any, extra: dict[str, Any], data: st.DataObject
) -> None:
    names = list(TOXIC_TYPES[kind].attributes.model_fields)
    attributes = {
        **extra,
        **data.draw(st.fixed_dictionaries({}, optional=dict.fromkeys(names, scalars))),
    }
    body = {
        "name": "fuzz",
        "type": kind,
        "stream": stream,
        "toxicity": toxicity,
        "attributes": attributes,
    }
    status, answer = api.json("POST", "/proxies/p/toxics", body)
    bad_attributes = [
        name for name in names if name in attributes and not attribute_ok(attributes[name])
    ]
    valid = (
        stream.lower() in ("upstream", "downstream")
        and toxicity_ok(toxicity)
        and not bad_attributes
    )
    assert_answer(status, answer, {200} if valid else {400})
    if status == 200:
        shown = json.loads(answer)
        assert shown["attributes"] == {name: attributes.get(name) or 0 for name in names}
        assert api.call("DELETE", "/proxies/p/toxics/fuzz")[0] == 204
    elif stream.lower() in ("upstream", "downstream") and toxicity_ok(toxicity):
        error = json.loads(answer)["error"]
        assert any(f"attributes.{name}" in error for name in bad_attributes), error
    assert_still_serving(api)


@FUZZ
@given(update=json_values)
def test_random_toxic_updates_apply_or_leave_the_toxic_unchanged(api: Http, update: Any) -> None:
    original = {"name": "u", "type": "latency", "attributes": {"latency": 5, "jitter": 1}}
    assert api.json("POST", "/proxies/p/toxics", original)[0] == 200
    try:
        before = json.loads(api.call("GET", "/proxies/p/toxics/u")[1])
        status, answer = api.json("PATCH", "/proxies/p/toxics/u", update)
        assert_answer(status, answer, {200, 400})
        after = json.loads(api.call("GET", "/proxies/p/toxics/u")[1])
        if status == 400:
            assert after == before
        else:
            assert after == json.loads(answer)
            assert (after["name"], after["type"]) == ("u", "latency")
    finally:
        assert api.call("DELETE", "/proxies/p/toxics/u")[0] == 204
    assert_still_serving(api)


@FUZZ
@given(
    body=st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()[:-1]),
    target=st.sampled_from(
        [
            ("POST", "/proxies"),
            ("POST", "/populate"),
            ("POST", "/proxies/p"),
            ("PATCH", "/proxies/p"),
            ("POST", "/proxies/p/toxics"),
            ("POST", "/proxies/nope/toxics"),
        ]
    ),
)
def test_garbage_bytes_get_a_4xx_and_the_server_keeps_serving(
    api: Http, body: bytes, target: tuple[str, str]
) -> None:
    method, path = target
    status, answer = api.call(method, path, body)
    assert_answer(status, answer, {200, 201, 400, 404, 409})
    if status == 200 and path == "/proxies/p/toxics":
        toxic = json.loads(answer)["name"]
        api.call("DELETE", f"/proxies/p/toxics/{quote(toxic, safe='')}")
    proxy = json.loads(api.call("GET", "/proxies/p")[1])
    if not proxy["enabled"] or proxy["upstream"] != "127.0.0.1:9":
        api.json("POST", "/proxies/p", {"enabled": True, "upstream": "127.0.0.1:9"})
    cleanup_proxies(api)
    assert_still_serving(api)
