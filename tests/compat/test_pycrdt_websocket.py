"""pycrdt-websocket's client stack against the relay.

pycrdt-websocket 0.16 moved its provider into pycrdt: the client documented there is
``pycrdt.Provider`` over ``pycrdt.websocket.websocket.HttpxWebsocket`` on an ``httpx-ws``
connection, which is what :class:`PycrdtClient` runs. The provider handles sync messages only,
so awareness frames are split off to a ``pycrdt.Awareness`` by :class:`AwareChannel`, as an
application using that provider has to.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from httpx_ws import aconnect_ws
from pycrdt import (
    Awareness,
    Doc,
    Map,
    Provider,
    YMessageType,
    create_awareness_message,
    read_message,
)
from pycrdt.websocket.websocket import HttpxWebsocket

from tests.compat.conftest import NodeYjs, OpenReplica, root_map
from tests.integration.relay_helpers import RelayProcess, wait_until

NS = "compat-pycrdt"


class AwareChannel(HttpxWebsocket):
    """pycrdt-websocket's httpx channel; awareness messages go to ``awareness``."""

    def __init__(self, websocket: Any, path: str, awareness: Awareness) -> None:
        super().__init__(websocket, path)
        self.awareness = awareness
        self.closed = asyncio.Event()

    async def recv(self) -> bytes:
        """Next sync message (awareness messages are applied on the way)."""
        try:
            while True:
                message = await super().recv()
                if message[:1] == bytes((YMessageType.AWARENESS,)):
                    self.awareness.apply_awareness_update(read_message(message[1:]), "remote")
                    continue
                return message
        except BaseException:
            self.closed.set()
            raise


class PycrdtClient:
    """One Doc synced through the relay by ``pycrdt.Provider``; reconnect by hand."""

    def __init__(self, base_url: str, room: str) -> None:
        self.url = base_url.replace("ws://", "http://", 1) + f"/yjs/{room}"
        self.room = room
        self.doc: Doc[Any] = Doc()
        self.awareness = Awareness(self.doc)
        self.channel: AwareChannel | None = None
        self.connections = 0
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def notes(self) -> dict[str, Any]:
        """The ``yjs_notes`` root map."""
        return dict(self.doc.get("yjs_notes", type=Map).to_py() or {})

    def map(self, name: str) -> dict[str, Any]:
        """Any root map."""
        return dict(self.doc.get(name, type=Map).to_py() or {})

    async def connect(self, timeout_s: float = 10.0) -> None:
        """Open a connection and wait for the provider's initial sync."""
        synced = asyncio.Event()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(synced))
        waiter = asyncio.create_task(synced.wait())
        await asyncio.wait(
            {self._task, waiter}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        if not synced.is_set():
            raise AssertionError(f"pycrdt provider did not sync within {timeout_s} s")

    async def _run(self, synced: asyncio.Event) -> None:
        with contextlib.suppress(Exception):
            async with aconnect_ws(self.url, keepalive_ping_interval_seconds=None) as websocket:
                channel = AwareChannel(websocket, self.room, self.awareness)
                self.channel = channel
                async with Provider(self.doc, channel) as provider:
                    await provider.synced.wait()
                    self.connections += 1
                    synced.set()
                    stop = asyncio.create_task(self._stop.wait())
                    lost = asyncio.create_task(channel.closed.wait())
                    await asyncio.wait({stop, lost}, return_when=asyncio.FIRST_COMPLETED)
                    stop.cancel()
                    lost.cancel()
        self.channel = None

    async def wait_disconnected(self, timeout_s: float = 10.0) -> None:
        """Wait until the connection is gone (the relay went away)."""
        assert self._task is not None
        await asyncio.wait_for(asyncio.shield(self._task), timeout_s)

    async def set_presence(self, state: dict[str, Any] | None) -> None:
        """Set the local awareness state and send it."""
        self.awareness.set_local_state(state)
        assert self.channel is not None
        update = self.awareness.encode_awareness_update([self.awareness.client_id])
        await self.channel.send(create_awareness_message(update))

    async def close(self) -> None:
        """Leave: close the provider and the websocket."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)


async def _eventually(predicate: Any, what: str, timeout_s: float = 10.0) -> None:
    await wait_until(lambda: bool(predicate()), timeout_s, what)


async def test_pycrdt_provider_converges_with_replicas(
    relay: RelayProcess, open_replica: OpenReplica
) -> None:
    replica = open_replica("r1", NS, relay.url)
    replica.state.hits.inc(3)
    replica.state.title.set("from the replica")
    await replica.synced(10)

    client = PycrdtClient(relay.url, NS)
    await client.connect()
    try:
        await _eventually(lambda: client.map("hits").get("r1") == "3", "pycrdt sees the counter")
        with client.doc.transaction():
            client.doc.get("yjs_notes", type=Map)["py"] = "from pycrdt"
            client.doc.get("hits", type=Map)["pycrdt"] = "2"
        await _eventually(
            lambda: root_map(replica, "yjs_notes") == {"py": "from pycrdt"},
            "the replica sees the pycrdt client's note",
        )
        await _eventually(lambda: replica.state.hits.value == 5, "the replica counts its slot")
        # Sequenced like any other update: the replica applied it under a relay seq.
        await replica.synced(10)
        assert replica.applied_seq >= 3  # hits, title, the client's update
        replica.state.hits.inc(1)
        await _eventually(lambda: client.map("hits").get("r1") == "4", "pycrdt sees live writes")
    finally:
        await client.close()


async def test_awareness_between_pycrdt_and_node_clients(
    relay: RelayProcess, node_yjs: NodeYjs
) -> None:
    await node_yjs.call("connect", client="a", url=f"{relay.url}/yjs", room=NS)
    await node_yjs.call("awareness", client="a", state={"user": "node"})
    node_id = (await node_yjs.call("dump", client="a"))["clientID"]
    client = PycrdtClient(relay.url, NS)
    await client.connect()
    try:
        await _eventually(
            lambda: client.awareness.states.get(node_id) == {"user": "node"},
            "pycrdt sees the Node client's presence",
        )
        await client.set_presence({"user": "python"})

        async def node_sees_python() -> bool:
            states = (await node_yjs.call("peers", client="a"))["states"]
            return states.get(str(client.awareness.client_id)) == {"user": "python"}

        await wait_until(node_sees_python, 10, "the Node client sees pycrdt's presence")
    finally:
        await client.close()

    async def python_gone() -> bool:
        states = (await node_yjs.call("peers", client="a"))["states"]
        return str(client.awareness.client_id) not in states

    await wait_until(python_gone, 10, "the relay announces the pycrdt client's departure")


async def test_pycrdt_client_resyncs_after_relay_restart(
    relay: RelayProcess, open_replica: OpenReplica
) -> None:
    replica = open_replica("r1", NS, relay.url)
    replica.state.hits.inc(1)
    await replica.synced(10)
    client = PycrdtClient(relay.url, NS)
    await client.connect()
    try:
        await _eventually(lambda: client.map("hits").get("r1") == "1", "initial sync")
        assert relay.terminate() == 0
        await client.wait_disconnected()
        # Both sides write while the relay is down.
        client.doc.get("yjs_notes", type=Map)["offline"] = 1
        replica.state.hits.inc(2)
        relay.start()
        await client.connect(timeout_s=15)
        assert client.connections == 2
        await _eventually(
            lambda: root_map(replica, "yjs_notes") == {"offline": 1},
            "the replica gets the pycrdt client's offline write",
            timeout_s=20,
        )
        await _eventually(
            lambda: client.map("hits").get("r1") == "3",
            "the pycrdt client gets the replica's offline write",
            timeout_s=20,
        )
    finally:
        await client.close()
