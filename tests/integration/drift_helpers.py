"""Pieces shared by the tests of the relay's drift views, ``crdtstate drift`` and the dashboard.

* :class:`Agent`: the incident's schema, one field of every kind.
* :func:`open_replica`: a real :class:`~crdtstate.Replica` syncing with a relay, sending
  heartbeats as often as the sync client ticks (every 0.5 s) instead of every 10 s.
* :func:`get_json`, :func:`replicas_by_id`: read the relay's JSON views.
* :func:`forge_heartbeat`: a raw replica connection that says whatever heartbeat it is
  given (a wrong digest, to raise the divergence alarm).
* :func:`closed_port`: a local TCP port nothing listens on.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from crdtstate import GCounter, Log, LWWMap, LWWRegister, ORSet, PNCounter, Replica, Schema
from crdtstate.sync import wire
from crdtstate.sync.session import SyncSettings
from tests.integration.relay_helpers import DocTarget, RawClient, RelayProcess, connect_replica

__all__ = [
    "FAST_HEARTBEATS",
    "Agent",
    "closed_port",
    "forge_heartbeat",
    "get_json",
    "open_replica",
    "replicas_by_id",
]

FAST_HEARTBEATS = SyncSettings(
    heartbeat_interval_s=0.1, backoff_s_initial=0.05, backoff_s_max=0.5, backoff_jitter=0.0
)


class Agent(Schema, version=2):
    """The field story's agent state."""

    killswitch = LWWRegister(bool, default=False)
    mode = LWWRegister(str, default="normal")
    followers = ORSet(str)
    karma = PNCounter()
    visits = GCounter()
    memory = Log(dict)
    config = LWWMap(int)


def open_replica(
    root: Path, name: str, relay: RelayProcess, namespace: str = "agent", token: str | None = None
) -> Replica[Agent]:
    """Open replica ``name`` (its own data dir under ``root``) syncing with ``relay``."""
    return Replica.open(
        root / name,
        namespace,
        Agent,
        relay=relay.url,
        token=token,
        replica_id=name,
        sync_settings=FAST_HEARTBEATS,
    )


def get_json(relay: RelayProcess, path: str, token: str | None = None) -> tuple[int, Any]:
    """GET ``path`` on the relay; returns the status and the decoded JSON body."""
    status, body = relay.http("GET", path, token)
    return status, json.loads(body)


def replicas_by_id(
    relay: RelayProcess, namespace: str = "agent", query: str = "", token: str | None = None
) -> dict[str, dict[str, Any]]:
    """The replicas view of ``namespace``, as ``{replica id: entry}`` (asserts 200)."""
    status, body = get_json(relay, f"/v1/namespaces/{namespace}/replicas{query}", token)
    assert status == 200, body
    return {entry["replica_id"]: entry for entry in body["replicas"]}


async def forge_heartbeat(
    relay: RelayProcess, replica_id: str, heartbeat: dict[str, Any], namespace: str = "agent"
) -> RawClient:
    """Connect as replica ``replica_id`` and send ``heartbeat`` as is; the caller closes it."""
    target = DocTarget(namespace, replica_id)
    client, _welcome, _before = await connect_replica(relay.url, target)
    await client.send(wire.Heartbeat(json.dumps(heartbeat)))
    return client


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago and has no listener."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
