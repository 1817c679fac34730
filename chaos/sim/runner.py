"""Running many seeds: in parallel worker processes, with progress and a summary.

Seeds are independent and each is deterministic, so they spread over worker processes
without changing any result; results come back in seed order (``imap``), so "the first
failing seed" means the same thing however many workers ran. Workers are spawned, not
forked: a fork would copy whatever threads and event loops the parent had (pytest, for
one), and spawned workers also get a different ``PYTHONHASHSEED`` each, which the traces
must not (and do not) depend on.

Owns the multi-seed loop and the report. Imports the world.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from chaos.sim.world import SeedResult, SimConfig, run_seed

__all__ = ["RunSummary", "default_jobs", "replay_command", "run_seeds"]

_CHUNK_SEEDS: Final = 4


@dataclass(slots=True)
class RunSummary:
    """The outcome of a run of many seeds."""

    config: SimConfig
    start: int
    requested: int
    ran: int = 0
    failures: list[SeedResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def seeds_per_minute(self) -> float:
        """Seeds finished per minute of wall-clock time."""
        return 60.0 * self.ran / self.seconds if self.seconds > 0 else 0.0

    @property
    def first_failure(self) -> int | None:
        """Seeds run up to and including the first failing one (1 = the first seed), or None."""
        if not self.failures:
            return None
        return self.failures[0].seed - self.start + 1


def default_jobs() -> int:
    """One worker per CPU this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def replay_command(seed: int, config: SimConfig) -> str:
    """The command that runs ``seed`` again, exactly, and prints its trace."""
    parts = [
        "crdtstate-chaos simulate",
        f"--seeds 1 --start {seed}",
        f"--replicas {config.replicas} --steps {config.steps}",
    ]
    if config.plant is not None:
        parts.append(f"--plant {config.plant}")
    if not config.invariants:
        parts.append("--no-invariants")
    parts.extend(f"--fault {name}" for name in config.faults)
    parts.append("--trace")
    return " ".join(parts)


def _run_one(job: tuple[int, SimConfig]) -> SeedResult:
    seed, config = job
    result = run_seed(seed, config)
    if result.ok and not config.keep_trace:
        result.trace_tail = []  # nothing to show: do not ship it back
    return result


def _results(start: int, count: int, config: SimConfig, jobs: int) -> Iterator[SeedResult]:
    seeds = ((seed, config) for seed in range(start, start + count))
    if jobs <= 1 or count <= 1:
        for job in seeds:
            yield _run_one(job)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(jobs, count)) as pool:
        yield from pool.imap(_run_one, seeds, chunksize=_CHUNK_SEEDS)


def run_seeds(
    start: int,
    count: int,
    config: SimConfig,
    *,
    jobs: int = 1,
    stop_after: int | None = None,
    on_result: Callable[[SeedResult, RunSummary], None] | None = None,
) -> RunSummary:
    """Run seeds ``start .. start+count-1``.

    Args:
        start: the first seed.
        count: how many seeds.
        config: what each seed runs.
        jobs: worker processes (1: in this process).
        stop_after: stop once this many seeds failed (None: run them all).
        on_result: called after each seed, in seed order (progress reports).
    """
    summary = RunSummary(config, start, count)
    started = time.perf_counter()
    for result in _results(start, count, config, jobs):
        summary.ran += 1
        if not result.ok:
            summary.failures.append(result)
        summary.seconds = time.perf_counter() - started
        if on_result is not None:
            on_result(result, summary)
        if stop_after is not None and len(summary.failures) >= stop_after:
            break
    summary.seconds = time.perf_counter() - started
    return summary
