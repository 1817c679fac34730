"""Fixtures for the end-to-end tests: a relay process and agent processes, stopped by pid.

:class:`AgentProcess` runs ``_agent_process.py`` (one replica per OS process) and reads its
JSON lines on a thread, so a test can watch a write stream while it kills the relay.
:class:`Cluster` owns one relay and the agents of a test; :func:`check_exact` compares a
replica's view with the :class:`~tests.e2e._agent_process.Model` of every write the agents
reported as returned. Every wait has a deadline; every process is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.integration.relay_helpers import RelayProcess

from ._agent_process import NAMESPACE, Model

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().with_name("_agent_process.py")
START_TIMEOUT_S = 30.0
REPLY_TIMEOUT_S = 30.0
CONVERGE_TIMEOUT_S = 30.0


def child_env() -> dict[str, str]:
    """The environment of child processes: the repository importable, no stray tokens."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("CRDTSTATE_TOKEN", None)
    env.pop("CRDTSTATE_MIRRORS", None)
    return env


class AgentProcess:
    """One agent instance (``_agent_process.py``) as a child process.

    ``reported`` keeps every write the agent printed as returned, across restarts of the
    same data directory: those are the promises the checks hold it to.
    """

    def __init__(
        self,
        role: str,
        data_dir: Path,
        relay_url: str | None,
        log_dir: Path,
        *,
        durability: str = "sync",
        mirrors: Path | None = None,
    ) -> None:
        self.role = role
        self.data_dir = data_dir
        self.relay_url = relay_url
        self.durability = durability
        self.mirrors = mirrors
        self.log_path = log_dir / f"agent-{role}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.events: list[dict[str, Any]] = []
        self.reported: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._next_id = 0
        self._eof = False

    # -- life --------------------------------------------------------------------------------

    def start(self) -> AgentProcess:
        """Spawn (or respawn on the same data dir) and wait for its ``open`` line."""
        self.spawn()
        self.wait_open()
        return self

    def spawn(self) -> None:
        """Start the process without waiting (several agents then start in parallel)."""
        args = [sys.executable, str(WORKER), "--data", str(self.data_dir), "--role", self.role]
        args += ["--durability", self.durability]
        if self.relay_url is not None:
            args += ["--relay", self.relay_url]
        if self.mirrors is not None:
            args += ["--mirrors", str(self.mirrors)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=child_env()
            )
        with self._cond:
            self.events = []
            self._eof = False
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def wait_open(self) -> dict[str, Any]:
        """Wait for the ``open`` line: the replica is open (store recovered, sync started)."""
        return self.wait_event(lambda e: e["ev"] == "open", START_TIMEOUT_S, "open")

    @property
    def pid(self) -> int:
        """The pid of the current process."""
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL by pid (no goodbye: this is the crash), reap, drain its last lines."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        self._finish()

    def stop(self, timeout_s: float = 20.0) -> None:
        """Ask it to quit (close the replica cleanly); SIGKILL if it does not in time."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.write(b'{"cmd": "quit"}\n')
                proc.stdin.flush()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout_s)
        self.kill()

    def _finish(self) -> None:
        assert self.proc is not None
        if self._reader is not None:
            self._reader.join(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def _read(self, stream: IO[bytes]) -> None:
        """Reader thread: queue every complete JSON line (a line cut by SIGKILL is no report)."""
        for raw in iter(stream.readline, b""):
            if not raw.endswith(b"\n"):
                break
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            with self._cond:
                self.events.append(event)
                if event.get("ev") == "w":
                    self.reported.append(event)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    # -- talking -----------------------------------------------------------------------------

    def send(self, cmd: str, **fields: Any) -> int:
        """Write one command line; its id (answers carry it)."""
        assert self.proc is not None and self.proc.stdin is not None
        self._next_id += 1
        line = json.dumps({"cmd": cmd, "id": self._next_id, **fields}) + "\n"
        self.proc.stdin.write(line.encode())
        self.proc.stdin.flush()
        return self._next_id

    def wait_event(self, match: Any, timeout_s: float, what: str) -> dict[str, Any]:
        """The first event ``match`` accepts; fails the test at the deadline or at EOF."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for event in self.events:
                    if match(event):
                        return event
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    raise AssertionError(
                        f"{self.role}: no {what} within {timeout_s} s "
                        f"(eof={self._eof}); {self.describe()}"
                    )
                self._cond.wait(remaining)

    def reply(self, request_id: int, timeout_s: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
        """The answer to command ``request_id``."""
        return self.wait_event(
            lambda e: e.get("id") == request_id, timeout_s, f"reply {request_id}"
        )

    def request(
        self, cmd: str, timeout_s: float = REPLY_TIMEOUT_S, **fields: Any
    ) -> dict[str, Any]:
        """Send a command and wait for its answer."""
        return self.reply(self.send(cmd, **fields), timeout_s)

    def wait_writes(self, count: int, timeout_s: float = REPLY_TIMEOUT_S) -> None:
        """Wait until this incarnation reported ``count`` returned writes."""
        self.wait_event(
            lambda e: e.get("ev") == "w" and self._count_writes() >= count,
            timeout_s,
            f"{count} writes",
        )

    def _count_writes(self) -> int:
        return sum(1 for e in self.events if e.get("ev") == "w")

    def view(self) -> dict[str, Any]:
        """The replica's ``to_dict()``, digest, applied seq and outbox."""
        return self.request("view")

    def describe(self) -> str:
        """Recent lines and the log tail, for failure messages."""
        with contextlib.suppress(OSError):
            tail = self.log_path.read_text(errors="replace").splitlines()[-15:]
            return f"last events={self.events[-3:]}, log tail:\n" + "\n".join(tail)
        return f"last events={self.events[-3:]}"


class Cluster:
    """One relay and the agents of one test; :meth:`close` stops them all by pid."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.relay = RelayProcess(root / "relay-data")
        self.agents: dict[str, AgentProcess] = {}

    def start_relay(self) -> RelayProcess:
        """Start (or restart, same port and data dir) the relay."""
        return self.relay.start()

    def add_agent(self, role: str, relay_url: str | None = None, **kwargs: Any) -> AgentProcess:
        """Start an agent with its own data dir, reaching ``relay_url`` (default: the relay)."""
        return self.add_agents([role], {role: relay_url} if relay_url else None, **kwargs)[0]

    def add_agents(
        self, roles: list[str], urls: dict[str, str] | None = None, **kwargs: Any
    ) -> list[AgentProcess]:
        """Start several agents in parallel (``urls``: a relay URL per role, e.g. proxies;
        ``kwargs`` may give a per-role dict for ``mirrors``)."""
        started = []
        for role in roles:
            options = {k: v[role] if isinstance(v, dict) else v for k, v in kwargs.items()}
            url = (urls or {}).get(role, self.relay.url)
            agent = AgentProcess(role, self.root / f"data-{role}", url, self.root, **options)
            self.agents[role] = agent
            agent.spawn()
            started.append(agent)
        for agent in started:
            agent.wait_open()
        return started

    def stream(
        self, n: int, start: int = 0, pause_s: float = 0.0
    ) -> list[tuple[AgentProcess, int]]:
        """Start ``n`` writes on every agent at once (concurrent writers); the request ids."""
        return [
            (a, a.send("stream", start=start, n=n, pause_s=pause_s)) for a in self.agents.values()
        ]

    def converge(self, timeout_s: float = CONVERGE_TIMEOUT_S) -> dict[str, dict[str, Any]]:
        """Sync every agent until all digests are equal; their views (fails at the deadline)."""
        deadline = time.monotonic() + timeout_s
        views: dict[str, dict[str, Any]] = {}
        for _ in range(50):  # bounded rounds; each round is bounded by the deadline too
            left = max(1.0, deadline - time.monotonic())
            ids = [(a, a.send("sync", timeout_s=min(5.0, left))) for a in self.agents.values()]
            for agent, request_id in ids:
                agent.reply(request_id, left + 10)
            views = {role: a.view() for role, a in self.agents.items()}
            if len({v["digest"] for v in views.values()}) == 1 and all(
                v["outbox"] == 0 for v in views.values()
            ):
                return views
            if time.monotonic() > deadline:
                break
        summary = {
            r: (v["digest"][:12], v["applied_seq"], v["outbox"], v.get("sync"))
            for r, v in views.items()
        }
        raise AssertionError(f"no convergence within {timeout_s} s: {summary}")

    def model(self) -> Model:
        """The model of every write any agent reported as returned."""
        model = Model()
        for agent in self.agents.values():
            for event in agent.reported:
                model.apply(agent.role, event["i"], event.get("stamp"))
        return model

    def close(self) -> None:
        """Stop every agent (gracefully, then SIGKILL) and SIGKILL the relay."""
        for agent in self.agents.values():
            with contextlib.suppress(Exception):
                agent.stop(timeout_s=5)
        self.relay.kill()


def check_exact(state: dict[str, Any], model: Model) -> None:
    """``state`` (a ``to_dict()``) holds exactly what the model says, nothing lost or doubled.

    Counter: the sum of returned increments; OR-set: the returned adds minus observed
    removes; log: every returned append exactly once, each writer's in its order;
    register: the value of the write with the highest HLC stamp.
    """
    assert state["karma"] == model.karma, "karma is not the sum of the returned increments"
    assert sorted(state["followers"]) == sorted(model.followers)
    entries = [(e["by"], e["i"]) for e in state["memory"]]
    doubled = [entry for entry, times in Counter(entries).items() if times > 1]
    assert not doubled, f"log entries appended once, present twice: {doubled}"
    for role in {*model.appends, *(by for by, _ in entries)}:
        mine = [i for by, i in entries if by == role]
        assert mine == model.appends.get(role, []), f"log of {role}: lost, extra or reordered"
    expected_flag = False if model.register is None else model.register[1]
    assert state["killswitch"] is expected_flag, "the killswitch is not the last write's value"


def check_converged(views: dict[str, dict[str, Any]], model: Model) -> None:
    """Every view equal (same digest, same log order) and exactly the model."""
    states = [v["state"] for v in views.values()]
    assert all(s["memory"] == states[0]["memory"] for s in states), "log order differs"
    assert len({v["digest"] for v in views.values()}) == 1
    for state in states:
        check_exact(state, model)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A started relay (embedded SQLite under ``tmp_path``); add agents with ``add_agent``."""
    group = Cluster(tmp_path)
    try:
        group.start_relay()
        yield group
    finally:
        group.close()


__all__ = [
    "NAMESPACE",
    "AgentProcess",
    "Cluster",
    "check_converged",
    "check_exact",
    "child_env",
]
