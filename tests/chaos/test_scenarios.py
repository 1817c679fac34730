"""Every chaos scenario on real processes (a relay, 3 replica workers, a proxy per spoke),
with fixed seeds, each bounded to a few seconds of faults; then the checkers are shown to bite:
a saved run's history, doctored to lose a write or diverge, must fail the right check.

Budget: about 8 s of faults per run plus start-up, convergence, the late joiner and the
relay's view (~14 s a run on the 2-core CI machine); ten runs keep the stage under four
minutes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chaos.history import Event, fold, read_history, write_history
from chaos.run import CONVERGE_BOUND_S, RunResult, check_run, format_result, run_scenario
from chaos.scenarios import SCENARIOS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

DURATION_S = 7.0
BASELINE = ("partition-heal", 1)
CLI_RUN = ("slow-network", 1)
RUNS = [(name, 1) for name in SCENARIOS] + [("kill-replica", 2), ("mixed", 2)]
ALWAYS = {"C1", "C4", "C5", "C6", "C7", "C8", "C9", "C10", "C12"}


def _report(workdir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((workdir / "report.json").read_text())
    return data


def _explain(report: dict[str, Any]) -> str:
    result = RunResult(**report)
    schedule_path = Path(result.workdir) / "schedule.json"
    schedule = json.loads(schedule_path.read_text()) if schedule_path.exists() else []
    return format_result(result, schedule)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One saved run, shared by its scenario test and the doctored-history tests."""
    workdir = tmp_path_factory.mktemp("baseline")
    name, seed = BASELINE
    run_scenario(name, replicas=3, seed=seed, duration=DURATION_S, workdir=workdir)
    return workdir


def _run_cli(name: str, seed: int, workdir: Path) -> None:
    command = [sys.executable, "-m", "chaos", "run", name, "--replicas", "3"]
    command += ["--seed", str(seed), "--duration", str(DURATION_S), "--workdir", str(workdir)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    report = _report(workdir)
    assert done.returncode == (0 if report["ok"] else 1), done.stderr[-2000:]
    assert f"histories: {workdir}/histories" in done.stdout
    assert "time to converge after heal:" in done.stdout
    assert done.stdout.rstrip().endswith("verdict: PASS" if report["ok"] else "verdict: FAIL")


@pytest.mark.parametrize(("name", "seed"), RUNS, ids=[f"{n}-{s}" for n, s in RUNS])
def test_scenario_passes_every_check(
    name: str, seed: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if (name, seed) == BASELINE:
        workdir = request.getfixturevalue("baseline")
    elif (name, seed) == CLI_RUN:
        workdir = tmp_path / "run"
        _run_cli(name, seed, workdir)
    else:
        workdir = tmp_path / "run"
        run_scenario(name, replicas=3, seed=seed, duration=DURATION_S, workdir=workdir)
    report = _report(workdir)
    assert report["ok"], _explain(report)
    checks = {v["check"].split()[0] for v in report["verdicts"]}
    assert checks >= ALWAYS
    assert report["faults"] >= 2, "the scenario injected (almost) nothing"
    assert report["writes"]["attempted"] >= 100 and report["writes"]["acked"] >= 50
    assert report["converge_s"] is not None and report["converge_s"] <= CONVERGE_BOUND_S
    schedule = json.loads((workdir / "schedule.json").read_text())
    assert schedule[-1]["action"] == "healed"  # every run ends healed


# -- the checkers bite: doctored copies of a real run ---------------------------------------


def _doctor(baseline: Path, tmp_path: Path, change: Callable[[str, list[Event]], None]) -> Path:
    """Copy the saved run and let ``change(node, events)`` edit each node's history."""
    copy = tmp_path / "doctored"
    shutil.copytree(baseline, copy)
    for path in sorted((copy / "histories").glob("*.jsonl")):
        events = read_history(path)
        change(path.stem, events)
        write_history(path, events)
    return copy


def _final_reads(events: list[Event]) -> list[dict[str, Any]]:
    return [e.read for e in events if e.type == "read" and e.read and e.read["phase"] == "final"]


def _failed(workdir: Path) -> list[str]:
    verdicts, _stats = check_run(workdir)
    return [v.check for v in verdicts if not v.ok]


def _acked_value(baseline: Path, field: str) -> str:
    events: list[Event] = []
    for path in sorted((baseline / "histories").glob("r*.jsonl")):
        events.extend(read_history(path))
    ops, _reads = fold(events)
    return next(
        str(op.invoke.value)
        for op in ops
        if op.invoke.field == field and op.outcome == "acked" and op.invoke.f in ("append", "add")
    )


def test_the_baseline_run_passes_the_offline_checkers(baseline: Path) -> None:
    assert _failed(baseline) == []


def test_a_lost_acknowledged_append_is_caught(baseline: Path, tmp_path: Path) -> None:
    lost = _acked_value(baseline, "memory")

    def drop(_node: str, events: list[Event]) -> None:
        for read in _final_reads(events):
            read["values"]["memory"].remove(lost)

    assert "C4 log memory" in _failed(_doctor(baseline, tmp_path, drop))


def test_a_diverged_replica_is_caught(baseline: Path, tmp_path: Path) -> None:
    def diverge(node: str, events: list[Event]) -> None:
        if node == "r2":
            for read in _final_reads(events):
                read["values"]["karma"] += 1
                read["digest"] = "0" * 64

    assert "C1 convergence" in _failed(_doctor(baseline, tmp_path, diverge))


def test_a_double_counted_increment_is_caught(baseline: Path, tmp_path: Path) -> None:
    def inflate(_node: str, events: list[Event]) -> None:
        attempted = sum(
            int(e.value)
            for e in events
            if e.type == "invoke" and e.f == "inc" and e.field == "hits"
        )
        for read in _final_reads(events):
            read["values"]["hits"] += attempted + 1000  # more than anyone ever attempted

    assert "C4 counter hits" in _failed(_doctor(baseline, tmp_path, inflate))


def test_a_lost_add_breaks_add_wins(baseline: Path, tmp_path: Path) -> None:
    def forget(_node: str, events: list[Event]) -> None:
        for read in _final_reads(events):
            read["values"]["members"] = []

    assert "C4 orset members" in _failed(_doctor(baseline, tmp_path, forget))


def test_a_register_holding_an_older_write_is_caught(baseline: Path, tmp_path: Path) -> None:
    def regress(_node: str, events: list[Event]) -> None:
        for read in _final_reads(events):
            if "stamps" not in read:  # the relay's document carries no stamps
                continue
            stamp = read["stamps"]["flag"]
            read["stamps"]["flag"] = [stamp[0] - 3_600_000, 0, stamp[2]]

    assert "C4 lww flag" in _failed(_doctor(baseline, tmp_path, regress))


def test_a_reused_sequence_number_is_caught(baseline: Path, tmp_path: Path) -> None:
    def reuse(node: str, events: list[Event]) -> None:
        if node == "r2":
            ack = next(e for e in events if e.type == "acked")
            events.append(Event("acked", "r2", seq=ack.seq, local_op=10**6, value=ack.value))

    assert "C5 acks" in _failed(_doctor(baseline, tmp_path, reuse))


def test_state_going_back_in_time_is_caught(baseline: Path, tmp_path: Path) -> None:
    def rewind(node: str, events: list[Event]) -> None:
        if node == "monitor":
            last = next(e for e in reversed(events) if e.read and e.read["applied_seq"] > 5)
            back = Event("read", last.process, read=dict(last.read or {}), t=last.t + 0.001)
            assert back.read is not None
            back.read["applied_seq"] = 1
            events.append(back)

    assert "C6 monotonic" in _failed(_doctor(baseline, tmp_path, rewind))


def test_a_relay_view_that_hides_a_lagging_replica_is_caught(
    baseline: Path, tmp_path: Path
) -> None:
    def lie(node: str, events: list[Event]) -> None:
        if node == "relay-views":
            for event in events:
                assert isinstance(event.value, dict)
                if event.value["label"] == "final":
                    event.value["view"]["replicas"][0]["digest"] = "f" * 64

    assert (baseline / "histories" / "relay-views.jsonl").exists()
    assert "C10 detection" in _failed(_doctor(baseline, tmp_path, lie))


def test_an_unhandled_exception_in_a_log_is_caught(baseline: Path, tmp_path: Path) -> None:
    copy = _doctor(baseline, tmp_path, lambda _node, _events: None)
    with (copy / "logs" / "r1.log").open("a") as log:
        log.write("Traceback (most recent call last):\n  boom\n")
    assert "C12 hygiene" in _failed(copy)


def test_check_command_replays_the_verdict(baseline: Path, tmp_path: Path) -> None:
    def drop(_node: str, events: list[Event]) -> None:
        for read in _final_reads(events):
            read["values"]["memory"] = read["values"]["memory"][1:]

    doctored = _doctor(baseline, tmp_path, drop)
    for rundir, status in ((baseline, 0), (doctored, 1)):
        done = subprocess.run(
            [sys.executable, "-m", "chaos", "check", str(rundir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == status, done.stdout[-2000:]
