"""The opt-in ``disk_full`` fault: replicas' stores fail their commits for a while.

Seed 0 used to end with a ``StoreError`` escaping ``SyncSession.receive``; most seeds of
the fault failed (escaped errors, or updates with holes no replica could integrate).
"""

from __future__ import annotations

import pytest

from chaos.sim import SimConfig
from chaos.sim.runner import replay_command
from chaos.sim.world import run_seed

CONFIG = SimConfig(faults=("disk_full",))


@pytest.mark.parametrize("seed", range(40))
def test_disk_full_seeds_converge_without_escaped_errors(seed: int) -> None:
    result = run_seed(seed, CONFIG)
    detail = result.failures[0][:2000] if result.failures else ""
    assert result.ok, f"{detail}\n  replay: {replay_command(seed, CONFIG)}"


def test_disk_full_fault_is_drawn_and_stores_refuse_relay_updates() -> None:
    result = run_seed(0, SimConfig(faults=("disk_full",), keep_trace=True))
    assert result.ok
    trace = "\n".join(result.trace_tail)
    assert "disk full" in trace and "disk heals" in trace
    assert "store refused relay update: StoreFullError" in trace  # where it used to raise
