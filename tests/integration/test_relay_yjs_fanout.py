"""When plain Yjs clients get an update (``yjs_fanout``): as soon as the relay accepted it
(default) or once it is durable; replicas get it only once it is durable, either way.

A real relay process and real SQLite: the commit is held back by a second connection that
holds the database's write lock, so "accepted but not yet durable" lasts long enough to see.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from crdtstate.sync import wire
from relay.app import DB_FILE
from relay.config import ConfigError, load_settings
from tests.integration.relay_helpers import (
    DocTarget,
    RawClient,
    RelayProcess,
    broadcasts,
    connect_replica,
    wait_until,
)

NS = "fanout"


async def _frames_for(client: RawClient, seconds: float) -> list[wire.Frame]:
    """Everything the client receives within ``seconds``."""
    frames: list[wire.Frame] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    # recv's own timeout (aiohttp's receive timeout) leaves the socket usable afterwards.
    with contextlib.suppress(TimeoutError):
        while (remaining := deadline - loop.time()) > 0:
            frame = await client.recv(max(0.001, remaining))
            if frame is None:
                break
            frames.append(frame)
    return frames


def _updates(frames: list[wire.Frame]) -> list[bytes]:
    return [f.update for f in frames if isinstance(f, wire.SyncUpdate)]


def _logged(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM log").fetchone()[0])


@pytest.mark.parametrize("mode", ["accepted", "committed"])
async def test_yjs_clients_get_updates_before_or_after_the_commit(
    tmp_path: Path, mode: str
) -> None:
    relay = RelayProcess(tmp_path / "data", config_text=f'yjs_fanout = "{mode}"\n').start()
    db = relay.data_dir / DB_FILE
    writer = await RawClient.connect(relay.url, NS)
    watcher = await RawClient.connect(relay.url, NS)
    replica, _, _ = await connect_replica(relay.url, DocTarget(NS, "reader"))
    lock: sqlite3.Connection | None = None
    try:
        for client in (writer, watcher):
            # Synced (its step 1 answered) before anything is written: an update accepted
            # earlier would reach it in that answer, not as an update message.
            await client.send(wire.SyncStep1(b"\x00"))
            await client.recv_until(lambda f: isinstance(f, wire.SyncStep2))
        source = DocTarget(NS, "yjs-writer")
        source.write("k", 1)
        await writer.send(wire.SyncUpdate(source.doc.get_update()))
        await watcher.recv_until(lambda f: isinstance(f, wire.SyncUpdate))
        await replica.recv_until(lambda f: isinstance(f, wire.Broadcast | wire.BroadcastBatch))
        await wait_until(lambda: _logged(db) == 1, 10, "the first update is stored")

        # Hold the write lock: the relay's next commit waits for it (on its storage thread).
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        stalled: list[bytes] = []
        watched: list[wire.Frame] = []
        for value in (2, 3, 4):
            # Later updates arrive while the second's commit is stalled: they queue behind
            # that commit, yet that is no reason to hold them back from Yjs clients.
            before = source.doc.get_state()
            source.write("k", value)
            stalled.append(source.doc.get_update(before))
            await writer.send(wire.SyncUpdate(stalled[-1]))
            watched += await _frames_for(watcher, 0.5)
        replicated = broadcasts(await _frames_for(replica, 0.3))
        assert replicated == [], "a replica got an update before it was durable"
        assert _logged(db) == 1
        if mode == "accepted":
            assert _updates(watched) == stalled
        else:
            assert _updates(watched) == []
        lock.execute("COMMIT")
        lock.close()
        lock = None

        await wait_until(lambda: _logged(db) == 4, 10, "the stalled updates are stored")
        got: list[wire.Broadcast] = []
        while len(got) < len(stalled):
            frame, _ = await replica.recv_until(
                lambda f: isinstance(f, wire.Broadcast | wire.BroadcastBatch)
            )
            got += broadcasts([frame])
        assert [b.update for b in got] == stalled
        if mode == "committed":
            after = _updates(await _frames_for(watcher, 0.5))
            assert after == stalled
        else:
            # Nothing is sent twice: the commit does not fan out to Yjs clients again.
            assert _updates(await _frames_for(watcher, 0.3)) == []
    finally:
        if lock is not None:
            lock.close()
        for client in (writer, watcher, replica):
            await client.close()
        relay.kill()


def test_yjs_fanout_is_read_from_the_config_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    assert load_settings(None, environ={}).yjs_fanout == "accepted"
    path.write_text('yjs_fanout = "committed"\n')
    assert load_settings(path, environ={}).yjs_fanout == "committed"
    path.write_text('yjs_fanout = "eventually"\n')
    with pytest.raises(ConfigError, match=r"yjs_fanout"):
        load_settings(path, environ={})
