"""Headless Chromium driven over the DevTools protocol, with nothing but aiohttp.

:class:`Chromium` starts the Debian ``chromium`` binary on a page, finds its DevTools port
(the ``DevToolsActivePort`` file Chromium writes in its profile directory), and
:meth:`Chromium.evaluate` runs an expression in the page and returns its JSON value. The
browser is stopped by pid (SIGTERM, then SIGKILL of its process group, which this class
created) in :meth:`Chromium.close`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["Chromium", "chromium_binary"]

START_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 20.0


def chromium_binary() -> str | None:
    """The Chromium executable on PATH (Debian's ``chromium``), or None."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """One headless Chromium showing one page.

    Args:
        binary: the executable.
        profile_dir: an empty directory for the browser's profile.
        log_path: where the browser's stderr goes.
    """

    def __init__(self, binary: str, profile_dir: Path, log_path: Path) -> None:
        self.binary = binary
        self.profile_dir = profile_dir
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._next_id = 0

    async def open(self, url: str) -> Chromium:
        """Start the browser on ``url`` and attach to the page."""
        args = [
            self.binary,
            "--headless",
            "--no-sandbox",  # root in CI containers
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-sync",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile_dir}",
            "--window-size=1400,1000",
            url,
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        port = await self._devtools_port()
        self._session = aiohttp.ClientSession()
        page_ws = await self._page_socket(port)
        self._ws = await self._session.ws_connect(page_ws, max_msg_size=0)
        return self

    async def _devtools_port(self) -> int:
        marker = self.profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited: {self.log_tail()}")
            with contextlib.suppress(OSError, ValueError, IndexError):
                return int(marker.read_text().splitlines()[0])
            await asyncio.sleep(0.05)
        raise RuntimeError(f"chromium did not open DevTools in time: {self.log_tail()}")

    async def _page_socket(self, port: int) -> str:
        assert self._session is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
                    targets = await response.json(content_type=None)
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    return str(pages[0]["webSocketDebuggerUrl"])
            await asyncio.sleep(0.05)
        raise RuntimeError("chromium shows no page")

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a DevTools command and return its result (events are skipped)."""
        assert self._ws is not None
        self._next_id += 1
        call_id = self._next_id
        await self._ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while True:
            msg = await self._ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"DevTools connection ended: {msg.type}")
            data = json.loads(msg.data)
            if data.get("id") != call_id:
                continue
            if "error" in data:
                raise RuntimeError(f"{method}: {data['error']}")
            result: dict[str, Any] = data["result"]
            return result

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression evaluated in the page."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> None:
        """Save a PNG of the page (kept with the test's files, to look at after a failure)."""
        result = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(result["data"]))

    def log_tail(self, lines: int = 15) -> str:
        """The end of the browser's log, for failure messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def close(self) -> None:
        """Detach and stop the browser by pid (its process group is its own)."""
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        # Renderer and zygote children share the group created by start_new_session.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
