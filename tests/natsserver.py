"""A real ``nats-server -js`` subprocess for tests: 127.0.0.1, a free port, stopped by pid.

Tests of the NATS JetStream backend must run against the real server (the point is to hold
the backend to JetStream's real acks, dedupe and purge semantics), so this helper starts
``nats-server -js -a 127.0.0.1 -p <port> -sd <dir>``, waits until it logs that it is ready,
and stops it by its own pid (SIGTERM, then SIGKILL) — never by name. A restart keeps the
port and the store directory, so clients reconnect to the same JetStream.

Without the binary, tests skip locally and fail under CI (``CI`` set), so a missing
``apt-get install nats-server`` in CI is loud.

Owns nothing but the process; imports only the standard library and pytest.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

__all__ = ["NatsServer", "free_port", "require_nats_server"]

READY_LINE = "Server is ready"
START_TIMEOUT_S = 15.0


def require_nats_server() -> str:
    """The ``nats-server`` binary, or skip (fail under CI) when it is not installed."""
    binary = shutil.which("nats-server")
    if binary is None:
        message = "nats-server is not installed (apt-get install -y nats-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """One ``nats-server`` process with JetStream on 127.0.0.1.

    Args:
        store_dir: JetStream storage (``-sd``); kept across :meth:`restart`.
        config_text: extra server configuration (e.g. ``max_payload: 8MB``), written beside
            the store and passed with ``-c``; None = command-line options only.
    """

    def __init__(self, store_dir: Path, config_text: str | None = None) -> None:
        self.store_dir = store_dir
        self.config_text = config_text
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = store_dir.parent / f"{store_dir.name}-nats.log"

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's pid."""
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> NatsServer:
        """Start (on a free port the first time, the same port on a restart) and wait until
        the server says it is ready."""
        binary = require_nats_server()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self.port else 3  # a just-freed port can be taken in between
        for attempt in range(attempts):
            port = self.port or free_port()
            args = [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(self.store_dir)]
            if self.config_text is not None:
                config = self.store_dir.parent / f"{self.store_dir.name}-nats.conf"
                config.write_text(self.config_text)
                args += ["-c", str(config)]
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            if self._wait_ready(offset):
                self.port = port
                return self
            self.kill()
            if attempt == attempts - 1:
                raise RuntimeError(f"nats-server did not start: {self.log_tail()}")
        raise AssertionError("unreachable")

    def _wait_ready(self, offset: int) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        interval = 0.005
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            with contextlib.suppress(OSError), self.log_path.open("rb") as log:
                log.seek(offset)
                if READY_LINE.encode() in log.read():
                    return True
            time.sleep(interval)  # polling the log for the ready line, not waiting blindly
            interval = min(interval * 2, 0.05)
        return False

    def log_tail(self, lines: int = 15) -> str:
        """The end of the server's log, for failure messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM by pid (JetStream flushes its store), SIGKILL if it lingers; reap."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL by pid and reap (a crash: nothing flushed beyond what the OS holds)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> NatsServer:
        """Stop and start again on the same port and store directory."""
        self.stop()
        return self.start()
