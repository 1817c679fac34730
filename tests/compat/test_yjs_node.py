"""A stock Yjs client (npm ``yjs`` + ``y-websocket`` over ``ws``) against the relay.

The client joins ``ws://HOST:PORT/yjs/<namespace>`` (y-websocket appends the room to the
server URL) where crdtstate replicas write, and writes itself: into a root map no schema
owns (``yjs_notes``) and into a counter slot of its own, which the replicas then count.
"""

from __future__ import annotations

import asyncio
from typing import Any

from crdtstate.sync import wire
from tests.compat.conftest import NodeYjs, OpenReplica, root_map, slot_value
from tests.integration.relay_helpers import (
    DocTarget,
    RawClient,
    RelayProcess,
    broadcasts,
    connect_replica,
    metric_value,
    wait_until,
)

NS = "compat-node"
WRITER = "compat-writer-token"
VIEWER = "compat-viewer-token"
TOKENS_TOML = f"""
[[tokens]]
token = "{WRITER}"
access = "write"

[[tokens]]
token = "{VIEWER}"
access = "read"

[namespaces."*"]
require_signatures = false
"""


def _yjs_url(relay: RelayProcess) -> str:
    return f"{relay.url}/yjs"


async def _replica_sees(replica: Any, predicate: Any, what: str, timeout_s: float = 10.0) -> None:
    await wait_until(lambda: bool(predicate()), timeout_s, what)


async def test_yjs_client_and_replicas_converge(
    relay: RelayProcess, node_yjs: NodeYjs, open_replica: OpenReplica
) -> None:
    r1 = open_replica("r1", NS, relay.url)
    r2 = open_replica("r2", NS, relay.url)
    r1.state.hits.inc(3)
    r2.state.hits.inc(4)
    r1.state.title.set("before the client")
    await asyncio.gather(r1.synced(10), r2.synced(10))

    await node_yjs.call("connect", client="a", url=_yjs_url(relay), room=NS)
    # The client sees the replicas' writes, in their documented layout.
    seen = await node_yjs.wait_maps(
        "a",
        lambda m: m["hits"].get("r1") == "3" and m["hits"].get("r2") == "4" and m["title"],
        ("hits", "title"),
        "the Yjs client sees the replicas' writes",
    )
    assert slot_value(seen["title"]["r1"]) == "before the client"

    # The client writes into a root of its own and into a counter slot of its own.
    await node_yjs.call("set", client="a", map="yjs_notes", key="hello", value="from node")
    await node_yjs.call("set", client="a", map="hits", key="yjs-node", value="5")
    for replica in (r1, r2):
        await _replica_sees(
            replica,
            lambda r=replica: root_map(r, "yjs_notes") == {"hello": "from node"},
            f"{replica.replica_id} sees the Yjs client's note",
        )
        await _replica_sees(
            replica,
            lambda r=replica: r.state.hits.value == 12,
            f"{replica.replica_id} counts the Yjs client's slot",
        )
    # An unknown root neither breaks the replicas' views nor counts as a field.
    assert "yjs_notes" not in r1.to_dict()
    assert r1.to_dict() == r2.to_dict()
    assert r1.violations() == [] and r2.violations() == []

    # Live writes after the client joined reach it too.
    r2.state.title.set("after the client")
    await node_yjs.wait_maps(
        "a",
        lambda m: "r2" in m["title"] and slot_value(m["title"]["r2"]) == "after the client",
        ("title",),
        "the Yjs client sees a live register write",
    )

    # The client's writes were sequenced like any other: a replica catching up from seq 0
    # receives them as broadcasts attributed to a plain Yjs connection.
    await asyncio.gather(r1.synced(10), r2.synced(10))
    target = DocTarget(NS, "raw-observer")
    probe, first, _ = await connect_replica(relay.url, target)
    await probe.close()
    # Same incarnation, last seq 0: the relay replays its log as broadcasts.
    raw, welcome, _ = await connect_replica(relay.url, target, incarnation=first.incarnation)
    try:
        got: list[wire.Broadcast] = []
        while len(got) < welcome.head_seq:
            frame = await raw.recv(10)
            assert frame is not None, "relay closed the catch-up connection"
            if isinstance(frame, wire.Snapshot):
                raise AssertionError("expected broadcasts from the catch-up ring")
            got.extend(broadcasts([frame]))
        assert [b.seq for b in got] == list(range(1, welcome.head_seq + 1))
        origins = {b.origin for b in got}
        assert {"r1", "r2"} <= origins
        assert any(o.startswith("yjs:") for o in origins), origins
    finally:
        await raw.close()
    # Replica state converged everywhere: same digest on both replicas.
    await _replica_sees(r1, lambda: r1.digest() == r2.digest(), "replica digests agree")


async def test_awareness_between_yjs_clients_through_relay(
    relay: RelayProcess, node_yjs: NodeYjs, open_replica: OpenReplica
) -> None:
    # crdtstate replicas expose no awareness (their sync client ignores it); presence is
    # checked between two stock Yjs clients, and the relay is asked what it tracks.
    replica = open_replica("r1", NS, relay.url)
    replica.state.hits.inc(1)
    url = _yjs_url(relay)
    await node_yjs.call("connect", client="a", url=url, room=NS)
    await node_yjs.call("connect", client="b", url=url, room=NS)
    a_id = (await node_yjs.call("dump", client="a"))["clientID"]
    b_id = (await node_yjs.call("dump", client="b"))["clientID"]
    await node_yjs.call("awareness", client="a", state={"user": "alice", "cursor": 3})
    await node_yjs.call("awareness", client="b", state={"user": "bob"})

    async def b_sees_a() -> bool:
        states = (await node_yjs.call("peers", client="b"))["states"]
        return states.get(str(a_id)) == {"user": "alice", "cursor": 3}

    async def a_sees_b() -> bool:
        states = (await node_yjs.call("peers", client="a"))["states"]
        return states.get(str(b_id)) == {"user": "bob"}

    await wait_until(b_sees_a, 10, "b sees a's presence")
    await wait_until(a_sees_b, 10, "a sees b's presence")

    # The relay tracks presence: a query-awareness answer lists both clients.
    raw = await RawClient.connect(relay.url, NS)
    try:
        await raw.send(wire.QueryAwareness())
        answer, _ = await raw.recv_until(lambda f: isinstance(f, wire.Awareness))
        assert isinstance(answer, wire.Awareness)
        entries = {e.client_id: e.state for e in wire.decode_awareness_update(answer.update)}
        assert '"alice"' in entries.get(a_id, "") and '"bob"' in entries.get(b_id, "")
    finally:
        await raw.close()

    # A client that leaves is announced as gone by the relay.
    await node_yjs.call("disconnect", client="b")

    async def b_gone() -> bool:
        states = (await node_yjs.call("peers", client="a"))["states"]
        return str(b_id) not in states

    await wait_until(b_gone, 10, "a sees b leave")
    # The document itself is untouched by presence.
    await node_yjs.wait_maps(
        "a", lambda m: m["hits"].get("r1") == "1", ("hits",), "a holds the replica's write"
    )


async def test_yjs_client_resyncs_after_relay_restart(
    relay: RelayProcess, node_yjs: NodeYjs, open_replica: OpenReplica
) -> None:
    replica = open_replica("r1", NS, relay.url)
    replica.state.hits.inc(2)
    await replica.synced(10)
    url = _yjs_url(relay)
    await node_yjs.call("connect", client="a", url=url, room=NS)
    await node_yjs.call("set", client="a", map="yjs_notes", key="n1", value=1)
    await _replica_sees(replica, lambda: root_map(replica, "yjs_notes") == {"n1": 1}, "n1")

    assert relay.terminate() == 0  # graceful drain: everything acknowledged is durable
    # Writes on both sides while the relay is down.
    await node_yjs.call("set", client="a", map="yjs_notes", key="n2", value=2)
    replica.state.hits.inc(5)
    relay.start()  # same port, same data

    await _replica_sees(
        replica,
        lambda: root_map(replica, "yjs_notes") == {"n1": 1, "n2": 2},
        "the replica gets the client's offline write after the restart",
        timeout_s=20,
    )
    await node_yjs.wait_maps(
        "a",
        lambda m: m["hits"].get("r1") == "7",
        ("hits",),
        "the client gets the replica's offline write after the restart",
        timeout_s=20,
    )
    history = (await node_yjs.call("dump", client="a"))["history"]
    assert history["syncs"] >= 2, history  # synced on the first and the second connection

    # A fresh client after the restart finds everything on the relay (it was persisted).
    await node_yjs.call("connect", client="late", url=url, room=NS)
    await node_yjs.wait_maps(
        "late",
        lambda m: m["yjs_notes"] == {"n1": 1, "n2": 2} and m["hits"].get("r1") == "7",
        ("yjs_notes", "hits"),
        "a new client sees the persisted state",
    )


async def test_read_only_token_watches_and_refuses_writes(
    relay_factory: Any, node_yjs: NodeYjs, open_replica: OpenReplica
) -> None:
    relay: RelayProcess = relay_factory(TOKENS_TOML)
    replica = open_replica("r1", NS, relay.url, token=WRITER)
    replica.state.title.set("dashboard v1")
    await replica.synced(10)
    url = _yjs_url(relay)

    # No token: refused outright (auth permission-denied, close 4001).
    await node_yjs.call("connect", client="anon", url=url, room=NS, stopOn=[4001])
    await wait_until(
        lambda: _closed_with(node_yjs, "anon", 4001), 10, "a client without a token is refused"
    )

    # A viewer watches: initial state and live writes.
    await node_yjs.call("connect", client="viewer", url=url, room=NS, token=VIEWER, stopOn=[4003])
    await node_yjs.wait_maps(
        "viewer",
        lambda m: "r1" in m["title"] and slot_value(m["title"]["r1"]) == "dashboard v1",
        ("title",),
        "the viewer sees the current state",
    )
    replica.state.title.set("dashboard v2")
    await node_yjs.wait_maps(
        "viewer",
        lambda m: slot_value(m["title"]["r1"]) == "dashboard v2",
        ("title",),
        "the viewer sees a live write",
    )

    # Its write is refused: permission denied, close 4003, and it never reaches anyone.
    await node_yjs.call("set", client="viewer", map="yjs_notes", key="sneaky", value=True)
    await wait_until(
        lambda: _closed_with(node_yjs, "viewer", 4003), 10, "the viewer's write is refused"
    )
    history = (await node_yjs.call("dump", client="viewer"))["history"]
    assert any("read-only" in reason for reason in history["denied"]), history
    assert metric_value(relay.metrics(), "crdtstate_relay_rejects_total", 'reason="forbidden"') >= 1

    # A writer's client and the replica agree on the state, without the refused write.
    replica.state.title.set("dashboard v3")
    await replica.synced(10)
    await node_yjs.call("connect", client="writer", url=url, room=NS, token=WRITER)
    maps = await node_yjs.wait_maps(
        "writer",
        lambda m: "r1" in m["title"] and slot_value(m["title"]["r1"]) == "dashboard v3",
        ("title", "yjs_notes"),
        "a writer's client sees the latest state",
    )
    assert maps["yjs_notes"] == {}
    assert root_map(replica, "yjs_notes") == {}


async def _closed_with(node_yjs: NodeYjs, client: str, code: int) -> bool:
    history = (await node_yjs.call("dump", client=client))["history"]
    return code in history["closeCodes"]
