"""A failing seed prints a replay command, and the replay is the same run.

The replay command is what a developer copies from a CI log: it must parse, run that one
seed with the same settings, print its whole trace, and land on the same trace digest and
the same failure.
"""

from __future__ import annotations

import re
import shlex

import pytest

from chaos.__main__ import main
from chaos.sim import SimConfig, run_seed
from chaos.sim.runner import replay_command

_FAIL = re.compile(r"^FAIL seed (\d+) \(trace digest ([0-9a-f]+)\)$", re.MULTILINE)
_REPLAY = re.compile(r"^  replay: (crdtstate-chaos simulate .*)$", re.MULTILINE)


def test_a_failing_seed_replays_exactly(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "simulate",
            "--seeds",
            "5",
            "--jobs",
            "1",
            "--plant",
            "counter-shared-slot",
            "--max-failures",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert status == 1
    failed = _FAIL.search(out)
    replay = _REPLAY.search(out)
    assert failed is not None and replay is not None, out
    seed, digest = int(failed.group(1)), failed.group(2)
    argv = shlex.split(replay.group(1))[1:]
    assert argv[:5] == ["simulate", "--seeds", "1", "--start", str(seed)]
    assert "--plant" in argv and "--trace" in argv

    assert main(argv) == 1
    replayed = capsys.readouterr().out
    assert f"--- seed {seed}: trace digest {digest}" in replayed
    assert f"FAIL seed {seed} (trace digest {digest})" in replayed
    assert "C4 counter" in replayed  # the same failure, not just the same trace
    assert replayed.count("\n") > 200  # the whole trace, not a tail


def test_replay_command_carries_every_setting() -> None:
    config = SimConfig(replicas=4, steps=70, plant="orset-remove-wins", invariants=False)
    command = replay_command(12, config)
    assert command == (
        "crdtstate-chaos simulate --seeds 1 --start 12 --replicas 4 --steps 70 "
        "--plant orset-remove-wins --no-invariants --trace"
    )


def test_a_passing_run_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--seeds", "3", "--start", "40", "--steps", "40", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "simulating seeds 40..42: 3 replicas, 40 steps, 1 worker(s)" in out
    assert re.search(
        r"^3 seeds in [0-9.]+ s \(\d+ seeds/min\), 3 replicas x 40 steps: 0 failing$",
        out,
        re.MULTILINE,
    )


def test_a_replayed_seed_matches_the_library_call(capsys: pytest.CaptureFixture[str]) -> None:
    expected = run_seed(9, SimConfig(steps=30)).digest
    assert main(["simulate", "--seeds", "1", "--start", "9", "--steps", "30", "--trace"]) == 0
    assert f"--- seed 9: trace digest {expected}" in capsys.readouterr().out
