"""Reusable pieces for tests that need a real relay.

* :class:`RelayProcess`: a ``crdtstate-relay serve --port 0`` subprocess on 127.0.0.1, its
  port read from stdout, stopped by pid (SIGTERM, SIGKILL) in teardown.
* :func:`wait_until`: deadline-bound polling (no sleeps to wait for things).
* :class:`RawClient`: a websocket speaking raw frames (``crdtstate.sync.wire``).
* :class:`DocTarget`: a minimal :class:`~crdtstate.sync.target.SyncTarget` over a pycrdt Doc
  with an ed25519 key and an in-memory outbox, to drive the real ``SyncClient``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pycrdt import Doc, Map

from crdtstate._ids import Namespace, OpId, ReplicaId, Seq
from crdtstate.errors import InvalidUpdate
from crdtstate.store.base import OutboxEntry
from crdtstate.sync import wire

__all__ = [
    "DocTarget",
    "RawClient",
    "RelayProcess",
    "broadcasts",
    "collect_broadcasts",
    "connect_replica",
    "heartbeat_json",
    "hello_for",
    "metric_value",
    "new_key",
    "signed_update",
    "wait_until",
]

START_TIMEOUT_S = 20.0


class RelayProcess:
    """A relay subprocess bound to 127.0.0.1 on a free port.

    Args:
        data_dir: the relay's ``--data``.
        config_text: TOML written to ``data_dir/../relay.toml`` and passed as ``--config``.
        env: extra environment variables.
    """

    def __init__(
        self, data_dir: Path, config_text: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.config_text = config_text
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path = data_dir.parent / f"{data_dir.name}-relay.log"

    @property
    def url(self) -> str:
        """Websocket base URL."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """HTTP base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The relay's pid."""
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> RelayProcess:
        """Start (or restart on the same data dir) and wait for the listening line."""
        args = [sys.executable, "-m", "relay", "serve", "--host", "127.0.0.1"]
        args += ["--port", str(self.port or 0), "--data", str(self.data_dir)]
        if self.config_text is not None:
            config = self.data_dir.parent / f"{self.data_dir.name}-relay.toml"
            config.write_text(self.config_text)
            args += ["--config", str(config)]
        env = {**os.environ, **self.env}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, env=env)
        log.close()
        self.port = self._read_port()
        return self

    def _read_port(self) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        buffer = b""
        try:
            while time.monotonic() < deadline:
                if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buffer += chunk
                for line in buffer.decode(errors="replace").splitlines():
                    if line.startswith("crdtstate-relay listening on "):
                        return int(line.rsplit(":", 1)[1])
        finally:
            selector.close()
        self.kill()
        raise RuntimeError(f"relay did not start: stdout={buffer!r}, log tail={self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        """The end of the relay's log, for failure messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def terminate(self, timeout_s: float = 20.0) -> int:
        """SIGTERM (graceful drain) and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL if still running, and reap."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def rss_bytes(self) -> int:
        """Resident set size of the relay, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def http(self, method: str, path: str, token: str | None = None) -> tuple[int, str]:
        """A blocking HTTP request to the relay; returns (status, body)."""
        request = urllib.request.Request(f"{self.http_url}{path}", method=method)
        if method == "POST":
            request.data = b""
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> str:
        """The /metrics text."""
        status, body = self.http("GET", "/metrics")
        assert status == 200
        return body


def metric_value(text: str, name: str, labels: str = "") -> float:
    """Value of one sample in Prometheus text (0 when absent)."""
    key = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return 0.0


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float, what: str
) -> None:
    """Poll ``predicate`` every 20 ms until true; AssertionError naming ``what`` after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


class RawClient:
    """A websocket to the relay exchanging raw frames; received frames are queued."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.close_code: int | None = None

    @classmethod
    async def connect(
        cls, base_url: str, namespace: str, token: str | None = None, *, header: bool = False
    ) -> RawClient:
        """Connect to ``/yjs/<namespace>`` (token as query parameter, or as header)."""
        client = cls()
        client.session = aiohttp.ClientSession()
        url = f"{base_url}/yjs/{namespace}"
        headers = {}
        if token is not None and header:
            headers["Authorization"] = f"Bearer {token}"
        elif token is not None:
            url += f"?token={token}"
        client.ws = await client.session.ws_connect(url, headers=headers, max_msg_size=0)
        return client

    async def send(self, frame: wire.Frame | bytes) -> None:
        """Send a frame (or raw bytes)."""
        assert self.ws is not None
        data = frame if isinstance(frame, bytes) else wire.encode(frame)
        await self.ws.send_bytes(data)

    async def recv(self, timeout_s: float = 10.0) -> wire.Frame | None:
        """Next frame; None when the connection closed (``close_code`` then set)."""
        assert self.ws is not None
        while True:
            msg = await self.ws.receive(timeout=timeout_s)
            if msg.type is aiohttp.WSMsgType.BINARY:
                return wire.decode(msg.data)
            if msg.type is aiohttp.WSMsgType.CLOSE:
                # The code the relay sent (the socket's own code may say 1006 when the relay
                # already dropped the TCP connection before our close reply).
                self.close_code = int(msg.data)
                return None
            if msg.type in (
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.ERROR,
            ):
                if self.close_code is None:
                    self.close_code = self.ws.close_code
                return None

    async def recv_until(
        self, predicate: Callable[[wire.Frame], bool], timeout_s: float = 10.0
    ) -> tuple[wire.Frame, list[wire.Frame]]:
        """Receive until a frame matches; returns it and every frame before it."""
        deadline = time.monotonic() + timeout_s
        seen: list[wire.Frame] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching frame within {timeout_s} s; saw {seen[-5:]}")
            frame = await self.recv(remaining)
            if frame is None:
                raise AssertionError(f"closed ({self.close_code}) before a match; saw {seen[-5:]}")
            if predicate(frame):
                return frame, seen
            seen.append(frame)

    async def closed_code(self, timeout_s: float = 10.0) -> int | None:
        """Read until the relay closes the connection; its close code."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await self.recv(deadline - time.monotonic()) is None:
                return self.close_code
        raise AssertionError("connection not closed in time")

    async def close(self) -> None:
        """Close the socket and session."""
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()


def new_key() -> tuple[Ed25519PrivateKey, bytes]:
    """A fresh ed25519 key and its raw public bytes."""
    key = Ed25519PrivateKey.generate()
    return key, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class DocTarget:
    """A SyncTarget over a pycrdt Doc with a map ``m``; writes go to an in-memory outbox.

    Every outbox entry is durable at once (there is no store to fsync).
    """

    def __init__(self, namespace: str, replica_id: str) -> None:
        self._namespace = Namespace(namespace)
        self._replica_id = ReplicaId(replica_id)
        self.key, self._public_key = new_key()
        self.doc: Doc[Any] = Doc()
        self.map: Map[Any] = self.doc.get("m", type=Map)
        self._applied = Seq(0)
        self.outbox: dict[OpId, OutboxEntry] = {}
        self.next_op = 1
        self.acks: dict[OpId, Seq] = {}
        self.listener: Callable[[], None] | None = None
        self.relay_incarnation = ""
        self.heartbeats = 0

    # -- test-facing ------------------------------------------------------------------------

    def write(self, key: str, value: Any) -> OpId:
        """Set ``m[key] = value`` locally and queue the update in the outbox."""
        before = self.doc.get_state()
        with self.doc.transaction():
            self.map[key] = value
        update = self.doc.get_update(before)
        op_id = OpId(self.next_op)
        self.next_op += 1
        self.outbox[op_id] = OutboxEntry(op_id, update, {"set": key}, time.time())
        if self.listener is not None:
            self.listener()
        return op_id

    def snapshot(self) -> dict[str, Any]:
        """The map's content."""
        return dict(self.map.to_py() or {})

    # -- SyncTarget ------------------------------------------------------------------------

    @property
    def replica_id(self) -> ReplicaId:
        return self._replica_id

    @property
    def namespace(self) -> Namespace:
        return self._namespace

    @property
    def public_key(self) -> bytes:
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)

    def state_vector(self) -> bytes:
        return self.doc.get_state()

    def export_update(self, since_state_vector: bytes | None = None) -> bytes:
        if since_state_vector is None:
            return self.doc.get_update()
        return self.doc.get_update(since_state_vector)

    def apply_remote(self, update: bytes, seq: Seq | None, *, full_state: bool = False) -> None:
        try:
            self.doc.apply_update(update)
        except ValueError as exc:
            raise InvalidUpdate(str(exc)) from exc
        if seq is not None:
            self._applied = seq

    @property
    def applied_seq(self) -> Seq:
        return self._applied

    def note_applied(self, seq: Seq) -> None:
        self._applied = seq

    def pending_outbox(self, limit: int, after: OpId) -> list[OutboxEntry]:
        return [self.outbox[k] for k in sorted(self.outbox) if k > after][:limit]

    def on_ack(self, op_id: OpId, seq: Seq) -> None:
        self.acks[op_id] = seq
        self.outbox.pop(op_id, None)

    def set_outbox_listener(self, callback: Callable[[], None] | None) -> None:
        self.listener = callback

    def set_relay_incarnation(self, incarnation: str) -> None:
        self.relay_incarnation = incarnation

    def heartbeat(self) -> dict[str, Any]:
        self.heartbeats += 1
        return {"applied_seq": int(self._applied), "outbox_len": len(self.outbox)}


def hello_for(target: DocTarget, last_seq: int = 0, incarnation: str = "") -> wire.Hello:
    """A hello frame for ``target``."""
    return wire.Hello(
        wire.PROTOCOL_VERSION,
        target.replica_id,
        target.public_key,
        Seq(last_seq),
        target.state_vector(),
        incarnation,
        "test-instance",
    )


def signed_update(target: DocTarget, op_id: int, update: bytes) -> wire.Update:
    """An update frame signed by ``target``."""
    payload = wire.signing_payload(target.namespace, target.replica_id, op_id, update)
    return wire.Update(OpId(op_id), target.sign(payload), update)


def heartbeat_json(applied: int) -> str:
    """A heartbeat payload."""
    return json.dumps({"applied_seq": applied})


async def connect_replica(
    base_url: str,
    target: DocTarget,
    token: str | None = None,
    *,
    last_seq: int = 0,
    incarnation: str = "",
) -> tuple[RawClient, wire.Welcome, list[wire.Frame]]:
    """Connect, say hello for ``target``; returns the client, the welcome and the frames
    received before it (sync step 1, awareness)."""
    client = await RawClient.connect(base_url, target.namespace, token)
    await client.send(hello_for(target, last_seq, incarnation))
    welcome, before = await client.recv_until(lambda f: isinstance(f, wire.Welcome))
    assert isinstance(welcome, wire.Welcome)
    return client, welcome, before


def broadcasts(frames: list[wire.Frame]) -> list[wire.Broadcast]:
    """Flatten broadcasts and batches."""
    out: list[wire.Broadcast] = []
    for frame in frames:
        if isinstance(frame, wire.Broadcast):
            out.append(frame)
        elif isinstance(frame, wire.BroadcastBatch):
            out.extend(frame.entries)
    return out


async def collect_broadcasts(
    client: RawClient, count: int, timeout_s: float = 10.0
) -> list[wire.Broadcast]:
    """Receive until ``count`` broadcasts arrived (batches flattened)."""
    got: list[wire.Broadcast] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"got {len(got)} of {count} broadcasts")
        frame = await client.recv(remaining)
        if frame is None:
            raise AssertionError(f"closed ({client.close_code}) after {len(got)} broadcasts")
        got.extend(broadcasts([frame]))
    return got


async def _honest_main(url: str, namespace: str, token: str, stop_file: str, out_file: str) -> None:
    """Write steadily through a SyncClient until ``stop_file`` exists, then report whether
    every write was acknowledged and a second replica converged to the same view."""
    from crdtstate.sync.client import SyncClient
    from crdtstate.sync.session import SyncSettings

    settings = SyncSettings(backoff_s_initial=0.05, backoff_s_max=0.5, heartbeat_interval_s=1)
    writer = DocTarget(namespace, "honest-writer")
    observer = DocTarget(namespace, "honest-observer")
    clients = [SyncClient(t, url, token, settings=settings) for t in (writer, observer)]
    for c in clients:
        await c.start()
    written = 0
    report: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(stop_file) and time.monotonic() < deadline:
            writer.write(f"w{written}", written)
            written += 1
            await asyncio.sleep(0.01)
        await asyncio.gather(*(c.synced(30) for c in clients))
        report = {
            "written": written,
            "outbox": len(writer.outbox),
            "acked": len(writer.acks),
            "equal": writer.snapshot() == observer.snapshot(),
            "keys": sum(1 for k in observer.snapshot() if k.startswith("w")),
            "errors": [c.last_error for c in clients],
        }
    except Exception as exc:
        report = {"failure": repr(exc), "errors": [c.last_error for c in clients]}
    finally:
        for c in clients:
            await c.stop()
        Path(out_file).write_text(json.dumps(report))


if __name__ == "__main__":
    if sys.argv[1] == "honest":
        asyncio.run(_honest_main(*sys.argv[2:7]))
