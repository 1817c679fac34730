"""Each planted bug is caught within its seed budget, with and without run-time invariants.

The budgets are a few times the seeds-to-detection measured when the simulation was built
(first failing seed, counting from seed 0), so a change that makes the simulation blind to
a class of bug fails here, while ordinary changes to the schedule do not.
"""

from __future__ import annotations

import pytest

from chaos.sim import SimConfig
from chaos.sim.planted import PLANTED, planted
from chaos.sim.runner import run_seeds
from crdtstate.crdt.counter import _SlotCounter
from crdtstate.crdt.orset import ORSet
from crdtstate.replica import Replica
from crdtstate.sync.session import SyncSession

BUDGET = {
    "ack-before-durable": 10,
    "send-before-durable": 20,
    "orset-remove-wins": 10,
    "counter-shared-slot": 10,
    "session-claims-gaps": 20,
}
"""Seeds within which each bug must be caught, run-time invariants on."""

BUDGET_END_CHECKS_ONLY = {
    "ack-before-durable": 60,
    "send-before-durable": 200,
    "orset-remove-wins": 10,
    "counter-shared-slot": 10,
    "session-claims-gaps": 30,
}
"""The same with only the end-of-seed checkers."""


def test_every_planted_bug_has_budgets() -> None:
    assert set(BUDGET) == set(PLANTED) == set(BUDGET_END_CHECKS_ONLY)


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_planted_bug_is_caught(bug: str) -> None:
    summary = run_seeds(0, BUDGET[bug], SimConfig(plant=bug), jobs=1, stop_after=1)
    assert summary.failures, f"{bug} not caught in {BUDGET[bug]} seeds"
    print(f"\n{bug}: caught after {summary.first_failure} seed(s)")


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_planted_bug_is_caught_by_the_end_checks_alone(bug: str) -> None:
    config = SimConfig(plant=bug, invariants=False)
    summary = run_seeds(0, BUDGET_END_CHECKS_ONLY[bug], config, jobs=2, stop_after=1)
    assert summary.failures, f"{bug} not caught in {BUDGET_END_CHECKS_ONLY[bug]} seeds"
    print(f"\n{bug} (end checks only): caught after {summary.first_failure} seed(s)")


def test_planting_is_undone_after_the_block() -> None:
    originals = (
        _SlotCounter._bump,
        ORSet.remove,
        ORSet.add,
        ORSet._materialize,
        Replica.pending_outbox,
        SyncSession._on_seq,
    )
    for bug in PLANTED:
        with planted(bug):
            pass
    assert originals == (
        _SlotCounter._bump,
        ORSet.remove,
        ORSet.add,
        ORSet._materialize,
        Replica.pending_outbox,
        SyncSession._on_seq,
    )


def test_an_unknown_bug_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown planted bug"), planted("no-such-bug"):
        pass
