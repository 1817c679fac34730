"""A replica in its own process, for the crash and lock tests.

Usage::

    python _replica_writer.py write DATA_DIR sync|batch RUN [FLUSH_EVERY]
    python _replica_writer.py hold DATA_DIR NAMESPACE
    python _replica_writer.py try-open DATA_DIR NAMESPACE

``write`` opens the replica and runs the deterministic schedule of :func:`op_for` (every
CRDT kind), printing one flushed line per write once it has returned::

    OPEN <yjs client id> <pid>
    W <i> <what the write did>        (hits= and karma= give the counters' totals)
    F <i>                             (batch: flush() returned; writes 0..i are durable)

It stops by itself after ``MAX_OPS`` writes or ``MAX_RUN_S`` seconds, so a process the
test failed to kill never runs on. ``hold`` keeps the replica open until stdin closes;
``try-open`` prints ``OPENED`` or ``LOCKED <message>``.

The tests import this module for :class:`CrashState`, :func:`op_for` and
:func:`apply_to_model` (the writer and the checker share one schedule) and for
:class:`Child`, which runs this script as a process and reads its lines with deadlines.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from crdtstate import (
    GCounter,
    Log,
    LWWMap,
    LWWRegister,
    ORSet,
    PNCounter,
    Replica,
    Schema,
    StoreLockedError,
)

REPO = Path(__file__).resolve().parent.parent.parent
NAMESPACE = "crash"
MAX_OPS = 20_000
MAX_RUN_S = 30.0
PERIOD = 8


class CrashState(Schema):
    reg = LWWRegister(int, default=-1)
    hits = GCounter()
    karma = PNCounter()
    seen = ORSet(str)
    config = LWWMap(int)
    memory = Log(str)


def op_for(run: int, i: int) -> tuple[str, Any]:
    """The ``i``-th write of run ``run``: (kind, argument)."""
    step = i % PERIOD
    if step == 0:
        return "append", f"{run}:{i}"
    if step == 1:
        return "inc", 1
    if step == 2:
        return "karma+", 3
    if step == 3:
        return "karma-", 1
    if step == 4:
        return "add", f"{run}:{i}"
    if step == 5:
        return "remove", f"{run}:{i - 1}"  # added by the previous write
    if step == 6:
        return "set", run * 1_000_000 + i
    return "map", (f"k{i % 5}", run * 1_000_000 + i)


def apply_to_model(state: dict[str, Any], run: int, i: int) -> None:
    """What write ``i`` of run ``run`` does to a ``to_dict()``-shaped state, in place."""
    kind, arg = op_for(run, i)
    if kind == "append":
        state["memory"].append(arg)
    elif kind == "inc":
        state["hits"] += arg
    elif kind == "karma+":
        state["karma"] += arg
    elif kind == "karma-":
        state["karma"] -= arg
    elif kind == "add":
        state["seen"] = sorted({*state["seen"], arg})
    elif kind == "remove":
        state["seen"] = [e for e in state["seen"] if e != arg]
    elif kind == "set":
        state["reg"] = arg
    else:
        key, value = arg
        state["config"] = dict(sorted({**state["config"], key: value}.items()))


def _write(r: Replica[CrashState], run: int, i: int) -> str:
    s = r.state
    kind, arg = op_for(run, i)
    if kind == "append":
        s.memory.append(arg)
        return f"append {arg}"
    if kind == "inc":
        s.hits.inc(arg)
        return f"hits={s.hits.value}"
    if kind == "karma+":
        s.karma.inc(arg)
        return f"karma={s.karma.value}"
    if kind == "karma-":
        s.karma.dec(arg)
        return f"karma={s.karma.value}"
    if kind == "add":
        s.seen.add(arg)
        return f"add {arg}"
    if kind == "remove":
        s.seen.remove(arg)
        return f"remove {arg}"
    if kind == "set":
        s.reg.set(arg)
        return f"reg={arg}"
    key, value = arg
    s.config.set(key, value)
    return f"map {key}={value}"


def write(data_dir: str, durability: str, run: int, flush_every: int) -> int:
    r = Replica.open(data_dir, NAMESPACE, CrashState, durability=durability)
    print(f"OPEN {r.doc.client_id} {os.getpid()}", flush=True)
    deadline = time.monotonic() + MAX_RUN_S
    for i in range(MAX_OPS):
        if time.monotonic() > deadline:
            break
        done = _write(r, run, i)
        print(f"W {i} {done}", flush=True)
        if durability == "batch" and (i + 1) % flush_every == 0:
            r.flush()
            print(f"F {i}", flush=True)
    r.close()
    print("DONE", flush=True)
    return 0


def hold(data_dir: str, namespace: str) -> int:
    r = Replica.open(data_dir, namespace, CrashState)
    print(f"HELD {os.getpid()}", flush=True)
    sys.stdin.read()  # until the test closes our stdin (or dies)
    r.close()
    print("RELEASED", flush=True)
    return 0


def try_open(data_dir: str, namespace: str) -> int:
    try:
        r = Replica.open(data_dir, namespace, CrashState)
    except StoreLockedError as exc:
        print(f"LOCKED {exc}", flush=True)
        return 3
    r.close()
    print("OPENED", flush=True)
    return 0


class Child:
    """One writer process: spawned, read line by line with deadlines, killed by pid."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ)
        # The repository first: this script's directory, not the repo, leads sys.path.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            cwd=REPO,
            env=env,
            bufsize=0,
        )
        self._buffer = b""
        self.lines: list[str] = []

    def read_line(self, deadline: float) -> str | None:
        """The next line, or None at end of output; fails the test at the deadline."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no output from the writer in time; {self.describe()}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return None  # a partial last line (killed mid-print) is no report
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\n", 1)
        line = raw.decode()
        self.lines.append(line)
        return line

    def read_until(self, prefix: str, count: int, deadline: float) -> None:
        """Read until ``count`` lines starting with ``prefix`` were seen (or output ends)."""
        while sum(line.startswith(prefix) for line in self.lines) < count:
            if self.read_line(deadline) is None:
                return

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def drain(self, deadline: float) -> None:
        while self.read_line(deadline) is not None:
            pass

    def close(self) -> None:
        """Kill if still running and release the pipes (teardown; never raises on a dead child)."""
        try:
            self.kill()
        finally:
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()
            self.stderr.close()

    def describe(self) -> str:
        self.stderr.seek(0)
        err = self.stderr.read().decode(errors="replace")[-2000:]
        return f"lines={self.lines[-5:]} exit={self.proc.poll()} stderr={err!r}"


def main(argv: list[str]) -> int:
    verb, data_dir, *rest = argv
    if verb == "write":
        durability, run = rest[0], int(rest[1])
        flush_every = int(rest[2]) if len(rest) > 2 else 5
        return write(data_dir, durability, run, flush_every)
    if verb == "hold":
        return hold(data_dir, rest[0])
    if verb == "try-open":
        return try_open(data_dir, rest[0])
    print(f"unknown verb {verb!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
