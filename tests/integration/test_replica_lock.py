"""One store, one process: a second open gets StoreLockedError naming the store and holder."""

from __future__ import annotations

import importlib.util
import os
import re
import time
from pathlib import Path
from types import ModuleType

import pytest

from crdtstate import Replica, StoreError, StoreLockedError

HERE = Path(__file__).resolve().parent


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


writer = _load("_replica_writer")
Child = writer.Child
DEADLINE_S = 30.0


def deadline() -> float:
    return time.monotonic() + DEADLINE_S


def test_a_second_process_gets_a_clear_error(tmp_path: Path) -> None:
    with Replica.open(tmp_path, writer.NAMESPACE, writer.CrashState) as r:
        r.state.hits.inc()
        child = Child("try-open", str(tmp_path), writer.NAMESPACE)
        try:
            line = child.read_line(deadline())
            assert child.proc.wait(timeout=DEADLINE_S) == 3, child.describe()
        finally:
            child.close()
    assert line is not None and line.startswith("LOCKED "), line
    message = line.removeprefix("LOCKED ")
    assert str(tmp_path / f"{writer.NAMESPACE}.sqlite3") in message
    assert f"locked by pid {os.getpid()}" in message
    assert "another replica has it open" in message


def test_a_store_held_by_another_process_refuses_us_until_released(tmp_path: Path) -> None:
    child = Child("hold", str(tmp_path), writer.NAMESPACE)
    try:
        line = child.read_line(deadline())
        assert line is not None and line.startswith("HELD "), child.describe()
        holder = int(line.split()[1])
        with pytest.raises(StoreLockedError) as info:
            Replica.open(tmp_path, writer.NAMESPACE, writer.CrashState)
        assert f"locked by pid {holder}" in str(info.value)
        assert isinstance(info.value, StoreError)
        # Another namespace in the same data directory is a different store: free.
        with Replica.open(tmp_path, "other", writer.CrashState) as other:
            other.state.hits.inc()
        assert child.proc.stdin is not None
        child.proc.stdin.close()  # the holder closes its replica and exits
        assert child.read_line(deadline()) == "RELEASED", child.describe()
        assert child.proc.wait(timeout=DEADLINE_S) == 0
    finally:
        child.close()
    with Replica.open(tmp_path, writer.NAMESPACE, writer.CrashState) as r:
        assert r.state.hits.value == 0


def test_a_killed_holder_releases_the_lock(tmp_path: Path) -> None:
    child = Child("hold", str(tmp_path), writer.NAMESPACE)
    try:
        line = child.read_line(deadline())
        assert line is not None and line.startswith("HELD "), child.describe()
        with pytest.raises(StoreLockedError):
            Replica.open(tmp_path, writer.NAMESPACE, writer.CrashState)
        child.kill()  # SIGKILL: no clean-up ran, the kernel dropped the lock
    finally:
        child.close()
    with Replica.open(tmp_path, writer.NAMESPACE, writer.CrashState) as r:
        r.state.hits.inc()
        assert r.state.hits.value == 1


def test_a_second_open_in_the_same_process_is_refused_until_the_first_closes(
    tmp_path: Path,
) -> None:
    first = Replica.open(tmp_path, "ns", writer.CrashState)
    try:
        with pytest.raises(StoreLockedError, match=re.escape(str(tmp_path / "ns.sqlite3"))):
            Replica.open(tmp_path, "ns", writer.CrashState)
        first.state.karma.inc(2)  # the first replica is unaffected by the refused open
    finally:
        first.close()
    with Replica.open(tmp_path, "ns", writer.CrashState) as second:
        assert second.state.karma.value == 2


def test_the_lock_error_survives_repeated_attempts(tmp_path: Path) -> None:
    with Replica.open(tmp_path, "ns", writer.CrashState):
        for _ in range(5):
            with pytest.raises(StoreLockedError):
                Replica.open(tmp_path, "ns", writer.CrashState)
    with Replica.open(tmp_path, "ns", writer.CrashState) as r:
        assert r.namespace == "ns"
