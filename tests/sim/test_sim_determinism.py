"""Same seed, same trace: within one process, and across processes with other hash seeds.

Replaying a failing seed is only worth something if the replay is the same run. The trace
digest covers every decision and delivery of a seed, so equal digests mean equal runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from chaos.sim import SimConfig, run_seed

SEEDS = (0, 7, 236, 488)
"""A few seeds with crashes, a relay wipe and storage failures among their faults."""


def test_a_seed_gives_the_same_trace_twice() -> None:
    for seed in SEEDS:
        first = run_seed(seed, SimConfig())
        second = run_seed(seed, SimConfig())
        assert first.ok, first.failures
        assert first.digest == second.digest, f"seed {seed} is not deterministic"
        assert first.stats == second.stats


def test_different_seeds_give_different_traces() -> None:
    digests = {run_seed(seed, SimConfig(steps=50)).digest for seed in range(8)}
    assert len(digests) == 8


def test_the_trace_does_not_depend_on_the_process() -> None:
    """Worker processes (and replays) get other hash seeds and memory layouts."""
    expected = {seed: run_seed(seed, SimConfig()).digest for seed in SEEDS}
    code = (
        "import json, sys\n"
        "from chaos.sim import SimConfig, run_seed\n"
        f"print(json.dumps({{s: run_seed(s, SimConfig()).digest for s in {SEEDS!r}}}))\n"
    )
    for hash_seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        got = {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}
        assert got == expected, f"PYTHONHASHSEED={hash_seed} changed a trace"


def test_a_kept_trace_matches_its_digest_and_names_the_profile() -> None:
    result = run_seed(3, SimConfig(keep_trace=True, steps=60))
    assert result.trace_tail[0].startswith("0.000000 seed 3 profile write,")
    assert len(result.trace_tail) > 100
    assert result.digest == run_seed(3, SimConfig(steps=60)).digest
