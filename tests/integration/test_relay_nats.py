"""The relay on the NATS JetStream backend, all real processes: nats-server, relay, replicas.

- real crdtstate replicas converge through a relay whose log lives in JetStream;
- kill -9 of the relay mid-stream, a new relay process (empty ``--data``: everything it knows
  comes from JetStream) on the same server: nothing acknowledged is lost, a resend gets its
  original seq back;
- kill -9 of nats-server: the relay stays up, logs the lost connection, refuses writes with
  errors instead of acknowledging them; after the server restarts everything converges;
- a NATS server that cannot carry the relay's largest update, or none at all: the relay
  refuses to start with a message that says why.

Every process is stopped by pid in teardown; ports are free ports on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from relay_helpers import (
    DocTarget,
    RawClient,
    RelayProcess,
    connect_replica,
    hello_for,
    signed_update,
    wait_until,
)

from crdtstate import GCounter, ORSet, Replica, Schema
from crdtstate._ids import OpId, Seq
from crdtstate.sync import wire
from crdtstate.sync.session import SyncSettings
from tests.natsserver import NatsServer, free_port

FAST = SyncSettings(backoff_s_initial=0.05, backoff_s_max=0.3, heartbeat_interval_s=0.2)
BIG_PAYLOAD = "max_payload: 8MB\n"  # carries the relay's default 4 MiB update limit


class Board(Schema):
    """What the replicas write: a counter and a set, exact after convergence."""

    hits = GCounter()
    tags = ORSet(str)


def relay_config(server: NatsServer, prefix: str) -> str:
    return f'[backend]\nkind = "nats"\nurl = "{server.url}"\nprefix = "{prefix}"\ntimeout_s = 2.0\n'


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "js", BIG_PAYLOAD).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_relay(
    tmp_path: Path, nats_server: NatsServer, relay_factory: type[RelayProcess]
) -> RelayProcess:
    prefix = f"it{secrets.token_hex(3)}"
    return relay_factory(tmp_path / "relay-a", relay_config(nats_server, prefix)).start()


def wait_for_log(relay: RelayProcess, text: str, timeout_s: float) -> None:
    """Poll the relay's log until ``text`` shows up, or fail."""
    deadline = time.monotonic() + timeout_s
    while text not in relay.log_tail(400):
        assert time.monotonic() < deadline, f"{text!r} not logged: {relay.log_tail()}"
        time.sleep(0.02)  # polling the log, not waiting blindly


def open_board(root: Path, name: str, relay: RelayProcess) -> Replica[Board]:
    return Replica.open(
        root / name, "board", Board, relay=relay.url, replica_id=name, sync_settings=FAST
    )


def test_replicas_converge_through_a_relay_on_nats(
    tmp_path: Path, nats_relay: RelayProcess
) -> None:
    replicas = [open_board(tmp_path, f"r{i}", nats_relay) for i in range(3)]
    try:
        for round_ in range(20):
            for i, replica in enumerate(replicas):
                replica.state.hits.inc(i + 1)
                replica.state.tags.add(f"r{i}-{round_ % 5}")
        # Twice: after the first round every write is sequenced, so the second round waits
        # until each replica applied the final head.
        for replica in replicas * 2:
            replica.wait_synced(30)
        digests = {replica.digest() for replica in replicas}
        assert len(digests) == 1
        assert replicas[0].state.hits.value == 20 * (1 + 2 + 3)
        assert set(replicas[0].state.tags.value) == {
            f"r{i}-{k}" for i in range(3) for k in range(5)
        }
        assert "nats backend open" in nats_relay.log_tail(200)
        assert not (nats_relay.data_dir / "relay.sqlite3").exists()  # the log is in JetStream
    finally:
        for replica in replicas:
            replica.close()


async def _writer(client: RawClient, target: DocTarget, acked: dict[OpId, Seq]) -> None:
    """Send signed writes (window 32) until the socket dies."""

    async def reader() -> None:
        while (frame := await client.recv(30)) is not None:
            if isinstance(frame, wire.Ack):
                acked[frame.op_id] = frame.seq

    read = asyncio.create_task(reader())
    try:
        for i in range(3000):
            if read.done():
                break
            op = target.write(f"{target.replica_id}-{i}", i)
            try:
                await client.send(signed_update(target, op, target.outbox[op].update))
            except (ConnectionError, RuntimeError):
                break
            while len(target.outbox) - len(acked) > 32 and not read.done():
                await asyncio.sleep(0.001)
        await asyncio.wait_for(read, 30)
    finally:
        read.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await read


async def test_relay_killed_and_replaced_on_the_same_jetstream_loses_nothing_acknowledged(
    tmp_path: Path, nats_server: NatsServer, relay_factory: type[RelayProcess]
) -> None:
    config = relay_config(nats_server, f"it{secrets.token_hex(3)}")
    first = relay_factory(tmp_path / "relay-a", config).start()
    targets = [DocTarget("crash", f"w{i}") for i in range(3)]
    acked: list[dict[OpId, Seq]] = [{} for _ in targets]
    clients = [(await connect_replica(first.url, t))[0] for t in targets]
    tasks = [
        asyncio.create_task(_writer(c, t, a))
        for c, t, a in zip(clients, targets, acked, strict=True)
    ]
    try:
        await wait_until(lambda: sum(map(len, acked)) >= 300, 30, "300 acks before the kill")
        first.kill()  # SIGKILL with every writer mid-stream
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        for c in clients:
            await c.close()
    # A different relay process with an empty data dir: all it knows is in JetStream.
    second = relay_factory(tmp_path / "relay-b", config).start()
    joiner = DocTarget("crash", "joiner")
    client, welcome, _ = await connect_replica(second.url, joiner)
    try:
        snap, _ = await client.recv_until(lambda f: isinstance(f, wire.Snapshot))
        assert isinstance(snap, wire.Snapshot)
        joiner.apply_remote(snap.update, snap.seq)
        content = joiner.snapshot()
        pairs = [(t, op, seq) for t, a in zip(targets, acked, strict=True) for op, seq in a.items()]
        assert len(pairs) >= 300
        assert welcome.head_seq >= max(seq for _, _, seq in pairs)
        for target, op, _seq in pairs:
            assert target.outbox[op].op["set"] in content, "an acknowledged write was lost"
        target, op, seq = pairs[len(pairs) // 2]
        resend, _, _ = await connect_replica(second.url, target, last_seq=int(welcome.head_seq))
        await resend.send(signed_update(target, op, target.outbox[op].update))
        ack, _ = await resend.recv_until(lambda f: isinstance(f, wire.Ack))
        assert ack == wire.Ack(op, seq, True)
        await resend.close()
    finally:
        await client.close()


async def test_nats_server_restart_is_reported_and_recovered_from(
    nats_server: NatsServer, nats_relay: RelayProcess
) -> None:
    """Raw frames, so the test sees exactly what the relay answers while its storage is gone
    (and no client-side retry logic hides it)."""
    writer = DocTarget("outage", "w")
    ops = [writer.write(f"k{i}", i) for i in range(6)]
    client, _, _ = await connect_replica(nats_relay.url, writer)
    try:
        for op in ops[:5]:
            await client.send(signed_update(writer, op, writer.outbox[op].update))
            ack, _ = await client.recv_until(lambda f: isinstance(f, wire.Ack))
            assert ack == wire.Ack(op, Seq(op), False)
        nats_server.kill()
        await asyncio.to_thread(wait_for_log, nats_relay, "nats connection lost", 10)
        # A write now is refused with an error, never acknowledged, and the namespace closes.
        await client.send(signed_update(writer, ops[5], writer.outbox[ops[5]].update))
        frames: list[wire.Frame] = []
        while (frame := await client.recv(10)) is not None:
            frames.append(frame)
        assert not any(isinstance(f, wire.Ack) for f in frames), frames
        assert any(
            isinstance(f, wire.ErrorFrame) and f.op_id == ops[5] and "storage" in f.message
            for f in frames
        ), frames
        assert client.close_code == wire.CloseCode.INTERNAL_ERROR
    finally:
        await client.close()
    # While NATS is down a new connection is refused with 1011, and the relay stays up.
    refused = await RawClient.connect(nats_relay.url, "outage")
    try:
        assert await refused.closed_code(10) == wire.CloseCode.INTERNAL_ERROR
    finally:
        await refused.close()
    assert nats_relay.alive()
    assert "namespace load failed" in nats_relay.log_tail(400)

    nats_server.start()  # same port and store: the relay's client reconnects by itself
    await asyncio.to_thread(wait_for_log, nats_relay, "nats connection restored", 10)
    client = await _connect_when_ready(nats_relay, writer)
    try:
        # The refused write goes through now; an old one is recognised as a resend.
        for op, expected in (
            (ops[5], wire.Ack(ops[5], Seq(6), False)),
            (ops[0], wire.Ack(ops[0], Seq(1), True)),
        ):
            await client.send(signed_update(writer, op, writer.outbox[op].update))
            ack, _ = await client.recv_until(lambda f: isinstance(f, wire.Ack))
            assert ack == expected
    finally:
        await client.close()
    joiner = DocTarget("outage", "joiner")
    reader, welcome, _ = await connect_replica(nats_relay.url, joiner)
    try:
        assert welcome.head_seq == 6
        snap, _ = await reader.recv_until(lambda f: isinstance(f, wire.Snapshot))
        assert isinstance(snap, wire.Snapshot)
        joiner.apply_remote(snap.update, snap.seq)
        assert all(f"k{i}" in joiner.snapshot() for i in range(6))
    finally:
        await reader.close()


async def _connect_when_ready(relay: RelayProcess, target: DocTarget) -> RawClient:
    """Connect as ``target`` once the relay can load the namespace again (bounded retries)."""
    for _ in range(100):
        client = await RawClient.connect(relay.url, target.namespace)
        await client.send(hello_for(target, last_seq=6))
        frame = await client.recv(10)
        while frame is not None and not isinstance(frame, wire.Welcome):
            frame = await client.recv(10)
        if frame is not None:
            return client
        await client.close()  # closed with 1011: the storage is not back yet
        await asyncio.sleep(0.1)
    raise AssertionError(f"relay never served the namespace again: {relay.log_tail()}")


def _serve_fails(tmp_path: Path, config: str) -> str:
    """Run ``crdtstate-relay serve`` expecting it to exit 1; its stderr."""
    path = tmp_path / "relay.toml"
    path.write_text(config)
    args = [sys.executable, "-m", "relay", "serve", "--port", "0"]
    args += ["--data", str(tmp_path / "data"), "--config", str(path)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1, done
    return done.stderr


def test_relay_refuses_to_start_without_a_usable_nats(tmp_path: Path) -> None:
    small = NatsServer(tmp_path / "small")  # default max_payload: 1 MiB
    small.start()
    try:
        stderr = _serve_fails(tmp_path, relay_config(small, "x"))
        assert "max_payload" in stderr and "update_bytes_max" in stderr
    finally:
        small.stop()
    gone = f'[backend]\nkind = "nats"\nurl = "nats://127.0.0.1:{free_port()}"\ntimeout_s = 1.0\n'
    assert "cannot connect to nats" in _serve_fails(tmp_path, gone)


def test_backend_section_of_relay_toml(tmp_path: Path) -> None:
    from relay.app import configured_backend
    from relay.backend.nats import NatsBackend
    from relay.backend.sqlite import SqliteBackend
    from relay.config import ConfigError, load_settings

    path = tmp_path / "relay.toml"
    path.write_text(
        '[backend]\nkind = "nats"\nurl = "nats://127.0.0.1:4999"\nprefix = "blue-1"\n'
        "replicas = 3\n[limits]\nupdate_bytes_max = 65536\n"
    )
    backend = configured_backend(load_settings(path, environ={}))
    assert isinstance(backend, NatsBackend)
    assert (backend.url, backend.prefix, backend.meta_bucket) == (
        "nats://127.0.0.1:4999",
        "blue-1",
        "blue-1_meta",
    )
    assert isinstance(configured_backend(load_settings(None, environ={})), SqliteBackend)
    path.write_text('[backend]\nkind = "nats"\nprefix = "has.dot"\n')
    with pytest.raises(ConfigError, match=r"backend\.prefix"):
        load_settings(path, environ={})
    path.write_text('[backend]\nkind = "redis"\n')
    with pytest.raises(ConfigError, match=r"backend\.kind"):
        load_settings(path, environ={})
