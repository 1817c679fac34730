"""Run the fault proxy outside the caller's event loop: as a subprocess or in a thread.

Owns two supervisors with the same shape (``start()``, ``stop()``, ``port``, ``url``,
context manager):

- :class:`FaultProxyProcess` runs ``python -m chaos toxiproxy --port 0`` (a real process,
  as a user runs it), learns the port from the ready line on stdout, and stops it by pid
  (SIGTERM, then SIGKILL after a grace period).
- :class:`FaultProxyThread` runs :class:`FaultProxyServer` on a private event loop in a
  daemon thread, for synchronous callers (toxiproxy-python is a blocking client).

Must not import aiohttp or pytest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from chaos.faultproxy.errors import FaultProxyError
from chaos.faultproxy.server import FaultProxyServer

_READY_LINE_MAX_BYTES = 4096


class FaultProxyProcess:
    """The fault proxy API server as a child process.

    Args:
        host: API bind host.
        port: API port; 0 (default) lets the child pick one.
        seed: ``--seed`` for the child; None lets it draw one (read :attr:`seed`).
        config_path: ``--config`` file.
        stderr: where the child's log goes (default: inherited).
        env: environment of the child (default: inherited).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        seed: int | None = None,
        config_path: Path | str | None = None,
        stderr: IO[Any] | int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.seed = seed
        self._requested_port = port
        self._config_path = config_path
        self._stderr = stderr
        self._env = env
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._url: str | None = None

    def command(self) -> list[str]:
        """Return the child's command line."""
        command = [sys.executable, "-m", "chaos", "toxiproxy", "--host", self.host]
        command += ["--port", str(self._requested_port)]
        if self.seed is not None:
            command += ["--seed", str(self.seed)]
        if self._config_path is not None:
            command += ["--config", str(self._config_path)]
        return command

    @property
    def pid(self) -> int:
        """The child's process id."""
        if self._process is None:
            raise FaultProxyError("the fault proxy process is not started")
        return self._process.pid

    @property
    def port(self) -> int:
        """The API port the child bound."""
        if self._port is None:
            raise FaultProxyError("the fault proxy process is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the child's API."""
        if self._url is None:
            raise FaultProxyError("the fault proxy process is not started")
        return self._url

    def start(self, timeout_s: float = 20.0) -> None:
        """Start the child and wait for its ready line.

        Raises:
            FaultProxyError: the child exited or stayed silent for ``timeout_s``; it is
                stopped before this is raised.
        """
        if self._process is not None:
            raise FaultProxyError("the fault proxy process is already started")
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=self._env,
            bufsize=0,
        )
        try:
            ready = self._read_ready_line(timeout_s)
        except BaseException:
            self.stop()
            raise
        self._port, self._url = int(ready["port"]), str(ready["api"])
        self.seed = int(ready["seed"])

    def _read_ready_line(self, timeout_s: float) -> dict[str, Any]:
        process = self._process
        assert process is not None and process.stdout is not None
        deadline = time.monotonic() + timeout_s
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while b"\n" not in buffer and len(buffer) < _READY_LINE_MAX_BYTES:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise FaultProxyError(f"fault proxy not ready after {timeout_s} s")
                if selector.select(min(remaining, 0.5)):
                    data = os.read(process.stdout.fileno(), _READY_LINE_MAX_BYTES)
                    if not data:
                        code = process.wait(timeout=5)
                        raise FaultProxyError(f"fault proxy exited with status {code} at start")
                    buffer += data
        try:
            ready: dict[str, Any] = json.loads(buffer.split(b"\n", 1)[0])
            if ready.get("event") != "ready":
                raise ValueError("not a ready line")
        except ValueError as exc:
            raise FaultProxyError(f"unexpected output from fault proxy: {buffer[:200]!r}") from exc
        return ready

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Stop the child by pid: SIGTERM, then SIGKILL after ``timeout_s``.

        Returns:
            The child's exit status, or None if it was never started.
        """
        process, self._process = self._process, None
        self._port = self._url = None
        if process is None:
            return None
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    process.kill()
            return process.wait(timeout=timeout_s)
        finally:
            if process.stdout is not None:
                process.stdout.close()

    def __enter__(self) -> FaultProxyProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class FaultProxyThread:
    """The fault proxy server on its own event loop in a daemon thread.

    Args:
        host: API bind host.
        port: API port; 0 (default) picks a free one.
        **server_options: passed to :class:`FaultProxyServer` (``seed``, ``recorder``, ...).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **server_options: Any) -> None:
        self.server = FaultProxyServer(host, port, **server_options)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def port(self) -> int:
        """The bound API port."""
        return self.server.port

    @property
    def url(self) -> str:
        """Base URL of the API."""
        return self.server.url

    def start(self, timeout_s: float = 20.0) -> None:
        """Start the thread and wait until the API listens.

        Raises:
            ListenError: the API could not bind (raised from the thread).
            FaultProxyError: not ready within ``timeout_s``.
        """
        if self._thread is not None:
            raise FaultProxyError("the fault proxy thread is already started")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._main, args=(ready,), name="fault-proxy", daemon=True
        )
        self._thread.start()
        try:
            ready.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            raise FaultProxyError(f"fault proxy thread not ready after {timeout_s} s") from None

    def _main(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            asyncio.run(self._serve(ready))
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)

    async def _serve(self, ready: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        await self.server.start()
        try:
            ready.set_result(None)
            await self._stopping.wait()
        finally:
            await self.server.stop()

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the server (every listener and connection) and join the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            # RuntimeError: the loop finished in the meantime.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout_s)
        if thread.is_alive():
            raise FaultProxyError(f"fault proxy thread did not stop within {timeout_s} s")

    def __enter__(self) -> FaultProxyThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
