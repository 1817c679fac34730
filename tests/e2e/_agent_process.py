"""One agent instance as a real OS process, driven by JSON lines, for the end-to-end tests.

Usage::

    python _agent_process.py --data DIR --namespace NS --role ROLE [--relay URL]
                             [--durability sync|batch] [--mirrors TOML] [--heartbeat-s S]

The process opens a :class:`~crdtstate.Replica` of :class:`Agent` (every CRDT kind the
field story needs), prints ``{"ev": "open", ...}`` and then obeys one JSON command per stdin
line. Every answer is one flushed JSON line on stdout carrying the command's ``id``:

- ``{"cmd": "stream", "start": I, "n": N, "pause_s": P}``: writes ``op_for(role, i)`` for
  ``i`` in ``I..I+N-1``; after each write *returned* (under ``sync`` durability: after
  fsync) it prints ``{"ev": "w", "i": i, ...}``; the test counts only those lines, so a
  SIGKILL can fall anywhere and the test still knows what was promised.
- ``{"cmd": "set", "value": bool}``: one killswitch write (the incident's steps).
- ``{"cmd": "sync", "timeout_s": T}``: :meth:`Replica.wait_synced` (``ok`` false on timeout).
- ``{"cmd": "view"}``: ``to_dict()``, digest, karma per replica, applied seq, outbox length.
- ``{"cmd": "quit"}``: close everything and exit 0 (so does end of stdin).

Separate processes (not threads) because the guarantees under test are about processes:
a store lock per process, fresh Yjs client ids per start, fsync before a write returns, and
SIGKILL at any instant. The process also exits by itself after ``--max-life-s`` so a test
that failed to stop it never leaves it running.

Tests import :func:`op_for` and :class:`Model` from here: the writer and the checker share
one schedule.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from crdtstate import Log, LWWRegister, ORSet, PNCounter, Replica, Schema, SyncTimeout
from crdtstate.mirrors import MirrorSet
from crdtstate.sync.session import SyncSettings

NAMESPACE = "agent-42"
MAX_LIFE_S = 180.0
PERIOD = 6


class Agent(Schema, version=1):
    """The state of the field story: a killswitch, followers, karma, a memory."""

    killswitch = LWWRegister(bool, default=False)
    followers = ORSet(str)
    karma = PNCounter()
    memory = Log(dict)


def op_for(role: str, i: int) -> tuple[str, Any]:
    """The ``i``-th write of ``role``: (kind, argument). Every CRDT kind, every period."""
    step = i % PERIOD
    cycle = i // PERIOD
    if step == 0:
        return "append", {"by": role, "i": i}
    if step == 1:
        return "inc", 1 + i % 4
    if step == 2:
        return "add", f"{role}-{i}"
    if step == 3:
        return "dec", 1
    if step == 4:
        # Every other cycle removes what step 2 added (an observed remove), else adds more.
        return ("remove", f"{role}-{i - 2}") if cycle % 2 == 0 else ("add", f"{role}-x{i}")
    return "set", cycle % 2 == 1


@dataclass
class Model:
    """What the state must be after a set of writes that returned, for exact checks.

    Attributes:
        karma: sum of increments minus decrements.
        followers: OR-set content (each role only removes elements it added itself).
        appends: per role, the ``i`` of each log append, in write order.
        register: (stamp, value) of the killswitch write with the highest HLC stamp.
    """

    karma: int = 0
    followers: set[str] = field(default_factory=set)
    appends: dict[str, list[int]] = field(default_factory=dict)
    register: tuple[tuple[int, int, str], bool] | None = None

    def apply(self, role: str, i: int, stamp: list[Any] | None = None) -> None:
        """Fold write ``i`` of ``role`` (its killswitch stamp when it was a ``set``)."""
        kind, arg = op_for(role, i)
        if kind == "append":
            self.appends.setdefault(role, []).append(i)
        elif kind == "inc":
            self.karma += arg
        elif kind == "dec":
            self.karma -= arg
        elif kind == "add":
            self.followers.add(arg)
        elif kind == "remove":
            self.followers.discard(arg)
        elif stamp is not None:
            self.set_register(stamp, bool(arg))
        # A killswitch write with no known stamp (one that survived a crash unreported) is
        # left out: the test makes sure a later write outranks it.

    def set_register(self, stamp: list[Any], value: bool) -> None:
        """Fold one killswitch write: the highest (wall, counter, replica) stamp wins."""
        key = (int(stamp[0]), int(stamp[1]), str(stamp[2]))
        if self.register is None or key > self.register[0]:
            self.register = (key, value)


def _write(replica: Replica[Agent], role: str, i: int) -> dict[str, Any]:
    """Perform write ``i`` of ``role``; what to report about it."""
    state = replica.state
    kind, arg = op_for(role, i)
    out: dict[str, Any] = {"ev": "w", "i": i, "kind": kind}
    if kind == "append":
        state.memory.append(arg)
    elif kind == "inc":
        state.karma.inc(arg)
    elif kind == "dec":
        state.karma.dec(arg)
    elif kind == "add":
        state.followers.add(arg)
    elif kind == "remove":
        state.followers.remove(arg)
    else:
        out["stamp"] = list(state.killswitch.set(arg))
    return out


class Worker:
    """The command loop around one open replica (and its mirrors, when configured)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.role: str = args.role
        settings = SyncSettings(
            heartbeat_interval_s=args.heartbeat_s,
            backoff_s_initial=0.05,
            backoff_s_max=0.5,
            connect_timeout_s=2.0,
            ws_heartbeat_s=2.0,
        )
        self.replica: Replica[Agent] = Replica.open(
            args.data,
            args.namespace,
            Agent,
            durability=args.durability,
            relay=args.relay,
            replica_id=self.role,
            sync_settings=settings,
        )
        self.mirrors: MirrorSet | None = None
        if args.mirrors:
            self.mirrors = MirrorSet.from_config(args.mirrors, interval_s=0.5, on_report=None)
            self.mirrors.attach(self.replica)

    def close(self) -> None:
        """Stop mirroring, then close the replica (flushes and releases the store lock)."""
        if self.mirrors is not None:
            self.mirrors.close()
        self.replica.close()

    def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        """Run one command; its answer (``id`` added by the caller)."""
        verb = command.get("cmd")
        if verb == "stream":
            return self._stream(int(command["start"]), int(command["n"]), command)
        if verb == "set":
            stamp = self.replica.state.killswitch.set(bool(command["value"]))
            return {"ev": "set", "stamp": list(stamp), "value": bool(command["value"])}
        if verb == "sync":
            try:
                self.replica.wait_synced(float(command.get("timeout_s", 10.0)))
            except SyncTimeout as exc:
                return {"ev": "sync", "ok": False, "error": str(exc)}
            return {"ev": "sync", "ok": True}
        if verb == "view":
            return self._view()
        return {"ev": "error", "error": f"unknown command {verb!r}"}

    def _stream(self, start: int, n: int, command: dict[str, Any]) -> dict[str, Any]:
        pause_s = float(command.get("pause_s", 0.0))
        for i in range(start, start + n):
            emit(_write(self.replica, self.role, i))
            if pause_s:
                time.sleep(pause_s)
        return {"ev": "streamed", "start": start, "n": n}

    def _view(self) -> dict[str, Any]:
        replica = self.replica
        return {
            "ev": "view",
            "state": replica.to_dict(),
            "digest": replica.digest(),
            "karma_by": replica.state.karma.by_replica(),
            "applied_seq": int(replica.applied_seq),
            "outbox": replica.outbox_len(),
            "sync": _sync_state(replica),
        }


def _sync_state(replica: Replica[Agent]) -> dict[str, Any] | None:
    """The sync client's state and last error, so a failed convergence names its cause."""
    client = replica.sync_client
    if client is None:
        return None
    return {
        "state": client.state.value,
        "head_seq": int(client.head_seq),
        "last_error": client.last_error,
        "reconnects": getattr(client, "reconnects", None),
    }


def emit(message: dict[str, Any]) -> None:
    """One JSON line on stdout, flushed at once (it is a promise the test relies on)."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _watchdog(max_life_s: float) -> None:
    """Exit hard after ``max_life_s``: a leaked process must not outlive its test for long."""
    time.sleep(max_life_s)
    os._exit(3)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--namespace", default=NAMESPACE)
    parser.add_argument("--role", required=True)
    parser.add_argument("--relay", default=None)
    parser.add_argument("--durability", default="sync", choices=["sync", "batch"])
    parser.add_argument("--mirrors", default=None, help="mirror config TOML to attach")
    parser.add_argument("--heartbeat-s", type=float, default=0.3)
    parser.add_argument("--max-life-s", type=float, default=MAX_LIFE_S)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """Open the replica, obey commands until ``quit`` or end of stdin."""
    args = parse_args(argv)
    threading.Thread(target=_watchdog, args=(args.max_life_s,), daemon=True).start()
    worker = Worker(args)
    replica = worker.replica
    emit(
        {
            "ev": "open",
            "pid": os.getpid(),
            "replica_id": replica.replica_id,
            "applied_seq": int(replica.applied_seq),
            "recovery_s": replica.recovery_seconds,
        }
    )
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            command = json.loads(line)
            if command.get("cmd") == "quit":
                break
            answer = worker.handle(command)
            answer["id"] = command.get("id")
            emit(answer)
    finally:
        worker.close()
    emit({"ev": "closed"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
