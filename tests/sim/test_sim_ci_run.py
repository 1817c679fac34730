"""The CI run: 1,000 seeds of 200 steps with 3 replicas, every one passing.

One test runs the whole batch through the runner, in worker processes (one per CPU), as
``crdtstate-chaos simulate --seeds 1000`` does. It prints the rate; it asserts no time
(quality bars are measured by ``bench/``, never by timed tests), only a timeout generous
enough for a loaded machine.
"""

from __future__ import annotations

import pytest

from chaos.sim import SimConfig
from chaos.sim.runner import default_jobs, replay_command, run_seeds

CI_SEEDS = 1000


@pytest.mark.timeout(900)
def test_a_thousand_seeds_pass() -> None:
    config = SimConfig(replicas=3, steps=200)
    summary = run_seeds(0, CI_SEEDS, config, jobs=default_jobs())
    print(
        f"\n{summary.ran} seeds in {summary.seconds:.1f} s "
        f"({summary.seeds_per_minute:.0f} seeds/min, {default_jobs()} workers)"
    )
    assert summary.ran == CI_SEEDS
    report = [
        f"seed {r.seed}: {r.failures[0][:600]}\n  replay: {replay_command(r.seed, config)}"
        for r in summary.failures
    ]
    assert not summary.failures, "\n".join(report)
