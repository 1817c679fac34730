"""Fixtures for compatibility tests with Yjs clients nobody here wrote.

* ``relay`` / ``relay_factory``: real relay subprocesses (``tests/integration/relay_helpers``),
  killed by pid at teardown.
* ``node_yjs``: starts ``compat/yjs_client.mjs`` (npm ``yjs`` + ``y-websocket`` over ``ws``)
  and talks to it in JSON lines; the process is ended by pid at teardown.
* ``open_replica``: ``Replica.open(..., relay=url)`` in a data dir of its own, closed at
  teardown.

The Node packages come from ``scripts/install-node-deps.sh`` (``npm ci`` in ``compat/``).
Without them the Node tests are skipped locally and fail under CI (``CI`` set), so a missing
install step cannot pass unnoticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crdtstate import GCounter, LWWRegister, Replica, Schema
from crdtstate.sync.session import SyncSettings
from tests.integration.relay_helpers import RelayProcess, wait_until

ROOT = Path(__file__).resolve().parents[2]
COMPAT = ROOT / "compat"
CLIENT_SCRIPT = COMPAT / "yjs_client.mjs"
REPLY_TIMEOUT_S = 10.0

FAST_SYNC = SyncSettings(backoff_s_initial=0.05, backoff_s_max=0.3, heartbeat_interval_s=1.0)
"""Replicas reconnect quickly after a relay restart (tests wait on them)."""


class Board(Schema):
    """The replicas' schema: a counter and a register (see crdtstate/crdt for the layout)."""

    hits = GCounter()
    title = LWWRegister(str, default="")


def _missing_node_deps() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    for package in ("yjs", "y-websocket", "ws"):
        if not (COMPAT / "node_modules" / package / "package.json").exists():
            return f"compat/node_modules/{package} missing: run scripts/install-node-deps.sh"
    return None


def require_node_deps() -> None:
    """Skip (fail under CI) when Node or the compat packages are not installed."""
    missing = _missing_node_deps()
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(missing)
    pytest.skip(missing)


class NodeYjs:
    """A ``compat/yjs_client.mjs`` process: commands in, replies out, one JSON per line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls) -> NodeYjs:
        """Start the Node client process."""
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(CLIENT_SCRIPT),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(COMPAT),
        )
        return cls(proc)

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Run one command; its reply (AssertionError on an error reply)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        async with self._lock:
            request_id = next(self._ids)
            line = json.dumps({"id": request_id, "cmd": cmd, **args}) + "\n"
            self.proc.stdin.write(line.encode())
            await self.proc.stdin.drain()
            while True:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), REPLY_TIMEOUT_S)
                if not raw:
                    raise AssertionError(f"node client exited: {await self.stderr_tail()}")
                reply: dict[str, Any] = json.loads(raw)
                if reply.get("id") == request_id:
                    break
        if not reply.get("ok"):
            raise AssertionError(f"node client {cmd} failed: {reply.get('error')}")
        return reply

    async def maps(self, client: str, *names: str) -> dict[str, dict[str, Any]]:
        """The named root maps of ``client``'s doc, as JSON."""
        reply = await self.call("dump", client=client, maps=list(names))
        maps: dict[str, dict[str, Any]] = reply["maps"]
        return maps

    async def wait_maps(
        self,
        client: str,
        predicate: Callable[[dict[str, dict[str, Any]]], bool],
        names: tuple[str, ...],
        what: str,
        timeout_s: float = 10.0,
    ) -> dict[str, dict[str, Any]]:
        """Poll ``client``'s maps until ``predicate`` holds; the maps."""
        seen: dict[str, dict[str, Any]] = {}

        async def check() -> bool:
            nonlocal seen
            seen = await self.maps(client, *names)
            return predicate(seen)

        try:
            await wait_until(check, timeout_s, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen {seen}") from None
        return seen

    async def stderr_tail(self) -> str:
        """What the process wrote to stderr (after it exited)."""
        if self.proc.stderr is None or self.proc.returncode is None:
            return ""
        return (await self.proc.stderr.read()).decode(errors="replace")[-2000:]

    async def stop(self) -> None:
        """Ask the process to exit; kill it (by pid) if it does not."""
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.call("exit"), 3)
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest.fixture
async def node_yjs() -> AsyncIterator[NodeYjs]:
    """A running ``compat/yjs_client.mjs`` (skipped without Node packages, failed in CI)."""
    require_node_deps()
    client = await NodeYjs.start()
    try:
        yield client
    finally:
        await client.stop()


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    """A relay in open dev mode on a free port."""
    process = RelayProcess(tmp_path / "relay-data").start()
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    """``relay_factory(config_text)``: a started relay with that TOML; killed at teardown."""
    started: list[RelayProcess] = []

    def start(config_text: str | None = None) -> RelayProcess:
        process = RelayProcess(tmp_path / f"relay-data-{len(started)}", config_text)
        started.append(process)
        return process.start()

    try:
        yield start
    finally:
        for process in started:
            process.kill()


OpenReplica = Callable[..., Replica[Board]]


@pytest.fixture
def open_replica(tmp_path: Path) -> Iterator[OpenReplica]:
    """``open_replica(name, namespace, url, token=None)``: a syncing replica of :class:`Board`
    in ``tmp_path/name``; every replica opened is closed at teardown."""
    opened: list[Replica[Board]] = []

    def make(name: str, namespace: str, url: str, token: str | None = None) -> Replica[Board]:
        replica = Replica.open(
            tmp_path / name,
            namespace,
            Board,
            relay=url,
            token=token,
            replica_id=name,
            sync_settings=FAST_SYNC,
        )
        opened.append(replica)
        return replica

    try:
        yield make
    finally:
        for replica in opened:
            replica.close()


def root_map(replica: Replica[Any], name: str) -> dict[str, Any]:
    """A root map of the replica's doc that no schema field owns, as plain Python."""
    with replica.doc.lock:
        value = replica.doc.root_map(name).to_py()
    return dict(value or {})


def slot_value(slot: str) -> Any:
    """The value of an LWW register writer slot (canonical JSON ``[wall_ms, counter, value]``)."""
    parsed = json.loads(slot)
    assert isinstance(parsed, list) and len(parsed) == 3, parsed
    return parsed[2]
