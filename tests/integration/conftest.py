"""Fixtures for integration tests: a real relay subprocess per test, stopped by pid."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.relay_helpers import RelayProcess


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    """A relay in open dev mode on a free port, with its data under ``tmp_path``."""
    process = RelayProcess(tmp_path / "relay-data").start()
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[type[RelayProcess]]:
    """Start relays with custom config: ``relay_factory(data_dir, config_text, env)``;
    every relay started through it is killed at teardown."""
    started: list[RelayProcess] = []

    class _Tracked(RelayProcess):
        def start(self) -> RelayProcess:
            started.append(self)
            return super().start()

    try:
        yield _Tracked
    finally:
        for process in started:
            process.kill()
