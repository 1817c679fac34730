"""``crdtstate drift`` as a real process against a real relay and real replicas: the exit
status says healthy (0), alert (1) or unreachable (2), for cron and CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crdtstate import Replica
from tests.integration.drift_helpers import (
    Agent,
    closed_port,
    forge_heartbeat,
    open_replica,
    replicas_by_id,
)
from tests.integration.relay_helpers import RelayProcess

Wait = Callable[..., Any]

ROOT = Path(__file__).resolve().parents[2]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("CRDTSTATE_")}
ENV.update(PYTHONPATH=str(ROOT), COLUMNS="200")
TIMEOUT_S = 60
QUIET = ["--max-silence-seconds", "3600"]
"""Heartbeat silence is not what these tests look at (the default limit is the lag's)."""


def drift(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``crdtstate drift ARGS`` through the ``crdtstate`` command's own entry point."""
    return subprocess.run(
        [sys.executable, "-m", "crdtstate.cli", "drift", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=TIMEOUT_S,
        check=False,
    )


def drift_json(*args: str) -> tuple[int, dict[str, Any]]:
    done = drift(*args, "--json")
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


@pytest.fixture
def pair(tmp_path: Path, relay: RelayProcess, wait_until: Wait) -> Iterator[list[Replica[Agent]]]:
    """Executor and supervisor, connected, converged in the relay's view."""
    replicas = [open_replica(tmp_path, n, relay) for n in ("executor", "supervisor")]
    try:
        replicas[0].state.killswitch.set(True)
        replicas[1].state.karma.inc(2)
        for replica in replicas:
            replica.wait_synced(15)
        wait_until(
            lambda: all(
                r.get("status") == "converged"
                for r in (replicas_by_id(relay).get(n, {}) for n in ("executor", "supervisor"))
            ),
            15,
            "both replicas converged",
        )
        yield replicas
    finally:
        for replica in replicas:
            replica.close()


def test_healthy_namespace_exits_0_with_a_table_of_every_replica(
    relay: RelayProcess, pair: list[Replica[Agent]]
) -> None:
    done = drift("--relay", relay.url, "--namespace", "agent", *QUIET)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "namespace agent" in done.stdout and "healthy" in done.stdout
    assert "executor" in done.stdout and "supervisor" in done.stdout
    assert "converged" in done.stdout


def test_json_report_lists_lag_digest_and_status(
    relay: RelayProcess, pair: list[Replica[Agent]]
) -> None:
    code, report = drift_json("--relay", relay.http_url, "--namespace", "agent", *QUIET)
    assert code == 0 and report["healthy"] is True and report["exit_code"] == 0
    rows = {r["replica_id"]: r for r in report["replicas"]}
    assert set(rows) == {"executor", "supervisor"}
    for replica in pair:
        row = rows[replica.replica_id]
        assert row["status"] == "converged" and row["connected"] is True
        assert row["lag_seqs"] == 0 and row["digest"] == replica.digest()
        assert row["alerts"] == []
    assert report["thresholds"]["lag_s_max"] == 300.0


def test_a_stopped_replica_behind_the_head_alerts_with_exit_1(
    relay: RelayProcess, pair: list[Replica[Agent]], wait_until: Wait
) -> None:
    executor, supervisor = pair
    supervisor.close()
    executor.state.killswitch.set(False)
    executor.wait_synced(15)

    def alerting() -> tuple[int, dict[str, Any]] | None:
        code, report = drift_json(
            "--relay", relay.url, "--namespace", "agent", "--max-lag-seconds", "0.2", *QUIET
        )
        return (code, report) if code == 1 else None

    _, report = wait_until(alerting, 30, "drift to report the stopped replica's lag")
    rows = {r["replica_id"]: r for r in report["replicas"]}
    assert rows["supervisor"]["status"] == "lagging" and rows["supervisor"]["connected"] is False
    assert [a["code"] for a in rows["supervisor"]["alerts"]] == ["lag"]
    assert rows["supervisor"]["lag_seqs"] >= 1 and rows["supervisor"]["lag_seconds"] > 0.2
    # The same state under the default five-minute limit is no alert, only a lagging replica.
    done = drift("--relay", relay.url, "--namespace", "agent", *QUIET)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lagging" in done.stdout


def test_outbox_and_recovery_limits_alert(relay: RelayProcess, pair: list[Replica[Agent]]) -> None:
    done = drift(
        "--relay", relay.url, "--namespace", "agent", "--max-recovery-seconds", "0", *QUIET
    )
    assert done.returncode == 1 and "recovery" in done.stdout
    code, report = drift_json(
        "--relay", relay.url, "--namespace", "agent", "--max-outbox", "0", *QUIET
    )
    assert code == 0, report  # nothing is waiting in any outbox


async def test_divergence_alarm_exits_1_and_names_both_replicas(
    relay: RelayProcess, pair: list[Replica[Agent]], wait_until: Wait
) -> None:
    honest = replicas_by_id(relay)["executor"]
    forged = {k: v for k, v in honest.items() if k not in ("replica_id", "alerts", "status")}
    forged["digest"] = "f" * 64
    client = await forge_heartbeat(relay, "forger", forged)
    try:
        wait_until(lambda: "forger" in replicas_by_id(relay), 15, "the forged heartbeat")
        code, report = drift_json("--relay", relay.url, "--namespace", "agent", *QUIET)
        assert code == 1
        rows = {r["replica_id"]: r for r in report["replicas"]}
        assert {rows[n]["status"] for n in ("executor", "supervisor", "forger")} == {"diverged"}
        alarm = rows["forger"]["alerts"][0]
        assert alarm["code"] == "diverged" and alarm["severity"] == "alarm"
        assert "executor" in alarm["message"] and "supervisor" in alarm["message"]
    finally:
        await client.close()


def test_unreachable_relay_exits_2(relay: RelayProcess) -> None:
    port = closed_port()
    done = drift("--relay", f"http://127.0.0.1:{port}", "--namespace", "agent")
    assert done.returncode == 2
    assert "cannot reach the relay" in done.stderr
    done = drift("--relay", f"ws://127.0.0.1:{port}", "--namespace", "agent", "--json")
    assert done.returncode == 2 and done.stdout == ""


def test_unknown_namespace_and_bad_arguments_exit_2(relay: RelayProcess) -> None:
    done = drift("--relay", relay.url, "--namespace", "nobody")
    assert done.returncode == 2 and "nobody" in done.stderr
    done = drift("--relay", relay.url, "--namespace", "bad name")
    assert done.returncode == 2
    done = drift("--relay", "ftp://127.0.0.1:1", "--namespace", "agent")
    assert done.returncode == 2


def test_relay_and_namespace_may_come_before_the_verb(
    relay: RelayProcess, pair: list[Replica[Agent]]
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "crdtstate.cli",
            "--relay",
            relay.url,
            "-n",
            "agent",
            "drift",
            *QUIET,
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "executor" in done.stdout


def test_watch_refreshes_until_its_count(relay: RelayProcess, pair: list[Replica[Agent]]) -> None:
    done = drift(
        "--relay",
        relay.url,
        "--namespace",
        "agent",
        "--json",
        "--watch",
        "--watch-count",
        "3",
        "--interval-seconds",
        "0.1",
        *QUIET,
    )
    assert done.returncode == 0, done.stderr
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert len(reports) == 3
    assert all(r["namespace"] == "agent" and r["healthy"] for r in reports)
