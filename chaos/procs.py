"""Child processes of the harness: spawned, tracked and always stopped by pid.

Why a registry: a chaos test that fails (or a harness that raises) must not leave relays and
replicas running on a shared machine. Every child goes through :func:`spawn`, which records
it; :func:`reap_all` (registered with ``atexit``) kills whatever is still alive, by pid,
never by name. On Linux a child started from the main thread also gets
``PR_SET_PDEATHSIG = SIGKILL``, so even a harness killed with -9 takes its children along.

Also owns :class:`RelayProcess`: ``python -m relay serve`` on a loopback port, restartable on
the same port and data directory (the replicas' proxies keep pointing at it).

Imports nothing from the project.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

START_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
_PR_SET_PDEATHSIG = 1

_live: dict[int, subprocess.Popen[bytes]] = {}
_live_lock = threading.Lock()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(
    args: Sequence[str],
    *,
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child process and remember it until :func:`forget` or :func:`reap_all`.

    The child dies with its parent (PDEATHSIG) when spawned from the main thread; the
    signal fires when the spawning *thread* exits, so other threads rely on the registry.
    """
    preexec: Callable[[], None] | None = None
    if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        preexec = _die_with_parent
    process = subprocess.Popen(
        list(args),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=env,
        cwd=cwd,
        preexec_fn=preexec,  # only a prctl call: nothing that could deadlock after fork
    )
    with _live_lock:
        _live[process.pid] = process
    return process


def forget(process: subprocess.Popen[bytes]) -> None:
    """Stop tracking a child that has exited."""
    with _live_lock:
        _live.pop(process.pid, None)


def kill9(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL by pid and reap (the nemesis's kill -9)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_GRACE_S)
    forget(process)


def terminate(process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> int | None:
    """SIGTERM, then SIGKILL after ``grace_s``; returns the exit status."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)  # a paused child cannot act on SIGTERM
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            kill9(process)
    forget(process)
    return process.poll()


def reap_all() -> None:
    """Kill every tracked child still alive (atexit; also called by cluster teardown)."""
    with _live_lock:
        processes = list(_live.values())
    for process in processes:
        kill9(process)


def live_pids() -> list[int]:
    """Pids of tracked children still running (tests assert nothing leaked)."""
    with _live_lock:
        return [pid for pid, p in _live.items() if p.poll() is None]


atexit.register(reap_all)


def read_line_with_deadline(process: subprocess.Popen[bytes], prefix: str, timeout_s: float) -> str:
    """Read the child's stdout until a line starting with ``prefix``; return that line.

    Raises:
        RuntimeError: the child exited or printed nothing matching within ``timeout_s``.
    """
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"no {prefix!r} line within {timeout_s} s")
            if not selector.select(min(remaining, 0.5)):
                continue
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                code = process.poll()
                raise RuntimeError(f"child exited (status {code}) before printing {prefix!r}")
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                text = line.decode(errors="replace").strip()
                if text.startswith(prefix):
                    return text


class RelayProcess:
    """``python -m relay serve`` on 127.0.0.1, restartable on the same port and data dir.

    Args:
        data_dir: the relay's ``--data`` (kept across restarts: kill -9 then restart must
            find every acknowledged update there).
        log_path: stderr of every incarnation, appended.
        port: fixed port (0 = any on the first start; later starts reuse the bound one).
        config_path: a ``relay.toml``.
    """

    READY_PREFIX = "crdtstate-relay listening on "

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        *,
        port: int = 0,
        config_path: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = port
        self.config_path = config_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """Websocket base URL of the relay."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, a proxy's upstream."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """Pid of the running incarnation."""
        if self.process is None:
            raise RuntimeError("relay not running")
        return self.process.pid

    @property
    def running(self) -> bool:
        """Whether an incarnation is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start an incarnation and wait for its listening line.

        A restart right after a kill -9 may find the port briefly unavailable; it retries
        for a few seconds before giving up.
        """
        deadline = time.monotonic() + timeout_s
        attempt = 0
        while True:
            attempt += 1
            try:
                self.launch()
                self.wait_ready(max(1.0, deadline - time.monotonic()))
                return
            except RuntimeError:
                if self.port == 0 or time.monotonic() >= deadline or attempt >= 20:
                    raise
                time.sleep(0.25)

    def launch(self) -> None:
        """Spawn an incarnation without waiting for it (see :meth:`wait_ready`)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "relay", "serve", "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--data", str(self.data_dir)]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        env = dict(os.environ if self.env is None else self.env)
        with self.log_path.open("ab") as log:
            self.process = spawn(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env
            )

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait for the listening line of the launched incarnation; learn its port.

        Raises:
            RuntimeError: it exited or stayed silent (it is killed first).
        """
        process = self.process
        if process is None:
            raise RuntimeError("relay not launched")
        try:
            line = read_line_with_deadline(process, self.READY_PREFIX, timeout_s)
        except RuntimeError:
            kill9(process)
            self._close_pipe()
            raise
        self.port = int(line.rsplit(":", 1)[1].strip("/ "))
        self.starts += 1

    def kill(self) -> None:
        """kill -9 the running incarnation."""
        if self.process is not None:
            kill9(self.process)
            self._close_pipe()

    def stop(self) -> None:
        """Graceful stop (SIGTERM: the relay drains), SIGKILL if it hangs."""
        if self.process is not None:
            terminate(self.process)
            self._close_pipe()

    def _close_pipe(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.stdout is not None:
            process.stdout.close()
