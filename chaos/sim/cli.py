"""``crdtstate-chaos simulate``: run the deterministic simulation over many seeds.

Prints progress while it runs, then a summary (seeds per minute, failures); each failing
seed comes with the command that replays it exactly. ``--trace`` prints a seed's whole trace
(what a replay is for); ``--nightly`` is the long run. ``--plant`` switches on a deliberately
broken variant (:mod:`chaos.sim.planted`), to check the simulation still finds bugs.

Owns the subcommand's arguments and output. Imports the runner.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Final, TextIO

from chaos.sim.planted import PLANTED

if TYPE_CHECKING:
    from chaos.sim.runner import RunSummary
    from chaos.sim.world import SeedResult, SimConfig

__all__ = ["add_simulate_command", "run_plan", "simulate"]

NIGHTLY_SEEDS: Final = 20_000
NIGHTLY_STEPS: Final = 500
NIGHTLY_REPLICAS: Final = 4
_PROGRESS_EVERY_S: Final = 10.0
_FAILURE_LINES: Final = 12
_TRACE_TAIL_LINES: Final = 25
EXTRA_FAULT_NAMES: Final = ("disk_full",)
"""Mirrors ``chaos.sim.world.EXTRA_FAULTS`` (kept here so ``--help`` imports no relay)."""


def add_simulate_command(subparsers: Any) -> None:
    """Register ``simulate`` on the ``crdtstate-chaos`` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="run the deterministic simulation over many seeds",
        description=(
            "Run seeded worlds of replicas, a relay and a faulty network in one process, "
            "each with random writes and faults, then heal and check convergence, "
            "acknowledged writes and type semantics. A failing seed prints how to replay it."
        ),
    )
    parser.add_argument("--seeds", type=int, default=None, help="seeds to run (default 1000)")
    parser.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--replicas", type=int, default=None, help="replicas (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="steps per seed (default 200)")
    parser.add_argument(
        "--jobs", type=int, default=None, help="worker processes (default: one per CPU)"
    )
    parser.add_argument(
        "--nightly",
        action="store_true",
        help=(
            f"the long run: {NIGHTLY_SEEDS} seeds of {NIGHTLY_STEPS} steps with "
            f"{NIGHTLY_REPLICAS} replicas (explicit --seeds/--steps/--replicas win)"
        ),
    )
    parser.add_argument(
        "--max-failures",
        type=int,
        default=None,
        metavar="N",
        help="stop after N failing seeds (default: run every seed)",
    )
    parser.add_argument(
        "--trace", action="store_true", help="print every seed's full trace (for replays)"
    )
    parser.add_argument(
        "--no-invariants",
        dest="invariants",
        action="store_false",
        help="check only at the end of each seed, not the run-time invariants",
    )
    parser.add_argument(
        "--fault",
        dest="faults",
        action="append",
        choices=sorted(EXTRA_FAULT_NAMES),
        default=[],
        help="add a fault kind that is off by default (repeatable); see docs/simulation.md",
    )
    parser.add_argument(
        "--plant",
        choices=sorted(PLANTED),
        default=None,
        help="testing the simulation itself: run with this deliberately planted bug",
    )
    parser.set_defaults(handler=_handle)


def run_plan(args: argparse.Namespace) -> tuple[int, SimConfig]:
    """How many seeds to run, and with what: ``--nightly`` supplies what is not given.

    Raises:
        ValueError: counts out of range.
    """
    # Imported here: the world pulls in the relay and aiohttp, which `--help` does not need.
    from chaos.sim.world import SimConfig

    seeds = args.seeds if args.seeds is not None else (NIGHTLY_SEEDS if args.nightly else 1000)
    steps = args.steps if args.steps is not None else (NIGHTLY_STEPS if args.nightly else 200)
    replicas = args.replicas
    if replicas is None:
        replicas = NIGHTLY_REPLICAS if args.nightly else 3
    if seeds < 1 or steps < 0 or replicas < 1:
        raise ValueError("--seeds and --replicas must be >= 1, --steps >= 0")
    config = SimConfig(
        replicas=replicas,
        steps=steps,
        plant=args.plant,
        invariants=args.invariants,
        keep_trace=args.trace,
        faults=tuple(dict.fromkeys(args.faults)),
    )
    return seeds, config


def _handle(args: argparse.Namespace) -> int:
    from chaos.sim.runner import default_jobs

    try:
        seeds, config = run_plan(args)
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    jobs = args.jobs if args.jobs is not None else default_jobs()
    try:
        return simulate(args.start, seeds, config, jobs=jobs, max_failures=args.max_failures)
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as other CLI tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def simulate(
    start: int,
    seeds: int,
    config: SimConfig,
    *,
    jobs: int,
    max_failures: int | None = None,
    out: TextIO | None = None,
) -> int:
    """Run the seeds, reporting to ``out`` (default stdout); the exit status (1: failures)."""
    from chaos.sim.runner import run_seeds

    stream = out or sys.stdout
    jobs = max(1, min(jobs, seeds))
    plant = f", planted bug {config.plant}" if config.plant else ""
    print(
        f"simulating seeds {start}..{start + seeds - 1}: {config.replicas} replicas, "
        f"{config.steps} steps, {jobs} worker(s){plant}",
        file=stream,
        flush=True,
    )
    last = time.perf_counter()

    def report(result: SeedResult, summary: RunSummary) -> None:
        nonlocal last
        if config.keep_trace:
            _print_trace(result, stream)
        if not result.ok:
            _print_failure(result, config, stream)
        now = time.perf_counter()
        if now - last >= _PROGRESS_EVERY_S and summary.ran < seeds:
            last = now
            print(
                f"  {summary.ran}/{seeds} seeds, {summary.seeds_per_minute:.0f} seeds/min, "
                f"{len(summary.failures)} failing",
                file=stream,
                flush=True,
            )

    summary = run_seeds(start, seeds, config, jobs=jobs, stop_after=max_failures, on_result=report)
    _print_summary(summary, stream)
    return 1 if summary.failures else 0


def _print_trace(result: SeedResult, stream: TextIO) -> None:
    print(f"--- trace of seed {result.seed}", file=stream)
    for line in result.trace_tail:
        print(line, file=stream)
    print(f"--- seed {result.seed}: trace digest {result.digest}", file=stream, flush=True)


def _print_failure(result: SeedResult, config: SimConfig, stream: TextIO) -> None:
    from chaos.sim.runner import replay_command

    print(f"FAIL seed {result.seed} (trace digest {result.digest})", file=stream)
    lines = "\n".join(result.failures).splitlines()
    for line in lines[:_FAILURE_LINES]:
        print(f"    {line}", file=stream)
    if len(lines) > _FAILURE_LINES:
        print(f"    ... {len(lines) - _FAILURE_LINES} more lines", file=stream)
    if not config.keep_trace and result.trace_tail:
        print("  last trace lines:", file=stream)
        for line in result.trace_tail[-_TRACE_TAIL_LINES:]:
            print(f"    {line}", file=stream)
    print(f"  replay: {replay_command(result.seed, config)}", file=stream, flush=True)


def _print_summary(summary: RunSummary, stream: TextIO) -> None:
    from chaos.sim.runner import replay_command

    config = summary.config
    print(
        f"{summary.ran} seeds in {summary.seconds:.1f} s ({summary.seeds_per_minute:.0f} "
        f"seeds/min), {config.replicas} replicas x {config.steps} steps: "
        f"{len(summary.failures)} failing",
        file=stream,
    )
    if summary.failures:
        print(
            f"first failing seed: {summary.failures[0].seed} (after {summary.first_failure} seeds)",
            file=stream,
        )
        for result in summary.failures:
            print(f"  replay: {replay_command(result.seed, config)}", file=stream)
    stream.flush()
