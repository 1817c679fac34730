"""One contract for every relay storage backend: SQLite and NATS JetStream.

The relay's correctness rests on :class:`relay.backend.base.Backend` (the backend assigns
seqs, dedupes resends forever, trims only what a snapshot covers), so each backend runs the
same tests here; the NATS ones against a real ``nats-server -js`` (tests/natsserver.py).
``Storage.make()`` gives a second backend object on the *same* storage, the way a restarted
relay (or, for NATS, a second relay process) sees it.

Tests at the end are NATS-only: server restart, unreachable server, payload limit, a log
stream replaced behind the relay's back.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from crdtstate._ids import Namespace, OpId, ReplicaId, Seq
from relay.backend.base import (
    AppendResult,
    Backend,
    BackendError,
    NewEntry,
    StoredSnapshot,
)
from relay.backend.sqlite import SqliteBackend
from tests.natsserver import NatsServer, free_port

KINDS = ["sqlite", "nats"]
NS = Namespace("contract")


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One JetStream server for the module; tests isolate themselves by prefix."""
    server = NatsServer(tmp_path_factory.mktemp("nats") / "js").start()
    try:
        yield server
    finally:
        server.stop()


class Storage:
    """Where one test's data lives; :meth:`make` opens backends on it."""

    def __init__(self, kind: str, root: Path, nats_url: str | None) -> None:
        self.kind = kind
        self.root = root
        self.nats_url = nats_url
        self.prefix = f"c{secrets.token_hex(4)}"
        self.opened: list[Any] = []

    def build(self, **options: Any) -> Any:
        """A backend object on this storage, not opened."""
        if self.kind == "sqlite":
            return SqliteBackend(self.root / "relay.sqlite3", fsync=False)
        from relay.backend.nats import NatsBackend

        assert self.nats_url is not None
        return NatsBackend(self.nats_url, prefix=self.prefix, **options)

    async def make(self, **options: Any) -> Any:
        """An opened backend on this storage (closed at teardown)."""
        backend = self.build(**options)
        await backend.open()
        self.opened.append(backend)
        return backend


@pytest.fixture(params=KINDS)
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    url = None
    if request.param == "nats":
        url = request.getfixturevalue("nats_server").url
    store = Storage(request.param, tmp_path, url)
    try:
        yield store
    finally:
        for backend in store.opened:
            await backend.close()


@pytest.fixture
async def backend(storage: Storage) -> Backend:
    b: Backend = await storage.make()
    await b.open_namespace(NS)
    return b


def op(replica: str, op_id: int, data: bytes | None = None) -> NewEntry:
    """An update with an op id (deduplicated)."""
    update = f"{replica}/{op_id}".encode() if data is None else data
    return NewEntry(replica, ReplicaId(replica), OpId(op_id), update)


def raw(data: bytes, origin: str = "yjs:conn") -> NewEntry:
    """An update without op id (never deduplicated)."""
    return NewEntry(origin, None, OpId(0), data)


def fresh(*seqs: int) -> list[AppendResult]:
    return [AppendResult(Seq(s), False) for s in seqs]


# -- namespaces ------------------------------------------------------------------------------


async def test_open_namespace_creates_storage_once(storage: Storage) -> None:
    b = await storage.make()
    first = await b.open_namespace(NS)
    assert (first.head, first.trimmed_below) == (0, 0)
    assert len(first.incarnation) >= 16
    again = await b.open_namespace(NS)
    assert again.incarnation == first.incarnation
    other = await b.open_namespace(Namespace("other"))
    assert other.incarnation != first.incarnation


async def test_incarnation_and_log_survive_a_new_backend_object(storage: Storage) -> None:
    b = await storage.make()
    meta = await b.open_namespace(NS)
    await b.append(NS, [op("r", 1), raw(b"x")])
    await b.close()
    storage.opened.remove(b)
    b2 = await storage.make()
    again = await b2.open_namespace(NS)
    assert again.incarnation == meta.incarnation
    assert again.head == 2
    assert [e.update for e in await b2.read_after(NS, Seq(0), 10)] == [b"r/1", b"x"]


async def test_namespaces_lists_every_namespace_sorted_and_keeps_similar_names_apart(
    storage: Storage,
) -> None:
    b = await storage.make()
    # Names that a careless encoding of "." and "_" would map onto one another.
    names = ["a", "a.b", "a_b", "a_2eb", "a-b", "A", "x" * 128, "x" * 127 + "y"]
    for i, name in enumerate(names):
        await b.open_namespace(Namespace(name))
        await b.append(Namespace(name), [raw(str(i).encode())])
    assert await b.namespaces() == sorted(names)
    for i, name in enumerate(names):
        entries = await b.read_after(Namespace(name), Seq(0), 10)
        assert [e.update for e in entries] == [str(i).encode()], name


async def test_calls_on_a_namespace_without_storage_fail(storage: Storage) -> None:
    b = await storage.make()
    with pytest.raises(BackendError):
        await b.append(Namespace("never-opened"), [raw(b"x")])
    with pytest.raises(BackendError):
        await b.head(Namespace("never-opened"))


async def test_calls_after_close_fail(storage: Storage) -> None:
    b = await storage.make()
    await b.open_namespace(NS)
    await b.close()
    storage.opened.remove(b)
    with pytest.raises(BackendError):
        await b.append(NS, [raw(b"x")])
    with pytest.raises(BackendError):
        await b.read_after(NS, Seq(0), 10)


# -- log -------------------------------------------------------------------------------------


async def test_append_assigns_consecutive_seqs_in_order(backend: Backend) -> None:
    assert await backend.append(NS, []) == []
    assert await backend.append(NS, [raw(b"a"), op("r", 1), raw(b"c")]) == fresh(1, 2, 3)
    assert await backend.append(NS, [op("r", 2)]) == fresh(4)
    assert await backend.head(NS) == 4
    entries = await backend.read_after(NS, Seq(0), 100)
    assert [(e.seq, e.origin, e.update) for e in entries] == [
        (1, "yjs:conn", b"a"),
        (2, "r", b"r/1"),
        (3, "yjs:conn", b"c"),
        (4, "r", b"r/2"),
    ]


async def test_read_after_pages_and_bounds(backend: Backend) -> None:
    assert await backend.read_after(NS, Seq(0), 10) == []
    await backend.append(NS, [raw(bytes([i])) for i in range(25)])
    assert [e.seq for e in await backend.read_after(NS, Seq(0), 10)] == list(range(1, 11))
    assert [e.seq for e in await backend.read_after(NS, Seq(10), 10)] == list(range(11, 21))
    assert [e.seq for e in await backend.read_after(NS, Seq(20), 10)] == list(range(21, 26))
    assert await backend.read_after(NS, Seq(25), 10) == []
    assert await backend.read_after(NS, Seq(100), 10) == []


async def test_update_bytes_and_origin_round_trip_exactly(backend: Backend) -> None:
    blob = bytes(range(256)) * 40 + b"\r\n\x00"
    origin = "yjs:7f3a-conn:1"
    await backend.append(NS, [NewEntry(origin, None, OpId(0), blob), op("r.1:x_y", 9, b"")])
    entries = await backend.read_after(NS, Seq(0), 10)
    assert [(e.origin, e.update) for e in entries] == [(origin, blob), ("r.1:x_y", b"")]


async def test_op_id_zero_is_never_deduplicated(backend: Backend) -> None:
    assert await backend.append(NS, [raw(b"same"), raw(b"same")]) == fresh(1, 2)
    assert await backend.append(NS, [raw(b"same")]) == fresh(3)


async def test_resend_gets_the_original_seq_and_is_not_stored_again(backend: Backend) -> None:
    await backend.append(NS, [op("r", 1), op("r", 2), op("s", 1)])
    again = await backend.append(NS, [op("r", 2), raw(b"new"), op("r", 1)])
    assert again == [
        AppendResult(Seq(2), True),
        AppendResult(Seq(4), False),
        AppendResult(Seq(1), True),
    ]
    assert await backend.head(NS) == 4
    assert len(await backend.read_after(NS, Seq(0), 100)) == 4


async def test_duplicates_within_one_batch(backend: Backend) -> None:
    results = await backend.append(NS, [op("r", 1), op("r", 1), raw(b"x"), op("r", 1)])
    assert results == [
        AppendResult(Seq(1), False),
        AppendResult(Seq(1), True),
        AppendResult(Seq(2), False),
        AppendResult(Seq(1), True),
    ]


async def test_same_op_id_of_another_replica_is_a_new_entry(backend: Backend) -> None:
    assert await backend.append(NS, [op("r", 1), op("s", 1), op("r.s", 1)]) == fresh(1, 2, 3)


async def test_dedupe_is_per_namespace(backend: Backend) -> None:
    other = Namespace("other")
    await backend.open_namespace(other)
    await backend.append(NS, [op("r", 1)])
    assert await backend.append(other, [op("r", 1)]) == fresh(1)


async def test_dedupe_survives_a_new_backend_object(storage: Storage) -> None:
    """For NATS this is the server's own refusal of a second message on an op's subject:
    nothing answers from memory, and no time window applies (no ``Nats-Msg-Id``)."""
    b = await storage.make()
    await b.open_namespace(NS)
    await b.append(NS, [op("r", 1), op("r", 2)])
    b2 = await storage.make()
    await b2.open_namespace(NS)
    assert await b2.append(NS, [op("r", 2), op("r", 3)]) == [
        AppendResult(Seq(2), True),
        AppendResult(Seq(3), False),
    ]


async def test_dedupe_outlives_trimming_the_log(storage: Storage) -> None:
    """The resends go through a second backend object: nothing answers from memory."""
    first = await storage.make()
    await first.open_namespace(NS)
    await first.append(NS, [op("r", i) for i in range(1, 6)] + [op("s", 1)])
    await first.write_snapshot(NS, StoredSnapshot(Seq(6), b"state"))
    assert await first.trim_below(NS, Seq(7)) == 6
    backend = await storage.make()
    await backend.open_namespace(NS)
    assert await backend.read_after(NS, Seq(0), 10) == []
    results = await backend.append(NS, [op("r", 3), op("r", 6), op("s", 1), op("r", 6)])
    assert results == [
        AppendResult(Seq(3), True),
        AppendResult(Seq(7), False),
        AppendResult(Seq(6), True),
        AppendResult(Seq(7), True),
    ]
    assert await backend.head(NS) == 7


async def test_a_large_batch_keeps_order_and_dedupes(backend: Backend) -> None:
    batch = [op(f"r{i % 7}", i // 7 + 1) if i % 3 else raw(str(i).encode()) for i in range(3000)]
    results = await backend.append(NS, batch)
    assert results == fresh(*range(1, 3001))
    again = await backend.append(NS, [e for e in batch if e.op_id > 0][:500])
    assert all(r.duplicate for r in again)
    entries: list[Any] = []
    after = Seq(0)
    while chunk := await backend.read_after(NS, after, 1000):
        entries += chunk
        after = chunk[-1].seq
    assert [e.update for e in entries] == [e.update for e in batch]


async def test_two_backends_on_one_storage_share_one_sequence(storage: Storage) -> None:
    """Two relays (or a restarted one beside its old self) never hand out a seq twice."""
    a, b = await storage.make(), await storage.make()
    await a.open_namespace(NS)
    await b.open_namespace(NS)

    async def writer(backend: Backend, name: str) -> list[AppendResult]:
        out: list[AppendResult] = []
        for i in range(20):
            out += await backend.append(NS, [op(name, i + 1), op("shared", i + 1), raw(b"-")])
        return out

    ra, rb = await asyncio.gather(writer(a, "a"), writer(b, "b"))
    stored = [r.seq for r in ra + rb if not r.duplicate]
    assert sorted(stored) == list(range(1, len(stored) + 1))
    # "shared" ops were sent by both: each stored once, both sides saw the same seq.
    shared_a = [ra[3 * i + 1] for i in range(20)]
    shared_b = [rb[3 * i + 1] for i in range(20)]
    assert [x.seq for x in shared_a] == [x.seq for x in shared_b]
    assert all(x.duplicate != y.duplicate for x, y in zip(shared_a, shared_b, strict=True))
    assert await a.head(NS) == await b.head(NS) == len(stored) == 100


# -- snapshots and trimming ------------------------------------------------------------------


async def test_snapshot_round_trip_newer_kept(backend: Backend) -> None:
    assert await backend.read_snapshot(NS) is None
    await backend.write_snapshot(NS, StoredSnapshot(Seq(5), b"five"))
    assert await backend.read_snapshot(NS) == StoredSnapshot(Seq(5), b"five")
    await backend.write_snapshot(NS, StoredSnapshot(Seq(3), b"three"))
    assert await backend.read_snapshot(NS) == StoredSnapshot(Seq(5), b"five")
    await backend.write_snapshot(NS, StoredSnapshot(Seq(5), b"five again"))
    assert await backend.read_snapshot(NS) == StoredSnapshot(Seq(5), b"five again")
    await backend.write_snapshot(NS, StoredSnapshot(Seq(9), b""))
    assert await backend.read_snapshot(NS) == StoredSnapshot(Seq(9), b"")


async def test_large_snapshot_round_trips(storage: Storage) -> None:
    b = await storage.make()
    await b.open_namespace(NS)
    state = os.urandom(3 * 1024 * 1024 + 17)
    await b.write_snapshot(NS, StoredSnapshot(Seq(1), state))
    b2 = await storage.make()
    assert await b2.read_snapshot(NS) == StoredSnapshot(Seq(1), state)


async def test_trim_below_drops_only_what_a_snapshot_covers(backend: Backend) -> None:
    await backend.append(NS, [raw(bytes([i])) for i in range(10)])
    assert await backend.trim_below(NS, Seq(5)) == 0  # no snapshot: the log is the only copy
    await backend.write_snapshot(NS, StoredSnapshot(Seq(3), b"s3"))
    assert await backend.trim_below(NS, Seq(8)) == 3  # clamped to the snapshot: 1..3
    assert [e.seq for e in await backend.read_after(NS, Seq(0), 100)] == list(range(4, 11))
    assert await backend.trim_below(NS, Seq(2)) == 0
    meta = await backend.open_namespace(NS)
    assert (meta.head, meta.trimmed_below) == (10, 4)
    await backend.write_snapshot(NS, StoredSnapshot(Seq(10), b"s10"))
    assert await backend.trim_below(NS, Seq(11)) == 7  # everything
    assert await backend.read_after(NS, Seq(0), 100) == []
    assert await backend.head(NS) == 10
    assert (await backend.open_namespace(NS)).trimmed_below == 11
    assert await backend.append(NS, [raw(b"next")]) == fresh(11)
    assert [e.seq for e in await backend.read_after(NS, Seq(0), 100)] == [11]


# -- replicas --------------------------------------------------------------------------------


async def test_replica_table(backend: Backend) -> None:
    r1, r2 = ReplicaId("r.1:a"), ReplicaId("r0")
    assert await backend.replicas(NS) == []
    assert await backend.bind_replica(NS, r1, b"key-1", 100.0) == b"key-1"
    assert await backend.bind_replica(NS, r1, b"other", 101.0) == b"key-1"  # first bind wins
    assert await backend.bind_replica(NS, r2, b"key-2", 102.0) == b"key-2"
    await backend.record_replica(NS, r1, Seq(7), '{"applied_seq": 7}', 110.0)
    await backend.record_replica(NS, r1, Seq(8), None, 111.0)  # keeps the heartbeat
    await backend.record_replica(NS, ReplicaId("unbound"), Seq(1), "{}", 112.0)
    records = await backend.replicas(NS)
    rows = [(r.replica_id, r.public_key, r.applied_seq, r.last_seen, r.heartbeat) for r in records]
    assert rows == [  # sorted by replica id: "r.1:a" < "r0"
        (r1, b"key-1", 8, 111.0, '{"applied_seq": 7}'),
        (r2, b"key-2", 0, 102.0, ""),
    ]
    other = Namespace("other")
    await backend.open_namespace(other)
    assert await backend.replicas(other) == []
    assert await backend.bind_replica(other, r1, b"key-x", 1.0) == b"key-x"


# -- NATS only -------------------------------------------------------------------------------


def _nats_backend(url: str, **options: Any) -> Any:
    from relay.backend.nats import NatsBackend

    return NatsBackend(url, prefix=f"c{secrets.token_hex(4)}", **options)


async def test_nats_restart_fails_calls_clearly_then_recovers(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "js").start()
    b = _nats_backend(server.url, timeout_s=1.0)
    try:
        await b.open()
        meta = await b.open_namespace(NS)
        await b.append(NS, [op("r", 1)])
        server.kill()  # a crash: nothing flushed but what the OS holds
        with pytest.raises(BackendError, match=r"nats nats://127\.0\.0\.1:\d+: append"):
            for _ in range(50):  # the client notices the dead socket within a few tries
                await b.append(NS, [op("r", 2)])
                await asyncio.sleep(0.05)
        server.start()
        results = None
        for _ in range(100):
            try:
                results = await b.append(NS, [op("r", 1), op("r", 2)])
                break
            except BackendError:
                await asyncio.sleep(0.05)  # reconnecting: bounded retries
        assert results is not None, "backend never recovered"
        assert results[0] == AppendResult(Seq(1), True)
        assert results[1].seq == 2  # stored now, or by the failed call before the kill
        again = await b.open_namespace(NS)
        assert again.incarnation == meta.incarnation and again.head == 2
    finally:
        await b.close()
        server.stop()


async def test_nats_unreachable_server_fails_open_within_the_timeout() -> None:
    b = _nats_backend(f"nats://127.0.0.1:{free_port()}", connect_timeout_s=1.0)
    with pytest.raises(BackendError, match="cannot connect to nats"):
        await b.open()


async def test_nats_refuses_a_server_whose_max_payload_is_too_small(
    nats_server: NatsServer,
) -> None:
    b = _nats_backend(nats_server.url, max_entry_bytes=4 * 1024 * 1024)
    with pytest.raises(BackendError, match="max_payload"):
        await b.open()
    ok = _nats_backend(nats_server.url, max_entry_bytes=512 * 1024)
    await ok.open()
    await ok.close()


async def test_nats_replaced_log_stream_gets_a_new_incarnation(nats_server: NatsServer) -> None:
    b = _nats_backend(nats_server.url)
    await b.open()
    try:
        first = await b.open_namespace(NS)
        await b.append(NS, [op("r", 1)])
        await b._js.delete_stream(f"{b.prefix}_log_{NS}")
        again = await b.open_namespace(NS)
        assert again.incarnation != first.incarnation
        assert again.head == 0
        assert await b.append(NS, [op("r", 1)]) == fresh(1)
    finally:
        await b.close()


async def _take(feed: Any, count: int, timeout_s: float = 10.0) -> list[Any]:
    """The next ``count`` items of an async iterator, within ``timeout_s``."""

    async def take() -> list[Any]:
        return [await anext(feed) for _ in range(count)]

    return await asyncio.wait_for(take(), timeout_s)


async def test_nats_follow_sees_every_relays_entries_in_seq_order(
    nats_server: NatsServer,
) -> None:
    """The building block of scale-out: a relay learns what another relay appended."""
    a = _nats_backend(nats_server.url)
    from relay.backend.nats import NatsBackend

    b = NatsBackend(nats_server.url, prefix=a.prefix)
    await a.open()
    await b.open()
    feed = b.follow(NS, Seq(0), heartbeat_s=0.5)
    try:
        await a.open_namespace(NS)
        await b.open_namespace(NS)
        first = _take(feed, 4)
        taking = asyncio.ensure_future(first)
        await a.append(NS, [op("r", 1), raw(b"x", "yjs:a")])
        await b.append(NS, [op("s", 1)])
        await a.append(NS, [op("r", 1), op("r", 2)])  # a resend: not a new entry
        got = await taking
        assert [(f.entry.seq, f.entry.origin, f.entry.update, f.own) for f in got] == [
            (1, "r", b"r/1", False),
            (2, "yjs:a", b"x", False),
            (3, "s", b"s/1", True),
            (4, "r", b"r/2", False),
        ]
        assert {f.relay for f in got if not f.own} == {a.instance}
        later = b.follow(NS, Seq(3), heartbeat_s=0.5)
        assert [f.entry.seq for f in await _take(later, 1)] == [4]
        await later.aclose()
        # Following from before a trim cannot be gap-free: it says so.
        await a.write_snapshot(NS, StoredSnapshot(Seq(4), b"s"))
        assert await a.trim_below(NS, Seq(3)) == 2
        trimmed = b.follow(NS, Seq(0), heartbeat_s=0.5)
        with pytest.raises(BackendError, match="expected seq 1"):
            await _take(trimmed, 1)
        await trimmed.aclose()
    finally:
        await feed.aclose()
        await a.close()
        await b.close()


async def test_nats_follow_fails_when_the_server_goes_away(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "js").start()
    b = _nats_backend(server.url, timeout_s=1.0)
    try:
        await b.open()
        await b.open_namespace(NS)
        feed = b.follow(NS, Seq(0), heartbeat_s=0.2)
        await b.append(NS, [raw(b"x")])
        assert [f.entry.seq for f in await _take(feed, 1)] == [1]
        server.kill()
        with pytest.raises(BackendError, match="no heartbeat"):
            await _take(feed, 1, timeout_s=10)
        await feed.aclose()
    finally:
        await b.close()
        server.stop()


async def test_nats_a_trim_by_another_relay_keeps_dedupe_here(nats_server: NatsServer) -> None:
    """Relay b holds the namespace open while relay a trims it: b learns the trim marks from
    the namespace record's watch, so a resend of a trimmed op is still a duplicate on b."""
    from relay.backend.nats import NatsBackend, token

    a = _nats_backend(nats_server.url)
    b = NatsBackend(nats_server.url, prefix=a.prefix)
    await a.open()
    await b.open()
    try:
        await a.open_namespace(NS)
        await b.open_namespace(NS)
        await a.append(NS, [op("r", i) for i in range(1, 6)])
        await a.write_snapshot(NS, StoredSnapshot(Seq(5), b"s"))
        assert await a.trim_below(NS, Seq(6)) == 5
        marks = b._spaces[NS].trim_ops
        for _ in range(200):  # the watch delivers within a round trip; bounded poll
            if marks.get(token("r")) == 5:
                break
            await asyncio.sleep(0.01)
        assert marks.get(token("r")) == 5
        assert await b.append(NS, [op("r", 3), op("r", 6)]) == [
            AppendResult(Seq(3), True),
            AppendResult(Seq(6), False),
        ]
    finally:
        await a.close()
        await b.close()
