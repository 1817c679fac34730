"""``python -m crdtstate.demo``: the stale-killswitch story, told by real processes.

Background/000 is an incident in which three components read three copies of one flag and
disagreed for ten days. This demo runs the same three components (executor, supervisor,
dashboard) as three OS processes, each a :class:`~crdtstate.Replica` with its own data
directory, syncing through a relay subprocess (embedded SQLite in a temporary directory).
Each replica reaches the relay through its own fault proxy (Toxiproxy API, run in this
process), so the demo can cut the executor off the network like a real partition.

The story: all three write at once; the executor is cut off; it activates the killswitch
while cut off; the supervisor clears it later; each reads its own copy during the
partition; the network heals; all three converge to one state, the supervisor's later
clear included, and nothing written on either side is lost.

The parent drives each agent with one JSON command per stdin line and reads one JSON
status line per answer; the agents are this same module (``python -m crdtstate.demo agent
...``), so the demo needs nothing but the installed distribution. Every process it
starts is stopped by its pid, on success, failure, Ctrl-C or SIGTERM. Exit status: 0 when
the three replicas converged to the expected values, 1 otherwise.

The fault proxy comes from the ``chaos`` package of the same distribution; it is imported
only by the parent, so the library itself never depends on the chaos tooling.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, TextIO

from crdtstate.crdt import Log, LWWRegister, ORSet, PNCounter
from crdtstate.errors import SyncTimeout
from crdtstate.replica import Replica
from crdtstate.schema import Schema

if TYPE_CHECKING:
    from chaos.faultproxy import FaultProxyThread

NAMESPACE = "agent-42"
ROLES = ("executor", "supervisor", "dashboard")
WRITES_BEFORE = 12
"""Writes per agent before the partition (karma, followers, memory in turn)."""
WRITES_DURING = 6
"""Writes per agent while the executor is cut off."""
STEP_TIMEOUT_S = 20.0
"""Longest wait for one step (an agent's answer, a relay start, convergence)."""
AGENT_MAX_LIFE_S = 120.0
"""An agent exits by itself after this long, even if the parent vanished without a word."""
TOTAL_TIMEOUT_S = 55.0
"""The whole demo gives up after this long (it normally takes a few seconds)."""


class Agent(Schema, version=1):
    """The agent state of the field story."""

    killswitch = LWWRegister(bool, default=False)
    followers = ORSet(str)
    karma = PNCounter()
    memory = Log(dict)


class DemoError(Exception):
    """A step of the demo did not happen in time (the message says which)."""


# -- agent process ---------------------------------------------------------------------------


def karma_step(i: int) -> int:
    """The karma increment of work item ``i`` (the parent computes the expected total)."""
    return 1 + (i // 3) % 4


def _work(replica: Replica[Agent], role: str, start: int, count: int) -> None:
    """``count`` writes cycling through the counter, the set and the log."""
    state = replica.state
    for i in range(start, start + count):
        kind = i % 3
        if kind == 0:
            state.karma.inc(karma_step(i))
        elif kind == 1:
            state.followers.add(f"{role}-follower-{i}")
        else:
            state.memory.append({"by": role, "note": f"{role} event {i}"})
        time.sleep(0.002)  # interleave with the other agents instead of one burst each


def status_of(replica: Replica[Agent], role: str) -> dict[str, Any]:
    """The status line an agent prints: what its replica reads now."""
    state = replica.state
    return {
        "role": role,
        "killswitch": state.killswitch.value,
        "karma": state.karma.value,
        "followers": len(state.followers),
        "memory": len(state.memory),
        "digest": replica.digest(),
        "applied_seq": int(replica.applied_seq),
        "outbox": replica.outbox_len(),
    }


def _agent_command(replica: Replica[Agent], role: str, command: dict[str, Any]) -> dict[str, Any]:
    """Run one command from the parent; the status line to answer with."""
    verb = command.get("cmd")
    if verb == "work":
        _work(replica, role, int(command["start"]), int(command["count"]))
    elif verb == "killswitch":
        replica.state.killswitch.set(bool(command["value"]))
    elif verb == "sync":
        with contextlib.suppress(SyncTimeout):
            replica.wait_synced(float(command.get("timeout_s", 5.0)))
    return status_of(replica, role)


def _exit_later(seconds: float) -> None:
    time.sleep(seconds)
    os._exit(3)


def run_agent(role: str, data_dir: str, relay: str) -> int:
    """The agent process: open the replica, answer commands until ``quit`` or stdin closes."""
    from crdtstate.sync.session import SyncSettings

    threading.Thread(target=_exit_later, args=(AGENT_MAX_LIFE_S,), daemon=True).start()
    settings = SyncSettings(backoff_s_initial=0.05, backoff_s_max=0.3, heartbeat_interval_s=1.0)
    replica: Replica[Agent] = Replica.open(
        data_dir, NAMESPACE, Agent, durability="sync", relay=relay, sync_settings=settings
    )
    try:
        _emit(sys.stdout, {"ready": True, "pid": os.getpid(), **status_of(replica, role)})
        for line in sys.stdin:
            command = json.loads(line)
            if command.get("cmd") == "quit":
                break
            _emit(sys.stdout, _agent_command(replica, role, command))
    finally:
        replica.close()
    return 0


def _emit(out: TextIO, message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


# -- parent: child processes -----------------------------------------------------------------


class AgentChild:
    """One agent process: JSON commands in, JSON status lines out (read on a thread)."""

    def __init__(self, role: str, data_dir: Path, relay_url: str, log: IO[bytes]) -> None:
        self.role = role
        self.relay_url = relay_url
        args = [sys.executable, "-m", "crdtstate.demo", "agent", "--role", role]
        args += ["--data", str(data_dir), "--relay", relay_url]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
        )
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self._lines.put(json.loads(line))
        self._lines.put(None)

    def send(self, cmd: str, **fields: Any) -> None:
        """Write one command (the answer is read with :meth:`answer`)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        self.proc.stdin.flush()

    def answer(self, timeout_s: float = STEP_TIMEOUT_S) -> dict[str, Any]:
        """The next status line.

        Raises:
            DemoError: none within ``timeout_s``, or the process ended.
        """
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise DemoError(f"{self.role} did not answer within {timeout_s} s") from None
        if line is None:
            raise DemoError(f"{self.role} exited (status {self.proc.poll()})")
        return line

    def ask(self, cmd: str, **fields: Any) -> dict[str, Any]:
        """Send a command and return its status line."""
        self.send(cmd, **fields)
        return self.answer()

    def stop(self) -> None:
        """Ask it to quit (it closes its store cleanly); SIGKILL by pid if it does not."""
        _stop_process(self.proc, polite=self._quit)

    def _quit(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.write('{"cmd": "quit"}\n')
                self.proc.stdin.close()


def _stop_process(proc: subprocess.Popen[Any], polite: Callable[[], None] | None = None) -> None:
    """``polite()`` if given, then SIGTERM, then SIGKILL, each by pid with a grace period;
    reaps the process."""
    steps = [polite] if polite is not None else []
    steps.append(lambda: os.kill(proc.pid, signal.SIGTERM))
    for step in steps:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            step()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def start_relay(data_dir: Path, log: IO[bytes]) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``python -m relay serve`` on a free 127.0.0.1 port; the process and its port.

    Raises:
        DemoError: no listening line within :data:`STEP_TIMEOUT_S`.
    """
    args = [sys.executable, "-m", "relay", "serve", "--host", "127.0.0.1", "--port", "0"]
    proc = subprocess.Popen([*args, "--data", str(data_dir)], stdout=subprocess.PIPE, stderr=log)
    assert proc.stdout is not None
    deadline = time.monotonic() + STEP_TIMEOUT_S
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline and proc.poll() is None:
            if not selector.select(timeout=0.2):
                continue
            buffer += os.read(proc.stdout.fileno(), 4096)
            for line in buffer.decode(errors="replace").splitlines():
                if line.startswith("crdtstate-relay listening on "):
                    return proc, int(line.rsplit(":", 1)[1])
    _stop_process(proc)
    raise DemoError(f"the relay did not start (output {buffer[-300:]!r})")


# -- parent: fault proxies -------------------------------------------------------------------


class Proxies:
    """One fault proxy per agent, driven through the Toxiproxy HTTP API like any client."""

    def __init__(self, server: FaultProxyThread, relay_port: int) -> None:
        self._api = server.url.rstrip("/")
        self._upstream = f"127.0.0.1:{relay_port}"

    def _call(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self._api + path,
            data=json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json", "User-Agent": "crdtstate-demo"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def create(self, name: str) -> str:
        """A proxy ``name`` on a free port to the relay; the ``ws://`` URL agents use."""
        made = self._call(
            "POST", "/proxies", {"name": name, "listen": "127.0.0.1:0", "upstream": self._upstream}
        )
        return f"ws://{made['listen']}"

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Disable (drop every connection, refuse new ones: a partition) or re-enable."""
        self._call("POST", f"/proxies/{name}", {"enabled": enabled})


# -- parent: the story -----------------------------------------------------------------------


@dataclass
class Expected:
    """What every replica must read once converged."""

    karma: int
    followers: int
    memory: int
    killswitch: bool = False


def expected_after(counts: dict[str, list[tuple[int, int]]]) -> Expected:
    """The converged values, from each agent's work batches ``(start, count)``."""
    karma = followers = memory = 0
    for batches in counts.values():
        for start, count in batches:
            for i in range(start, start + count):
                karma += karma_step(i) if i % 3 == 0 else 0
                followers += i % 3 == 1
                memory += i % 3 == 2
    return Expected(karma, followers, memory)


def _flag(value: object) -> str:
    return "ACTIVE" if value else "INACTIVE"


def format_table(rows: list[dict[str, Any]], indent: str = "    ") -> str:
    """The compact per-replica table."""
    head = (
        f"{'role':<11}{'killswitch':<12}{'karma':>6}{'followers':>11}{'memory':>8}"
        f"  {'digest':<14}{'applied seq':>11}"
    )
    lines = [indent + head]
    for row in rows:
        lines.append(
            indent
            + f"{row['role']:<11}{_flag(row['killswitch']):<12}{row['karma']:>6}"
            + f"{row['followers']:>11}{row['memory']:>8}  {row['digest'][:12]:<14}"
            + f"{row['applied_seq']:>11}"
        )
    return "\n".join(lines)


def converged(rows: list[dict[str, Any]], expected: Expected) -> bool:
    """One digest, nothing unacknowledged, and exactly the expected values."""
    return (
        len({row["digest"] for row in rows}) == 1
        and all(row["outbox"] == 0 for row in rows)
        and all(
            (row["killswitch"], row["karma"], row["followers"], row["memory"])
            == (expected.killswitch, expected.karma, expected.followers, expected.memory)
            for row in rows
        )
    )


class Story:
    """The demo's narrative over started agents and proxies (see the module docstring)."""

    def __init__(self, agents: dict[str, AgentChild], proxies: Proxies, out: TextIO) -> None:
        self.agents = agents
        self.proxies = proxies
        self.out = out
        self.batches: dict[str, list[tuple[int, int]]] = {role: [] for role in agents}
        self._next = dict.fromkeys(agents, 0)

    def say(self, text: str = "") -> None:
        """One line of narrative."""
        print(text, file=self.out, flush=True)

    def everyone(self, cmd: str) -> list[dict[str, Any]]:
        """Send a command to every agent at once (they run concurrently); their answers."""
        for role in ROLES:
            self.agents[role].send(cmd)
        return [self.agents[role].answer() for role in ROLES]

    def work(self, count: int) -> None:
        """``count`` writes on every agent, concurrently."""
        for role in ROLES:
            start = self._next[role]
            self.agents[role].send("work", start=start, count=count)
            self.batches[role].append((start, count))
            self._next[role] = start + count
        for role in ROLES:
            self.agents[role].answer()

    def wait_for(
        self, check: Callable[[list[dict[str, Any]]], bool], timeout_s: float, cmd: str = "status"
    ) -> tuple[list[dict[str, Any]], float]:
        """Poll every agent until ``check(rows)``; the rows and how long it took.

        Raises:
            DemoError: not within ``timeout_s`` (the last rows are in the message).
        """
        started = time.monotonic()
        rows = self.everyone(cmd)
        while not check(rows):
            if time.monotonic() - started > timeout_s:
                raise DemoError(f"no agreement within {timeout_s} s:\n{format_table(rows)}")
            time.sleep(0.05)
            rows = self.everyone(cmd)
        return rows, time.monotonic() - started

    def run(self) -> None:
        """Tell the story, checking each step.

        Raises:
            DemoError: a step did not happen in time (e.g. no convergence after the heal).
        """
        self.say(f"[1] all three write at once: karma, followers, memory ({WRITES_BEFORE} each)")
        self.work(WRITES_BEFORE)
        before = expected_after(self.batches)
        rows, _ = self.wait_for(lambda r: converged(r, before), STEP_TIMEOUT_S, "sync")
        self.say(format_table(rows))

        self.say("[2] partition: the executor's link to the relay is cut (fault proxy disabled)")
        self.proxies.set_enabled("executor", False)
        self.say("[3] the executor activates the killswitch while cut off (durable locally)")
        self.agents["executor"].ask("killswitch", value=True)
        time.sleep(0.01)  # a later wall clock: the clear below carries a higher HLC stamp
        self.say("[4] the supervisor clears the killswitch (a later write, higher HLC)")
        self.agents["supervisor"].ask("killswitch", value=False)
        self.say(f"    and everyone keeps writing ({WRITES_DURING} each, the executor offline)")
        self.work(WRITES_DURING)
        rows, _ = self.wait_for(_others_agree, STEP_TIMEOUT_S)
        self.say("    during the partition each instance reads its own copy:")
        self.say(format_table(rows))
        self.say("    the executor still reads ACTIVE: it cannot know about the clear yet")

        expected = expected_after(self.batches)
        self.say("[5] heal: the executor's link is restored; each side sends what it wrote")
        self.proxies.set_enabled("executor", True)
        self.say(format_table(self.everyone("status")))
        rows, took = self.wait_for(lambda r: converged(r, expected), STEP_TIMEOUT_S)
        self.say("    converged:")
        self.say(format_table(rows))
        self.say(
            f"converged in {took:.2f} s: the killswitch reads {_flag(expected.killswitch)} "
            f"everywhere (the supervisor's later clear wins), karma {expected.karma}, "
            f"{expected.followers} followers, {expected.memory} memory entries; nothing lost"
        )


def _others_agree(rows: list[dict[str, Any]]) -> bool:
    """Supervisor and dashboard hold one state (the executor cannot, it is cut off)."""
    others = [row for row in rows if row["role"] != "executor"]
    return len({row["digest"] for row in others}) == 1 and all(r["outbox"] == 0 for r in others)


@contextlib.contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so the cleanup below runs (as Ctrl-C does)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _alarm(seconds: float) -> contextlib.AbstractContextManager[None]:
    """Raise :class:`DemoError` in the main thread after ``seconds`` (the demo's bound)."""

    @contextlib.contextmanager
    def manager() -> Iterator[None]:
        def handler(signum: int, frame: FrameType | None) -> None:
            raise DemoError(f"the demo did not finish within {seconds:.0f} s")

        previous = signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    return manager()


def run_demo(out: TextIO = sys.stdout) -> int:
    """Start everything, tell the story, stop everything; the exit status."""
    with (
        _terminate_on_sigterm(),
        tempfile.TemporaryDirectory(prefix="crdtstate-demo-") as tmp,
        (Path(tmp) / "processes.log").open("ab") as log,
    ):
        root = Path(tmp)
        processes = contextlib.ExitStack()
        try:
            # The alarm ends before the processes are stopped: cleanup is never cut short.
            with _alarm(TOTAL_TIMEOUT_S):
                agents, proxies = _start_all(processes, root, log, out)
                Story(agents, proxies, out).run()
            return 0
        except DemoError as exc:
            print(f"demo failed: {exc}", file=out)
            _print_log_tail(root / "processes.log", out)
            return 1
        finally:
            with _signals_blocked():  # a second Ctrl-C must not leave a process behind
                processes.close()


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends (then they are delivered)."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _start_all(
    stack: contextlib.ExitStack, root: Path, log: IO[bytes], out: TextIO
) -> tuple[dict[str, AgentChild], Proxies]:
    """Relay, fault proxy server, one proxy and one agent per role; each stop registered
    on ``stack`` the moment it started."""
    from chaos.faultproxy import FaultProxyThread

    print("crdtstate demo: one agent, three instances, one truth", file=out, flush=True)
    relay, port = start_relay(root / "relay", log)
    stack.callback(_stop_process, relay)
    print(f"    relay       pid {relay.pid:<7} 127.0.0.1:{port} (embedded SQLite)", file=out)
    server = FaultProxyThread()
    server.start()
    stack.callback(server.stop)
    proxies = Proxies(server, port)
    agents: dict[str, AgentChild] = {}
    for role in ROLES:
        agent = AgentChild(role, root / role, proxies.create(role), log)
        stack.callback(agent.stop)
        agents[role] = agent
    for role, agent in agents.items():
        agent.answer()  # its "ready" line: the replica is open
        proxy = agent.relay_url.removeprefix("ws://")
        print(
            f"    {role:<11} pid {agent.proc.pid:<7} via fault proxy {proxy}", file=out, flush=True
        )
    print(file=out, flush=True)
    return agents, proxies


def _print_log_tail(path: Path, out: TextIO, lines: int = 15) -> None:
    with contextlib.suppress(OSError):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        if tail:
            print("last lines of the processes' log:", file=out)
            print("\n".join("    " + line for line in tail), file=out)


def main(argv: list[str] | None = None) -> int:
    """``python -m crdtstate.demo`` (the demo) or ``... agent`` (one agent process)."""
    parser = argparse.ArgumentParser(prog="python -m crdtstate.demo", description=__doc__)
    sub = parser.add_subparsers(dest="mode")
    agent = sub.add_parser("agent", help="run one agent process (the demo starts three)")
    agent.add_argument("--role", required=True)
    agent.add_argument("--data", required=True)
    agent.add_argument("--relay", required=True)
    args = parser.parse_args(argv)
    if args.mode == "agent":
        return run_agent(args.role, args.data, args.relay)
    try:
        return run_demo()
    except KeyboardInterrupt:
        print("\ninterrupted; every process the demo started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
