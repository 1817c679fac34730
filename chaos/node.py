"""A replica worker process of the chaos cluster: ``python -m chaos.node ...``.

Why a process of its own: the faults under test (kill -9 mid-write, SIGSTOP, a store reopened
after a crash) only mean something for a real OS process with its own store lock, sync
thread and sockets.

The worker opens one replica (``durability`` sync by default) connected to the relay through
the URL it is given (its own fault-proxy port), optionally runs the :class:`Workload` in a
writer thread, and appends every event to its history file (JSON lines, one ``os.write`` per
line on an ``O_APPEND`` descriptor, so a kill -9 never tears a line): ``invoke`` before each
write, ``ok`` when it returned (durable under ``sync``), ``acked`` with the relay's sequence
number when the relay acknowledged it (from the replica's ack callback, which also fires for
writes a previous incarnation left in the outbox), and ``note`` lifecycle lines.

Control channel: one JSON object per line on stdin, one JSON answer per line on stdout (the
real stdout is reserved for it; anything else printed goes to stderr). Commands:

``ping``, ``status`` (digest, state vector, applied seq, outbox, sync state), ``pause`` /
``resume`` (the writer; ``pause`` returns once no write is in flight), ``read`` (a full read,
also recorded in the history), ``skew`` (``ms``: offset of the HLC's wall clock), ``call``
(``field``, ``method``, ``args``: one write or read on any schema, for the pytest plugin),
``stop`` (close the replica cleanly and exit 0).

End of stdin (the harness died) stops the worker, and so does ``--max-seconds``: a worker
nobody controls never runs on.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, ClassVar

from chaos.history import Event
from chaos.workload import ChaosState, Workload, final_read
from crdtstate import HybridClock, OpId, Replica, Schema, Seq
from crdtstate.errors import CrdtStateError
from crdtstate.sync.session import SyncSettings

READY_EVENT = "ready"
MAX_OPS = 200_000


class HistoryWriter:
    """Appends events to a JSON-lines file, one ``os.write`` per line (kill -9 safe).

    Thread-safe: the writer thread, the sync thread (acks) and the control loop all record.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        data = (event.to_json() + "\n").encode()
        with self._lock:
            os.write(self._fd, data)

    def close(self) -> None:
        """Close the file (further events are dropped)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class RecordingReplica(Replica[Any]):
    """A replica that records each relay acknowledgement in the history.

    The sink is a class attribute because acks of a previous incarnation's outbox may
    arrive while :meth:`Replica.open` is still returning; one replica per process.
    """

    ack_sink: ClassVar[HistoryWriter | None] = None
    process_name: ClassVar[str] = ""
    started: ClassVar[float] = 0.0

    def on_ack(self, op_id: OpId, seq: Seq) -> None:
        """Record ``acked`` (by store op id, with the relay incarnation that numbered it),
        then let the replica drop it from the outbox."""
        sink = type(self).ack_sink
        if sink is not None:
            t = time.time() - type(self).started
            event = Event("acked", type(self).process_name, seq=int(seq), local_op=int(op_id), t=t)
            event.value = self.relay_incarnation or None
            sink(event)
        super().on_ack(op_id, seq)


def load_schema(spec: str) -> type[Schema]:
    """``package.module:Class`` -> the schema class."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"schema must be given as module:Class, got {spec!r}")
    schema = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(schema, type) and issubclass(schema, Schema)):
        raise ValueError(f"{spec} is not a crdtstate Schema")
    return schema


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted((_jsonable(v) for v in value), key=repr)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


class Node:
    """The worker: a replica, an optional writer thread and the command handlers."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.name: str = args.name
        self.started = float(args.t0) if args.t0 else time.time()
        self.history = HistoryWriter(Path(args.history))
        self.schema = load_schema(args.schema)
        self.is_chaos_schema = self.schema is ChaosState
        RecordingReplica.ack_sink = self.history
        RecordingReplica.process_name = self.name
        RecordingReplica.started = self.started
        settings = SyncSettings(
            heartbeat_interval_s=args.heartbeat_s,
            ws_heartbeat_s=args.ws_heartbeat_s,
            backoff_s_max=args.backoff_max_s,
            connect_timeout_s=args.connect_timeout_s,
        )
        self.clock = HybridClock(offset_ms=int(args.clock_offset_ms))
        self.replica: Replica[Any] = RecordingReplica.open(
            args.data,
            args.namespace,
            self.schema,
            durability=args.durability,
            relay=args.relay,
            clock=self.clock,
            sync_settings=settings,
        )
        self.history(
            Event(
                "note",
                self.name,
                value={
                    "event": "open",
                    "incarnation": args.incarnation,
                    "pid": os.getpid(),
                    "replica_id": str(self.replica.replica_id),
                    "recovery_s": round(self.replica.recovery_seconds, 6),
                    "outbox": self.replica.outbox_len(),
                },
                t=self.now(),
            )
        )
        self.paused = threading.Event()
        if args.paused:
            self.paused.set()
        self.stopping = threading.Event()
        self.step_lock = threading.Lock()
        self.ops = 0
        self.write_error: str | None = None
        self.workload: Workload | None = None
        self.writer: threading.Thread | None = None
        if args.workload:
            if not self.is_chaos_schema:
                raise ValueError("--workload needs the ChaosState schema")
            rng = random.Random(f"{args.seed}:{self.name}:{args.incarnation}")
            self.workload = Workload(
                self.replica,
                self.name,
                rng,
                self.history,
                self.now,
                op_prefix=f"{self.name}.{args.incarnation}",
            )
            self.writer = threading.Thread(target=self._write_loop, args=(rng,), daemon=True)

    def now(self) -> float:
        """Seconds since the start of the run (shared by every node of a cluster)."""
        return round(time.time() - self.started, 6)

    # -- writer ----------------------------------------------------------------------------

    def _write_loop(self, rng: random.Random) -> None:
        deadline = time.monotonic() + float(self.args.max_seconds)
        rate = max(0.1, float(self.args.rate))
        workload = self.workload
        assert workload is not None
        while not self.stopping.is_set() and time.monotonic() < deadline and self.ops < MAX_OPS:
            if self.paused.is_set():
                self.stopping.wait(0.05)
                continue
            with self.step_lock:
                if self.paused.is_set() or self.stopping.is_set():
                    continue
                try:
                    workload.step()
                except CrdtStateError as exc:  # closed replica: the process is ending
                    self.write_error = f"{type(exc).__name__}: {exc}"
                    return
                self.ops += 1
            self.stopping.wait(min(1.0, rng.expovariate(rate)))

    # -- commands --------------------------------------------------------------------------

    def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        """Run one control command; returns the answer (``ok`` false with ``error``)."""
        name = str(command.get("cmd", ""))
        handler = getattr(self, f"cmd_{name}", None)
        if handler is None:
            return {"ok": False, "error": f"unknown command {name!r}"}
        try:
            result: dict[str, Any] = handler(command)
        except Exception as exc:  # answered, never fatal: the harness decides
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"ok": True, **result}

    def cmd_ping(self, _command: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid()}

    def cmd_status(self, _command: dict[str, Any]) -> dict[str, Any]:
        beat = self.replica.heartbeat()
        client = self.replica.sync_client
        return {
            "name": self.name,
            "pid": os.getpid(),
            "incarnation": self.args.incarnation,
            "digest": beat["digest"],
            "state_vector": beat["state_vector"],
            "applied_seq": beat["applied_seq"],
            "outbox": beat["outbox"],
            "ops": self.ops,
            "paused": self.paused.is_set(),
            "sync_state": None if client is None else client.state.value,
            "head_seq": None if client is None else int(client.head_seq),
            "reconnects": None if client is None else client.reconnects,
            # the log applied_seq counts in: the session's (set at the relay's welcome,
            # before the store's copy, which waits for a repair to be acknowledged)
            "relay_incarnation": self.replica.relay_incarnation
            if client is None
            else client.session.incarnation,
            "clock_offset_ms": self.clock.offset_ms,
            "write_error": self.write_error,
            "t": self.now(),
        }

    def cmd_pause(self, _command: dict[str, Any]) -> dict[str, Any]:
        self.paused.set()
        with self.step_lock:  # wait for a write in flight
            pass
        return {"ops": self.ops}

    def cmd_resume(self, _command: dict[str, Any]) -> dict[str, Any]:
        self.paused.clear()
        return {"ops": self.ops}

    def cmd_skew(self, command: dict[str, Any]) -> dict[str, Any]:
        self.clock.offset_ms = int(command.get("ms", 0))
        return {"clock_offset_ms": self.clock.offset_ms}

    def cmd_read(self, command: dict[str, Any]) -> dict[str, Any]:
        phase = str(command.get("phase", "final"))
        if self.is_chaos_schema:
            event = final_read(self.replica, self.name, t=self.now())
        else:
            event = Event(
                "read",
                self.name,
                read={
                    "values": self.replica.to_dict(),
                    "digest": self.replica.digest(),
                    "state_vector": self.replica.state_vector().hex(),
                    "applied_seq": int(self.replica.applied_seq),
                },
                t=self.now(),
            )
        assert event.read is not None
        event.read["phase"] = phase
        event.read["incarnation"] = self.args.incarnation
        event.read["outbox"] = self.replica.outbox_len()
        if command.get("record", True):
            self.history(event)
        return {"read": event.read}

    def cmd_call(self, command: dict[str, Any]) -> dict[str, Any]:
        field = str(command["field"])
        method = str(command["method"])
        if method.startswith("_"):
            raise ValueError(f"method {method!r} is private")
        args = list(command.get("args", []))
        target = getattr(self.replica.state, field)
        attr = getattr(target, method)
        op = f"{self.name}.{self.args.incarnation}-call{self.ops}"
        self.ops += 1
        before = self.replica.last_op_id
        self.history(Event("invoke", self.name, op=op, field=field, f=method, value=args))
        result = attr(*args) if callable(attr) else attr
        after = self.replica.last_op_id
        local_op = int(after) if after != before else None
        self.history(Event("ok", self.name, op=op, local_op=local_op, t=self.now()))
        return {"result": _jsonable(result)}

    def cmd_stop(self, _command: dict[str, Any]) -> dict[str, Any]:
        self.stopping.set()
        return {"ops": self.ops}

    # -- lifecycle -------------------------------------------------------------------------

    def run(self, commands: IO[str], answers: IO[str]) -> int:
        """Serve commands until ``stop``, end of input or ``--max-seconds``."""
        if self.writer is not None:
            self.writer.start()
        answers.write(
            json.dumps(
                {
                    "event": READY_EVENT,
                    "pid": os.getpid(),
                    "replica_id": str(self.replica.replica_id),
                    "recovery_s": self.replica.recovery_seconds,
                }
            )
            + "\n"
        )
        answers.flush()
        watchdog = threading.Timer(float(self.args.max_seconds), self._expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            for line in commands:
                if not line.strip():
                    continue
                try:
                    command = json.loads(line)
                except ValueError:
                    answer: dict[str, Any] = {"ok": False, "error": "not JSON"}
                else:
                    answer = self.handle(command if isinstance(command, dict) else {})
                answers.write(json.dumps(answer) + "\n")
                answers.flush()
                if self.stopping.is_set():
                    break
        finally:
            watchdog.cancel()
            self.shutdown()
        return 0

    def _expire(self) -> None:
        logging.getLogger("chaos.node").warning("max run time reached: exiting")
        self.shutdown()
        os._exit(3)

    def shutdown(self) -> None:
        """Stop the writer, close the replica (flush, release the lock), close the history."""
        self.stopping.set()
        if self.writer is not None and self.writer.is_alive():
            self.writer.join(timeout=10)
        self.replica.close()
        RecordingReplica.ack_sink = None
        self.history(Event("note", self.name, value={"event": "closed"}, t=self.now()))
        self.history.close()


def build_parser() -> argparse.ArgumentParser:
    """The worker's command line (the harness builds it; people rarely do)."""
    p = argparse.ArgumentParser(prog="python -m chaos.node", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="replica data directory")
    p.add_argument("--namespace", default="chaos")
    p.add_argument("--relay", required=True, help="ws://127.0.0.1:PORT (its proxy)")
    p.add_argument("--name", required=True, help="process name in the history")
    p.add_argument("--history", type=Path, required=True, help="JSON-lines history file")
    p.add_argument("--schema", default="chaos.workload:ChaosState", help="module:Class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--incarnation", type=int, default=1)
    p.add_argument("--t0", type=float, default=0.0, help="run start (epoch seconds)")
    p.add_argument("--workload", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--paused", action="store_true", help="start with the writer paused")
    p.add_argument("--rate", type=float, default=20.0, help="writes per second (mean)")
    p.add_argument("--durability", default="sync", choices=["sync", "batch"])
    p.add_argument("--clock-offset-ms", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=900.0)
    p.add_argument("--heartbeat-s", type=float, default=1.0)
    p.add_argument("--ws-heartbeat-s", type=float, default=2.0)
    p.add_argument("--backoff-max-s", type=float, default=2.0)
    p.add_argument("--connect-timeout-s", type=float, default=3.0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: the real stdout becomes the answer channel; prints go to stderr."""
    args = build_parser().parse_args(argv)
    answers = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format=f"%(asctime)s {args.name} %(levelname)s %(name)s: %(message)s",
    )
    node = Node(args)
    return node.run(sys.stdin, answers)


if __name__ == "__main__":
    raise SystemExit(main())
