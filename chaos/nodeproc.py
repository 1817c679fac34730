"""The harness side of one replica worker (:mod:`chaos.node`): start, command, kill, restart.

Why separate from the cluster: a worker is the unit every fault acts on (kill -9, SIGSTOP,
clock skew), and the pytest plugin drives single workers too. Commands are JSON lines over
the worker's stdin/stdout with a deadline on every answer, so a paused or dead worker makes
the caller fail fast instead of hanging.

Imports :mod:`chaos.procs` only.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.procs import kill9, spawn, terminate

READY_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 10.0


class NodeError(RuntimeError):
    """A worker did not answer, answered with an error, or is not running."""


@dataclass(slots=True)
class NodeOptions:
    """How a worker runs (see ``python -m chaos.node --help``)."""

    schema: str = "chaos.workload:ChaosState"
    namespace: str = "chaos"
    workload: bool = True
    rate: float = 20.0
    durability: str = "sync"
    seed: int = 0
    heartbeat_s: float = 1.0
    ws_heartbeat_s: float = 2.0
    backoff_max_s: float = 2.0
    connect_timeout_s: float = 3.0
    max_seconds: float = 900.0
    extra_env: dict[str, str] = field(default_factory=dict)


class NodeProcess:
    """One replica worker, restartable on the same data directory and history file.

    Args:
        name: the process name in histories (``r1``).
        workdir: where its data, history and log live.
        relay_url: the URL it syncs through (its proxy's port).
        options: worker settings.
        t0: the run's start (epoch seconds), shared so every history uses one time axis.
    """

    def __init__(
        self, name: str, workdir: Path, relay_url: str, options: NodeOptions, t0: float
    ) -> None:
        self.name = name
        self.data_dir = workdir / "data" / name
        self.history_path = workdir / "histories" / f"{name}.jsonl"
        self.log_path = workdir / "logs" / f"{name}.log"
        self.relay_url = relay_url
        self.options = options
        self.t0 = t0
        self.incarnation = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.stopped_by_signal = False
        self.clock_offset_ms = 0
        self.recovery_s: list[float] = []
        self._buffer = b""
        # one command at a time (a monitor thread polls while the nemesis acts)
        self._lock = threading.RLock()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """Pid of the running incarnation."""
        if self.process is None:
            raise NodeError(f"{self.name} is not running")
        return self.process.pid

    @property
    def alive(self) -> bool:
        """Whether an incarnation is running."""
        return self.process is not None and self.process.poll() is None

    def command_line(self, paused: bool) -> list[str]:
        """The worker's argv for the next incarnation."""
        o = self.options
        args = [sys.executable, "-m", "chaos.node", "--data", str(self.data_dir)]
        args += ["--namespace", o.namespace, "--relay", self.relay_url, "--name", self.name]
        args += ["--history", str(self.history_path), "--schema", o.schema]
        args += ["--seed", str(o.seed), "--incarnation", str(self.incarnation)]
        args += ["--t0", repr(self.t0), "--rate", str(o.rate), "--durability", o.durability]
        args += ["--clock-offset-ms", str(self.clock_offset_ms)]
        args += ["--max-seconds", str(o.max_seconds), "--heartbeat-s", str(o.heartbeat_s)]
        args += ["--ws-heartbeat-s", str(o.ws_heartbeat_s)]
        args += ["--backoff-max-s", str(o.backoff_max_s)]
        args += ["--connect-timeout-s", str(o.connect_timeout_s)]
        args.append("--workload" if o.workload else "--no-workload")
        if paused:
            args.append("--paused")
        return args

    def start(self, *, paused: bool = False, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start the next incarnation and wait for its ready line (store opened)."""
        with self._lock:
            self.launch(paused=paused)
            self.wait_ready(timeout_s)

    def launch(self, *, paused: bool = False) -> None:
        """Spawn the next incarnation without waiting (start several, then
        :meth:`wait_ready` on each: interpreter start-ups overlap)."""
        with self._lock:
            self._launch(paused)

    def _launch(self, paused: bool) -> None:
        if self.alive:
            raise NodeError(f"{self.name} is already running")
        for directory in (self.data_dir, self.history_path.parent, self.log_path.parent):
            directory.mkdir(parents=True, exist_ok=True)
        self.incarnation += 1
        self._buffer = b""
        env = {**os.environ, **self.options.extra_env}
        with self.log_path.open("ab") as log:
            self.process = spawn(
                self.command_line(paused),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
            )
        self.stopped_by_signal = False

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait for the ready line of the incarnation :meth:`launch` spawned.

        Raises:
            NodeError: it exited or stayed silent; it is killed before this is raised.
        """
        with self._lock:
            self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        if self.process is None:
            raise NodeError(f"{self.name} was not launched")
        try:
            ready = self._read_answer(timeout_s)
        except NodeError:
            self.kill()
            raise
        if ready.get("event") != "ready":
            self.kill()
            raise NodeError(f"{self.name}: unexpected first line {ready}")
        self.recovery_s.append(float(ready.get("recovery_s", 0.0)))

    def kill(self) -> None:
        """kill -9 (the store, its lock and the outbox are left as the crash left them)."""
        process = self.process
        if process is not None:
            kill9(process)  # first, so a command waiting on this worker fails at once
        with self._lock:
            process, self.process = self.process, None
            if process is not None:
                kill9(process)
                self._close_pipes(process)
            self.stopped_by_signal = False

    def stop(self, timeout_s: float = COMMAND_TIMEOUT_S) -> None:
        """Clean stop: ``stop`` command (closes the replica), SIGTERM/SIGKILL if it hangs."""
        with self._lock:
            self._stop(timeout_s)

    def _stop(self, timeout_s: float) -> None:
        process = self.process
        if process is None:
            return
        if self.stopped_by_signal:
            self.resume_process()
        if process.poll() is None:
            with contextlib.suppress(NodeError, OSError):
                self.command("stop", timeout_s=timeout_s)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=timeout_s)
        terminate(process)
        self._close_pipes(process)
        self.process = None

    def pause_process(self) -> None:
        """SIGSTOP: the whole worker freezes (sockets stay open, heartbeats stop)."""
        if self.alive and not self.stopped_by_signal:
            os.kill(self.pid, signal.SIGSTOP)
            self.stopped_by_signal = True

    def resume_process(self) -> None:
        """SIGCONT after :meth:`pause_process`."""
        if self.alive and self.stopped_by_signal:
            os.kill(self.pid, signal.SIGCONT)
        self.stopped_by_signal = False

    @staticmethod
    def _close_pipes(process: subprocess.Popen[bytes]) -> None:
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    # -- control channel -------------------------------------------------------------------

    def command(self, cmd: str, timeout_s: float = COMMAND_TIMEOUT_S, **fields: Any) -> Any:
        """Send one command and return its answer.

        Raises:
            NodeError: not running, paused by signal, no answer in time, or ``ok`` false.
        """
        with self._lock:
            return self._command(cmd, timeout_s, fields)

    def _command(self, cmd: str, timeout_s: float, fields: dict[str, Any]) -> Any:
        process = self.process
        if process is None or process.poll() is not None or process.stdin is None:
            raise NodeError(f"{self.name} is not running")
        if self.stopped_by_signal:
            raise NodeError(f"{self.name} is paused (SIGSTOP)")
        try:
            process.stdin.write((json.dumps({"cmd": cmd, **fields}) + "\n").encode())
            process.stdin.flush()
        except OSError as exc:
            raise NodeError(f"{self.name}: control channel closed: {exc}") from exc
        answer = self._read_answer(timeout_s)
        if not answer.get("ok"):
            raise NodeError(f"{self.name}: {cmd} failed: {answer.get('error')}")
        return answer

    def _read_answer(self, timeout_s: float) -> dict[str, Any]:
        process = self.process
        assert process is not None and process.stdout is not None
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NodeError(f"{self.name}: no answer within {timeout_s} s")
                if not selector.select(min(remaining, 0.5)):
                    continue
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:
                    raise NodeError(
                        f"{self.name} exited (status {process.poll()}); see {self.log_path}"
                    )
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def status(self, timeout_s: float = COMMAND_TIMEOUT_S) -> dict[str, Any]:
        """Digest, state vector, applied seq, outbox, sync state."""
        answer: dict[str, Any] = self.command("status", timeout_s=timeout_s)
        return answer

    def read(self, phase: str = "final") -> dict[str, Any]:
        """A full read (also recorded in the worker's history)."""
        answer = self.command("read", phase=phase)
        read: dict[str, Any] = answer["read"]
        return read

    def pause_writes(self) -> None:
        """Stop the workload (returns once no write is in flight)."""
        self.command("pause")

    def resume_writes(self) -> None:
        """Restart the workload."""
        self.command("resume")

    def skew(self, offset_ms: int) -> None:
        """Offset the HLC's wall clock; kept for later incarnations too."""
        self.clock_offset_ms = int(offset_ms)
        if self.alive and not self.stopped_by_signal:
            self.command("skew", ms=int(offset_ms))

    def call(self, field_name: str, method: str, *args: Any) -> Any:
        """Call ``replica.state.<field>.<method>(*args)`` in the worker; its JSON result."""
        answer = self.command("call", field=field_name, method=method, args=list(args))
        return answer["result"]
