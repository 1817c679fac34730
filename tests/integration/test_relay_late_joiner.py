"""Late joiners of a large namespace the relay just loaded from storage: served from the
stored bytes (snapshot, then the stored tail as broadcasts) without the relay building its
doc first; the doc is built later (a write, a state-vector diff, or quiet) and the sync
step 1 owed to the connections follows then. Real relay process, real sockets.

The relay builds the doc of a namespace whose snapshot is at most 256 KiB at load, so the
stored snapshots here are larger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pycrdt import Doc, Map

from crdtstate._ids import Namespace, OpId, Seq
from crdtstate.sync import wire
from crdtstate.sync.client import SyncClient
from crdtstate.sync.session import SyncSettings
from relay.backend.base import NewEntry, StoredSnapshot
from relay.backend.sqlite import SqliteBackend
from tests.integration.relay_helpers import (
    DocTarget,
    RawClient,
    RelayProcess,
    collect_broadcasts,
    connect_replica,
    signed_update,
)

_SNAPSHOT_SEQ = 30000
"""Map updates in the stored snapshot: about 390 KB."""


async def _store_snapshot(data_dir: Path, namespace: str, entries: int) -> Doc[Any]:
    """Store ``_SNAPSHOT_SEQ`` updates setting ``entries`` map keys, a snapshot of them and
    trim the log below it, before the relay starts (what compaction leaves behind)."""
    doc: Doc[Any] = Doc()
    m = doc.get("m", type=Map)
    updates: list[bytes] = []
    for i in range(_SNAPSHOT_SEQ):
        before = doc.get_state()
        with doc.transaction():
            m[f"k{i % entries}"] = i
        updates.append(doc.get_update(before))
    ns = Namespace(namespace)
    backend = SqliteBackend(data_dir / "relay.sqlite3")
    await backend.open()
    try:
        await backend.open_namespace(ns)
        await backend.append(ns, [NewEntry("origin", None, OpId(0), u) for u in updates])
        state = doc.get_update()
        assert len(state) > 256 * 1024
        await backend.write_snapshot(ns, StoredSnapshot(Seq(_SNAPSHOT_SEQ), state))
        assert await backend.trim_below(ns, Seq(_SNAPSHOT_SEQ + 1)) == _SNAPSHOT_SEQ
    finally:
        await backend.close()
    return doc


async def test_late_joiner_gets_the_stored_snapshot_before_the_doc_is_built(
    tmp_path: Path,
) -> None:
    data = tmp_path / "relay-data"
    source = await _store_snapshot(data, "big", 200)
    relay = RelayProcess(data).start()
    try:
        joiner = DocTarget("big", "joiner")
        client, welcome, before = await connect_replica(relay.url, joiner)
        try:
            # No sync step 1 before the welcome: it needs the doc, which is not built yet.
            assert not any(isinstance(f, wire.SyncStep1) for f in before), before
            assert welcome.head_seq == _SNAPSHOT_SEQ
            snap, between = await client.recv_until(lambda f: isinstance(f, wire.Snapshot))
            assert isinstance(snap, wire.Snapshot) and snap.seq == _SNAPSHOT_SEQ
            assert not any(isinstance(f, wire.SyncStep1) for f in between)
            assert snap.update == source.get_update()  # the stored bytes as they are
            joiner.apply_remote(snap.update, snap.seq)
            assert joiner.snapshot() == source.get("m", type=Map).to_py()

            # A plain Yjs client asking with an empty state vector gets them too.
            yjs = await RawClient.connect(relay.url, "big")
            try:
                await yjs.send(wire.SyncStep1(b"\x00"))
                step2, first = await yjs.recv_until(lambda f: isinstance(f, wire.SyncStep2))
                assert isinstance(step2, wire.SyncStep2) and step2.update == snap.update
                assert not any(isinstance(f, wire.SyncStep1) for f in first)
            finally:
                await yjs.close()

            # The doc is built once things are quiet; the owed sync step 1 follows.
            step1, _ = await client.recv_until(lambda f: isinstance(f, wire.SyncStep1), 30)
            assert isinstance(step1, wire.SyncStep1)
            assert step1.state_vector == source.get_state()
            # Writes go through the built doc and are sequenced after the snapshot.
            op = joiner.write("new", 1)
            await client.send(signed_update(joiner, op, joiner.outbox[op].update))
            ack, _ = await client.recv_until(lambda f: isinstance(f, wire.Ack))
            assert ack == wire.Ack(OpId(op), Seq(_SNAPSHOT_SEQ + 1), False)
        finally:
            await client.close()
    finally:
        relay.kill()


async def test_a_write_before_the_build_builds_the_doc_and_is_sequenced(tmp_path: Path) -> None:
    data = tmp_path / "relay-data"
    source = await _store_snapshot(data, "w", 100)
    relay = RelayProcess(data).start()
    try:
        writer = DocTarget("w", "writer")
        writer.apply_remote(source.get_update(), None)
        client, _, _ = await connect_replica(relay.url, writer)
        reader = DocTarget("w", "reader")
        rclient, _, _ = await connect_replica(relay.url, reader)
        try:
            snap, _ = await rclient.recv_until(lambda f: isinstance(f, wire.Snapshot))
            assert isinstance(snap, wire.Snapshot)
            reader.apply_remote(snap.update, snap.seq)
            op = writer.write("k0", "changed")
            await client.send(signed_update(writer, op, writer.outbox[op].update))
            ack, _ = await client.recv_until(lambda f: isinstance(f, wire.Ack))
            assert ack == wire.Ack(OpId(op), Seq(_SNAPSHOT_SEQ + 1), False)
            (got,) = await collect_broadcasts(rclient, 1)
            reader.apply_remote(got.update, got.seq)
            assert reader.snapshot() == writer.snapshot()
            assert reader.snapshot()["k0"] == "changed"
        finally:
            await client.close()
            await rclient.close()
    finally:
        relay.kill()


async def test_never_synced_replica_with_local_writes_gets_the_stored_snapshot(
    tmp_path: Path,
) -> None:
    """A replica that wrote offline (a schema declared at open) and never met a relay has a
    state vector, but none of the relay's state: it gets the stored bytes too."""
    data = tmp_path / "relay-data"
    source = await _store_snapshot(data, "fresh", 100)
    relay = RelayProcess(data).start()
    try:
        joiner = DocTarget("fresh", "joiner")
        joiner.write("offline", True)
        assert joiner.state_vector() != b"\x00"
        client, _, before = await connect_replica(relay.url, joiner)
        try:
            snap, between = await client.recv_until(lambda f: isinstance(f, wire.Snapshot))
            assert isinstance(snap, wire.Snapshot) and snap.seq == _SNAPSHOT_SEQ
            assert not any(isinstance(f, wire.SyncStep1) for f in before + between)
            joiner.apply_remote(snap.update, snap.seq)
            assert joiner.snapshot() == {**source.get("m", type=Map).to_py(), "offline": True}
        finally:
            await client.close()
    finally:
        relay.kill()


async def _snapshot_then_tail(tmp_path: Path, namespace: str) -> tuple[RelayProcess, DocTarget]:
    """A large stored snapshot, writes, an admin snapshot, more writes, then SIGKILL and a
    restart: the relay's storage holds a large snapshot at ``_SNAPSHOT_SEQ + 5`` and a log
    tail of 3 after it. Returns the restarted relay and the writer (holding everything)."""
    data = tmp_path / "relay-data"
    await _store_snapshot(data, namespace, 100)
    relay = RelayProcess(data).start()
    writer = DocTarget(namespace, "writer")
    client, _, _ = await connect_replica(relay.url, writer)
    try:
        snap, _ = await client.recv_until(lambda f: isinstance(f, wire.Snapshot))
        assert isinstance(snap, wire.Snapshot)
        writer.apply_remote(snap.update, snap.seq)
        for i in range(8):
            op = writer.write(f"w{i}", i)
            await client.send(signed_update(writer, op, writer.outbox[op].update))
            await client.recv_until(lambda f: isinstance(f, wire.Ack))
            if i == 4:
                status, _ = relay.http("POST", f"/admin/namespaces/{namespace}/snapshot")
                assert status == 200
    finally:
        await client.close()
    relay.kill()  # no drain: nothing snapshots the tail
    return relay.start(), writer


async def test_late_joiner_gets_the_stored_snapshot_then_the_stored_tail(tmp_path: Path) -> None:
    relay, writer = await _snapshot_then_tail(tmp_path, "tail")
    snapshot_seq, head = _SNAPSHOT_SEQ + 5, _SNAPSHOT_SEQ + 8
    try:
        joiner = DocTarget("tail", "joiner")
        client, welcome, before = await connect_replica(relay.url, joiner)
        try:
            assert welcome.head_seq == head
            assert not any(isinstance(f, wire.SyncStep1) for f in before)
            snap, _ = await client.recv_until(lambda f: isinstance(f, wire.Snapshot))
            assert isinstance(snap, wire.Snapshot) and snap.seq == snapshot_seq
            joiner.apply_remote(snap.update, snap.seq)
            rest = await collect_broadcasts(client, head - snapshot_seq)
            assert [b.seq for b in rest] == list(range(snapshot_seq + 1, head + 1))
            assert {b.origin for b in rest} == {"writer"}
            for entry in rest:
                joiner.apply_remote(entry.update, entry.seq)
            assert joiner.snapshot() == writer.snapshot()
        finally:
            await client.close()

        # The same through the real sync session: caught up at the head with the same state.
        fresh = DocTarget("tail", "session-joiner")
        settings = SyncSettings(backoff_s_initial=0.05, backoff_s_max=0.5)
        sync = SyncClient(fresh, relay.url, None, settings=settings)
        await sync.start()
        try:
            await sync.synced(30)
            assert fresh.applied_seq == head
            assert fresh.snapshot() == writer.snapshot()
        finally:
            await sync.stop()
    finally:
        relay.kill()


async def test_a_replica_whose_writes_are_in_the_stored_tail_gets_them_back(
    tmp_path: Path,
) -> None:
    """A replica notes broadcasts of its own origin as applied without applying them: one
    that lost its data (empty state vector) and whose writes are in the stored tail must get
    a diff from the doc instead, holding them."""
    relay, writer = await _snapshot_then_tail(tmp_path, "own")
    try:
        again = DocTarget("own", "writer")
        again.key, again._public_key = writer.key, writer.public_key  # same identity, no data
        client, _, _ = await connect_replica(relay.url, again)
        try:
            # One snapshot at the head, from the doc: nothing of its own left to broadcasts.
            snap, _ = await client.recv_until(lambda f: isinstance(f, wire.Snapshot))
            assert isinstance(snap, wire.Snapshot) and snap.seq == _SNAPSHOT_SEQ + 8
            again.apply_remote(snap.update, snap.seq)
            assert again.snapshot() == writer.snapshot()
        finally:
            await client.close()
    finally:
        relay.kill()


async def test_a_small_namespace_is_built_at_load(relay: RelayProcess) -> None:
    """Below 256 KiB the doc is built at load: sync step 1 comes first, as ever."""
    writer = DocTarget("small", "writer")
    client, _, before = await connect_replica(relay.url, writer)
    try:
        assert isinstance(before[0], wire.SyncStep1)
        op = writer.write("k", 1)
        await client.send(signed_update(writer, op, writer.outbox[op].update))
        await client.recv_until(lambda f: isinstance(f, wire.Ack))
    finally:
        await client.close()
    assert relay.http("POST", "/admin/namespaces/small/snapshot")[0] == 200
    relay.kill()
    relay.start()
    joiner = DocTarget("small", "joiner")
    client, _, before = await connect_replica(relay.url, joiner)
    try:
        assert isinstance(before[0], wire.SyncStep1)
        snap, _ = await client.recv_until(lambda f: isinstance(f, wire.Snapshot))
        assert isinstance(snap, wire.Snapshot) and snap.seq == 1
    finally:
        await client.close()


async def test_an_unreadable_stored_snapshot_fails_the_namespace_not_the_relay(
    tmp_path: Path,
) -> None:
    data = tmp_path / "relay-data"
    backend = SqliteBackend(data / "relay.sqlite3")
    await backend.open()
    try:
        await backend.open_namespace(Namespace("bad"))
        await backend.write_snapshot(
            Namespace("bad"), StoredSnapshot(Seq(3), b"\xff" * (300 * 1024))
        )
    finally:
        await backend.close()
    relay = RelayProcess(data).start()
    try:
        writer = DocTarget("bad", "writer")
        op = writer.write("k", 1)
        client, _, _ = await connect_replica(relay.url, writer)  # a state vector: needs the doc
        try:
            await client.send(signed_update(writer, op, writer.outbox[op].update))
            assert await client.closed_code(30) == wire.CloseCode.INTERNAL_ERROR
        finally:
            await client.close()
        status, _ = relay.http("GET", "/healthz")
        assert status == 200 and relay.alive()
        assert "stored snapshot unreadable" in relay.log_tail(50)
    finally:
        relay.kill()
