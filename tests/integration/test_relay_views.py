"""The relay's JSON views, /metrics drift gauges and dashboard files, on a real relay process
with real replicas (in this process, syncing over websockets) and raw forged connections."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crdtstate import Replica
from tests.integration.drift_helpers import (
    Agent,
    forge_heartbeat,
    get_json,
    open_replica,
    replicas_by_id,
)
from tests.integration.relay_helpers import RelayProcess, metric_value

Wait = Callable[..., Any]

TOKENS = """
[[tokens]]
token = "agent-writer"
access = "write"
namespaces = ["agent*"]

[[tokens]]
token = "agent-reader"
access = "read"
namespaces = ["agent*"]

[[tokens]]
token = "other-reader"
access = "read"
namespaces = ["other-*"]
"""


@pytest.fixture
def pair(tmp_path: Path, relay: RelayProcess) -> Iterator[list[Replica[Agent]]]:
    """Executor and supervisor, both connected to ``relay``, every write exchanged."""
    replicas = [open_replica(tmp_path, n, relay) for n in ("executor", "supervisor")]
    try:
        executor, supervisor = replicas
        executor.state.killswitch.set(True)
        executor.state.followers.add("bob")
        executor.state.memory.append({"event": "incident opened"})
        supervisor.state.karma.inc(3)
        supervisor.state.config.set("retries", 4)
        for replica in replicas:
            replica.wait_synced(15)
        yield replicas
    finally:
        for replica in replicas:
            replica.close()


def _converged(relay: RelayProcess, ids: set[str]) -> dict[str, dict[str, Any]] | None:
    view = replicas_by_id(relay)
    ready = ids <= set(view) and all(view[i]["status"] == "converged" for i in ids)
    return view if ready else None


def test_replicas_view_shows_connected_replicas_converged_at_the_head(
    relay: RelayProcess, pair: list[Replica[Agent]], wait_until: Wait
) -> None:
    executor, supervisor = pair
    view = wait_until(
        lambda: _converged(relay, {"executor", "supervisor"}), 15, "both replicas converged"
    )
    status, body = get_json(relay, "/v1/namespaces/agent/replicas")
    assert status == 200
    assert body["namespace"] == "agent" and body["loaded"] is True
    assert body["head_seq"] >= 5 and body["served_at"] >= body["head_time"]
    assert body["summary"]["verdict"] == "healthy"
    assert body["summary"]["connected"] == 2
    for replica in (executor, supervisor):
        entry = view[replica.replica_id]
        assert entry["connected"] is True
        assert entry["converged"] is True
        assert entry["lag_seqs"] == 0 and entry["lag_seconds"] == 0.0
        assert entry["applied_seq"] == body["head_seq"]
        assert entry["outbox"] == 0
        assert entry["digest"] == replica.digest()
        assert entry["recovery_seconds"] >= 0 and entry["last_seen"] > 0
        assert entry["alerts"] == [] and entry["ignored_fields"] == []
    assert view["executor"]["digest"] == view["supervisor"]["digest"]


def test_namespace_list_counts_replicas_by_status(
    relay: RelayProcess, pair: list[Replica[Agent]], wait_until: Wait
) -> None:
    wait_until(lambda: _converged(relay, {"executor", "supervisor"}), 15, "convergence")
    status, body = get_json(relay, "/v1/namespaces")
    assert status == 200 and body["truncated"] is False
    (agent,) = [ns for ns in body["namespaces"] if ns["namespace"] == "agent"]
    assert agent["replicas"] == 2 and agent["connected"] == 2 and agent["converged"] == 2
    assert agent["diverged"] == 0 and agent["alerts"] == 0 and agent["verdict"] == "healthy"
    assert agent["loaded"] is True and agent["head_seq"] >= 5


def test_state_view_renders_each_field_through_the_schema_in_the_doc(
    relay: RelayProcess, pair: list[Replica[Agent]], wait_until: Wait
) -> None:
    executor, _ = pair
    wait_until(lambda: _converged(relay, {"executor", "supervisor"}), 15, "convergence")
    status, body = get_json(relay, "/v1/namespaces/agent/state")
    assert status == 200
    assert body["schema"] == {"name": "Agent", "version": 2}
    fields = {f["name"]: f for f in body["fields"]}
    assert set(fields) == set(Agent.fields())
    assert (fields["killswitch"]["kind"], fields["killswitch"]["type"]) == ("lww", "bool")
    assert fields["killswitch"]["value"] is True
    assert fields["mode"]["value"] == "normal"  # the declared default, never written
    assert fields["followers"]["value"] == ["bob"]
    assert fields["karma"]["value"] == 3
    assert fields["config"]["value"] == {"retries": 4}
    assert fields["memory"]["value"] == [{"event": "incident opened"}]
    assert body["values"] == executor.to_dict()
    assert body["digest"] == executor.digest()
    assert body["violations"] == []


def test_a_stopped_replica_is_shown_disconnected_and_lagging_until_it_returns(
    tmp_path: Path, relay: RelayProcess, pair: list[Replica[Agent]], wait_until: Wait
) -> None:
    executor, supervisor = pair
    wait_until(lambda: _converged(relay, {"executor", "supervisor"}), 15, "convergence")
    supervisor.close()
    executor.state.killswitch.set(False)
    executor.state.karma.dec(1)
    executor.wait_synced(15)

    def stale() -> dict[str, dict[str, Any]] | None:
        view = replicas_by_id(relay, query="?max_lag_seconds=0.05&max_silence_seconds=60")
        lag = view["supervisor"]["lag_seconds"]
        caught_up = view["executor"]["status"] == "converged"
        return view if caught_up and lag is not None and lag > 0.05 else None

    view = wait_until(stale, 15, "the stopped replica's lag to grow, the writer's to clear")
    gone = view["supervisor"]
    assert gone["connected"] is False
    assert gone["status"] == "lagging" and gone["converged"] is False
    assert gone["lag_seqs"] >= 2
    assert gone["missing_since"] is not None
    assert [a["code"] for a in gone["alerts"]] == ["lag"]
    assert view["executor"]["status"] == "converged"

    back = open_replica(tmp_path, "supervisor", relay)
    try:
        back.wait_synced(15)
        view = wait_until(
            lambda: _converged(relay, {"executor", "supervisor"}), 15, "the replica to catch up"
        )
        assert view["supervisor"]["connected"] is True
        assert view["supervisor"]["digest"] == executor.digest()
    finally:
        back.close()


async def test_equal_state_vectors_with_different_digests_raise_the_divergence_alarm(
    relay: RelayProcess, pair: list[Replica[Agent]], wait_until: Wait
) -> None:
    view = wait_until(lambda: _converged(relay, {"executor", "supervisor"}), 15, "convergence")
    honest = view["executor"]
    forged = {
        **{k: honest[k] for k in ("applied_seq", "state_vector", "schema_version")},
        "digest": "0" * 64,
        "outbox": 0,
        "recovery_seconds": 0.01,
        "clock_offset_ms": 0.0,
        "started_at": honest["started_at"],
        "sent_at": honest["sent_at"],
    }
    client = await forge_heartbeat(relay, "forger", forged)
    try:
        view = wait_until(
            lambda: (
                (v := replicas_by_id(relay)).get("forger", {}).get("status") == "diverged" and v
            ),
            15,
            "the divergence alarm",
        )
        for name in ("executor", "supervisor", "forger"):
            entry = view[name]
            assert entry["status"] == "diverged" and entry["converged"] is False
            (alarm,) = [a for a in entry["alerts"] if a["code"] == "diverged"]
            assert alarm["severity"] == "alarm"
        assert "forger" in view["executor"]["alerts"][0]["message"]
        _, listing = get_json(relay, "/v1/namespaces")
        (agent,) = [ns for ns in listing["namespaces"] if ns["namespace"] == "agent"]
        assert agent["verdict"] == "alarm" and agent["diverged"] == 3 and agent["alarms"] == 3

        metrics = relay.metrics()
        assert (
            metric_value(metrics, "crdtstate_relay_namespace_divergence", 'namespace="agent"') == 3
        )
        labels = 'namespace="agent",replica="forger"'
        assert metric_value(metrics, "crdtstate_relay_replica_diverged", labels) == 1
    finally:
        await client.close()


async def test_a_different_state_vector_is_lagging_not_diverged(
    relay: RelayProcess, pair: list[Replica[Agent]], wait_until: Wait
) -> None:
    view = wait_until(lambda: _converged(relay, {"executor", "supervisor"}), 15, "convergence")
    behind = {
        "applied_seq": 1,
        "state_vector": "00",  # nothing applied: a different vector and a different digest
        "digest": "1" * 64,
        "outbox": 0,
        "recovery_seconds": 0.0,
        "clock_offset_ms": 0.0,
        "schema_version": 2,
        "started_at": view["executor"]["started_at"],
        "sent_at": view["executor"]["sent_at"],
    }
    client = await forge_heartbeat(relay, "latecomer", behind)
    try:
        view = wait_until(
            lambda: "latecomer" in (v := replicas_by_id(relay)) and v, 15, "the heartbeat"
        )
        assert view["latecomer"]["status"] == "lagging"
        assert view["latecomer"]["lag_seqs"] >= 4
        assert {view[n]["status"] for n in ("executor", "supervisor")} == {"converged"}
        metrics = relay.metrics()
        assert (
            metric_value(metrics, "crdtstate_relay_namespace_divergence", 'namespace="agent"') == 0
        )
    finally:
        await client.close()


async def test_partial_and_malformed_heartbeats_keep_the_replica_in_the_view(
    relay: RelayProcess, pair: list[Replica[Agent]], wait_until: Wait
) -> None:
    wait_until(lambda: _converged(relay, {"executor", "supervisor"}), 15, "convergence")
    payload = {
        "applied_seq": 2,
        "outbox_len": 7,
        "digest": "not a digest",
        "replica_id": "executor",
    }
    client = await forge_heartbeat(relay, "old-client", payload)
    try:
        view = wait_until(
            lambda: "old-client" in (v := replicas_by_id(relay)) and v, 15, "the heartbeat"
        )
        entry = view["old-client"]
        assert entry["connected"] is True
        assert entry["applied_seq"] == 2 and entry["outbox"] == 7
        assert entry["digest"] is None and entry["ignored_fields"] == ["digest"]
        assert entry["status"] == "unknown"
        # The payload's replica_id cannot speak for another replica.
        assert view["executor"]["digest"] != "not a digest"
    finally:
        await client.close()


def test_metrics_export_lag_and_outbox_per_namespace_and_replica(
    relay: RelayProcess, pair: list[Replica[Agent]], wait_until: Wait
) -> None:
    wait_until(lambda: _converged(relay, {"executor", "supervisor"}), 15, "convergence")
    text = relay.metrics()
    for replica in ("executor", "supervisor"):
        labels = f'namespace="agent",replica="{replica}"'
        assert f"crdtstate_relay_replica_lag_seqs{{{labels}}} 0.0" in text
        assert f"crdtstate_relay_replica_outbox{{{labels}}} 0.0" in text
        assert f"crdtstate_relay_replica_connected{{{labels}}} 1.0" in text
        assert f"crdtstate_relay_replica_lag_seconds{{{labels}}} 0.0" in text
    head = metric_value(text, "crdtstate_relay_namespace_head_seq", 'namespace="agent"')
    assert head >= 5
    assert metric_value(text, "crdtstate_relay_namespace_replicas", 'namespace="agent"') == 2
    assert (
        metric_value(text, "crdtstate_relay_namespace_replicas_connected", 'namespace="agent"') == 2
    )

    pair[1].close()
    pair[0].state.visits.inc()
    pair[0].wait_synced(15)

    def lagging() -> bool:
        text = relay.metrics()
        labels = 'namespace="agent",replica="supervisor"'
        return (
            metric_value(text, "crdtstate_relay_replica_lag_seqs", labels) >= 1
            and metric_value(text, "crdtstate_relay_replica_connected", labels) == 0
            and metric_value(
                text, "crdtstate_relay_namespace_replicas_lagging", 'namespace="agent"'
            )
            == 1
        )

    wait_until(lagging, 15, "the lag gauges of the stopped replica")


def test_heartbeats_stored_by_the_relay_are_served_after_it_restarts(
    relay: RelayProcess, pair: list[Replica[Agent]], wait_until: Wait
) -> None:
    wait_until(lambda: _converged(relay, {"executor", "supervisor"}), 15, "convergence")
    digest = pair[0].digest()
    for replica in pair:
        replica.close()
    assert relay.terminate() == 0
    relay.start()
    status, body = get_json(relay, "/v1/namespaces/agent/replicas?max_silence_seconds=3600")
    assert status == 200
    assert body["loaded"] is False and body["connections"] == 0
    view = {entry["replica_id"]: entry for entry in body["replicas"]}
    assert set(view) == {"executor", "supervisor"}
    for entry in view.values():
        assert entry["connected"] is False
        assert entry["digest"] == digest and entry["status"] == "converged"
    _, listing = get_json(relay, "/v1/namespaces")
    assert [ns["namespace"] for ns in listing["namespaces"]] == ["agent"]
    assert listing["namespaces"][0]["loaded"] is False
    status, state = get_json(relay, "/v1/namespaces/agent/state")
    assert status == 200 and state["digest"] == digest


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/namespaces/nobody/replicas", 404, "unknown_namespace"),
        ("/v1/namespaces/nobody/state", 404, "unknown_namespace"),
        ("/v1/namespaces/-dash/replicas", 400, "bad_namespace"),
        ("/v1/namespaces/a%20b/state", 400, "bad_namespace"),
        ("/v1/namespaces/" + "x" * 129 + "/replicas", 400, "bad_namespace"),
        ("/v1/namespaces/agent/replicas?max_lag_seconds=soon", 400, "bad_parameter"),
        ("/v1/namespaces/agent/replicas?max_outbox=-1", 400, "bad_parameter"),
        ("/v1/namespaces/agent/nothing", 404, "not_found"),
        ("/v1/elsewhere", 404, "not_found"),
    ],
)
def test_bad_requests_get_a_json_error(
    relay: RelayProcess, path: str, status: int, code: str
) -> None:
    got, body = get_json(relay, path)
    assert (got, body["error"]) == (status, code)
    assert body["message"]
    # The views never create a namespace they were asked about.
    assert get_json(relay, "/v1/namespaces")[1]["namespaces"] == []


def test_views_need_a_token_with_read_access_when_tokens_are_configured(
    tmp_path: Path, relay_factory: type[RelayProcess], wait_until: Wait
) -> None:
    secured = relay_factory(tmp_path / "secured", TOKENS).start()
    replica = open_replica(tmp_path, "executor", secured, token="agent-writer")
    try:
        replica.state.killswitch.set(True)
        replica.wait_synced(15)
        for path in (
            "/v1/namespaces",
            "/v1/namespaces/agent/replicas",
            "/v1/namespaces/agent/state",
        ):
            status, body = get_json(secured, path)
            assert (status, body["error"]) == (401, "unauthorized"), path
            status, body = get_json(secured, path, "wrong-token")
            assert (status, body["error"]) == (403, "forbidden"), path
            status, body = get_json(secured, path, "other-reader")
            assert (status, body["error"]) == (403, "forbidden"), path
            for token in ("agent-reader", "agent-writer"):
                status, body = get_json(secured, path, token)
                assert status == 200, (path, token, body)
        status, body = secured.http("GET", "/v1/namespaces/agent/state?token=agent-reader")
        assert status == 200 and json.loads(body)["values"]["killswitch"] is True
        wait_until(
            lambda: "executor" in replicas_by_id(secured, token="agent-reader"), 15, "heartbeat"
        )
    finally:
        replica.close()


def test_dashboard_files_are_served_with_a_strict_content_policy(relay: RelayProcess) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{relay.http_url}/", timeout=10) as response:
        html = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/html")
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy
        assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "<title>crdtstate relay</title>" in html and "static/app.js" in html
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        with urllib.request.urlopen(f"{relay.http_url}/static/{name}", timeout=10) as response:
            assert response.headers["Content-Type"].startswith(kind)
            assert response.read()
    for bad in ("/static/..%2Fviews.py", "/static/missing.js", "/static/dashboard.py"):
        status, _ = relay.http("GET", bad)
        assert status == 404, bad
