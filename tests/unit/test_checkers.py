"""The chaos checkers accept a correct history and catch each kind of broken one."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest

from chaos.checkers import check_history
from chaos.history import Event, read_history, write_history
from chaos.workload import KINDS, ChaosState, Workload, final_read
from crdtstate import Replica


@pytest.fixture
def run(tmp_path: Path) -> list[Event]:
    """Three replicas write in sync mode, exchange every update, and read."""
    events: list[Event] = []
    replicas = [
        Replica.open(tmp_path / f"r{i}", "chaos", ChaosState, durability="sync") for i in range(3)
    ]
    try:
        rng = random.Random(7)
        loads = [
            Workload(r, f"p{i}", rng, events.append, lambda: 0.0) for i, r in enumerate(replicas)
        ]
        for _ in range(40):
            rng.choice(loads).step()
        for a in replicas:
            for b in replicas:
                if a is not b:
                    b.apply_update(a.export_update(b.state_vector()))
        events.extend(final_read(r, f"p{i}") for i, r in enumerate(replicas))
    finally:
        for r in replicas:
            r.close()
    return events


def _failed(events: list[Event]) -> list[str]:
    return [v.check for v in check_history(events, KINDS) if not v.ok]


def test_correct_history_passes_every_check(run: list[Event]) -> None:
    verdicts = check_history(run, KINDS)
    assert [str(v) for v in verdicts if not v.ok] == []
    assert sum(v.checked for v in verdicts) >= 40


def test_history_round_trips_through_a_file(run: list[Event], tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    write_history(path, run)
    assert _failed(read_history(path)) == []


def test_divergent_final_read_fails_convergence(run: list[Event]) -> None:
    broken = copy.deepcopy(run)
    last = broken[-1]
    assert last.read is not None
    last.read["digest"] = "0" * 64
    assert "C1 convergence" in _failed(broken)


def test_equal_state_vectors_with_different_digests_is_reported_as_a_bug(
    run: list[Event],
) -> None:
    broken = copy.deepcopy(run)
    assert broken[-1].read is not None
    broken[-1].read["digest"] = "f" * 64
    verdict = next(v for v in check_history(broken, KINDS) if v.check == "C1 convergence")
    assert any("BUG" in d for d in verdict.details)


def test_lost_counter_increment_is_caught(run: list[Event]) -> None:
    broken = copy.deepcopy(run)
    for event in broken:
        if event.type == "read" and event.read is not None:
            event.read["values"]["hits"] -= 1
    assert "C4 counter hits" in _failed(broken)


def test_lost_log_append_and_duplicate_are_caught(run: list[Event]) -> None:
    broken = copy.deepcopy(run)
    for event in broken:
        if event.type == "read" and event.read is not None:
            memory = event.read["values"]["memory"]
            assert memory, "the workload appended"
            memory.append(memory[0])
    assert "C4 log memory" in _failed(broken)


def test_register_holding_a_stale_write_is_caught(run: list[Event]) -> None:
    broken = copy.deepcopy(run)
    for event in broken:
        if event.type == "read" and event.read is not None and event.read["stamps"]["flag"]:
            event.read["stamps"]["flag"][0] -= 10**9
    assert "C4 lww flag" in _failed(broken)


def test_orset_phantom_element_is_caught(run: list[Event]) -> None:
    broken = copy.deepcopy(run)
    for event in broken:
        if event.type == "read" and event.read is not None:
            event.read["values"]["members"].append("never-added")
    assert "C4 orset members" in _failed(broken)
