"""The fault proxy as a real process: the console script, flags, config file, signals.

Each test starts ``crdtstate-chaos toxiproxy`` (or ``python -m chaos toxiproxy``) on
127.0.0.1 with ``--port 0``, learns the port from the ready line, and stops it by pid.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from chaos.faultproxy import FaultProxyProcess
from chaos.faultproxy.testing import ThreadedEchoServer, free_port, port_accepts, wait_until_sync

pytestmark = pytest.mark.timeout(60)

CONSOLE_SCRIPT = Path(sys.executable).parent / "crdtstate-chaos"


@pytest.fixture
def echo() -> Iterator[ThreadedEchoServer]:
    with ThreadedEchoServer() as server:
        yield server


def read_line(process: subprocess.Popen[bytes], timeout_s: float = 20) -> bytes:
    assert process.stdout is not None
    deadline, line = time.monotonic() + timeout_s, b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            assert remaining > 0, "no ready line in time"
            if selector.select(remaining):
                chunk = os.read(process.stdout.fileno(), 4096)
                assert chunk, f"process exited: {process.wait(5)}"
                line += chunk
    return line


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
    try:
        return process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(10)
    finally:
        if process.stdout is not None:
            process.stdout.close()


def test_console_script_with_single_dash_flags_serves_then_stops_on_sigterm(
    tmp_path: Path, echo: ThreadedEchoServer
) -> None:
    port = free_port()
    config = tmp_path / "proxies.json"
    config.write_text(
        json.dumps([{"name": "cfg", "upstream": echo.address, "listen": f"127.0.0.1:{port}"}])
    )
    command = [
        str(CONSOLE_SCRIPT),
        "toxiproxy",
        "-host",
        "127.0.0.1",
        "-port",
        "0",
        "-seed",
        "9",
        "-config",
        str(config),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        ready: dict[str, Any] = json.loads(read_line(process))
        assert ready["event"] == "ready" and ready["seed"] == 9 and ready["pid"] == process.pid
        proxies = requests.get(f"{ready['api']}/proxies", timeout=10).json()
        assert proxies["cfg"]["listen"] == f"127.0.0.1:{port}"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"through")
            assert client.recv(100) == b"through"
            assert stop(process) == 0
            assert client.recv(100) == b""  # stopping closed the live connection
        assert not port_accepts(port) and not port_accepts(ready["port"])
    finally:
        stop(process)


def test_config_errors_keep_earlier_entries_and_the_server_serves(
    tmp_path: Path, echo: ThreadedEchoServer
) -> None:
    config = tmp_path / "proxies.json"
    config.write_text(
        json.dumps(
            [
                {"name": "first", "upstream": echo.address, "listen": "127.0.0.1:0"},
                {"name": "broken", "upstream": echo.address, "listen": "local373"},
                {"name": "never", "upstream": echo.address, "listen": "127.0.0.1:0"},
            ]
        )
    )
    log = tmp_path / "stderr.log"
    with log.open("wb") as stderr, FaultProxyProcess(config_path=config, stderr=stderr) as server:
        proxies = requests.get(f"{server.url}/proxies", timeout=10).json()
        assert sorted(proxies) == ["first"]
        assert requests.get(f"{server.url}/version", timeout=10).status_code == 200
    assert "missing port in address" in log.read_text()


def test_an_api_port_in_use_exits_with_status_1_and_says_why(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "chaos",
                "toxiproxy",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    assert b"address already in use" in result.stderr
    assert result.stdout == b""


def test_process_supervisor_reports_seed_and_stops_by_pid() -> None:
    process = FaultProxyProcess(seed=77)
    process.start()
    pid = process.pid
    try:
        assert process.seed == 77
        assert requests.get(f"{process.url}/version", timeout=10).json() == {"version": "2.12.0"}
    finally:
        assert process.stop() == 0
    wait_until_sync(
        lambda: not Path(f"/proc/{pid}").exists() or _is_zombie(pid), what="process gone"
    )


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
