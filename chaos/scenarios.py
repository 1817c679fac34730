"""Named chaos scenarios: fault schedules composed from :class:`~chaos.nemesis.Nemesis` verbs.

A scenario runs while every replica writes, for about ``duration`` seconds, and may leave
damage behind: the runner always calls :meth:`Nemesis.heal_all` afterwards. Every choice
(targets, durations, magnitudes) comes from the run's seeded ``rng``, so a seed replays the
same schedule (timing on real processes varies; the schedule does not). Every loop is bounded
by the deadline and by a step count.

Each scenario lists the faults (F ids of specs/chaos-checks.md) it injects.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from chaos.nemesis import Direction, Nemesis

MAX_STEPS = 200
MIN_STEP_S = 0.5

ScenarioFn = Callable[[Nemesis, random.Random, float], None]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named schedule and the faults it injects."""

    name: str
    run: ScenarioFn
    faults: tuple[str, ...]
    summary: str


class Timeline:
    """The scenario's time budget: bounded steps until the deadline.

    Each scenario leaves its last fault in place when time runs out, so the runner's final
    heal is a real heal and the time to converge measured from it means something.
    """

    def __init__(self, duration: float) -> None:
        self.deadline = time.monotonic() + duration

    def left(self) -> float:
        """Seconds until the deadline (0 when past it)."""
        return max(0.0, self.deadline - time.monotonic())

    def over(self) -> bool:
        """Whether the deadline has passed."""
        return self.left() <= 0.0

    def steps(self) -> Iterator[int]:
        """Step numbers while a step still fits before the deadline, at most
        :data:`MAX_STEPS`."""
        for index in range(MAX_STEPS):
            if self.left() < MIN_STEP_S:
                return
            yield index


def partition_heal(nemesis: Nemesis, rng: random.Random, duration: float) -> None:
    """Cut one / a minority / a majority / all spokes (drop, blackhole, or one direction),
    hold, heal, repeat."""
    timeline = Timeline(duration)
    hows: list[tuple[str, Direction]] = [
        ("cut", "both"),
        ("blackhole", "both"),
        ("blackhole", "to-relay"),
        ("blackhole", "from-relay"),
    ]
    for index in timeline.steps():
        nemesis.sleep(min(timeline.left(), rng.uniform(0.4, 1.2)))
        size = rng.choice(["one", "minority", "majority", "all"])
        how, direction = hows[index] if index < len(hows) else rng.choice(hows)
        targets = nemesis.group(size)
        nemesis.partition(targets, how, direction)
        nemesis.sleep(min(timeline.left(), rng.uniform(1.0, 2.5)))
        if how == "cut":
            if rng.random() < 0.5:
                nemesis.compact()  # the cut side comes back behind the snapshot point
            nemesis.probe("cut", targets)
        if timeline.over():
            return
        nemesis.heal(targets)


def flapping_links(nemesis: Nemesis, rng: random.Random, duration: float) -> None:
    """Swizzle-clog (cut spokes one by one, heal in random order), then flap single spokes
    faster than the reconnect backoff, with the odd TCP reset."""
    timeline = Timeline(duration)
    names = list(nemesis.replicas)
    rng.shuffle(names)
    for name in names:
        nemesis.sleep(rng.uniform(0.2, 0.5))
        nemesis.cut([name])
    nemesis.sleep(rng.uniform(0.3, 0.8))
    order = list(names)
    rng.shuffle(order)
    for name in order:
        nemesis.heal([name])
        nemesis.sleep(rng.uniform(0.1, 0.4))
    for _ in timeline.steps():
        target = [rng.choice(names)]
        if rng.random() < 0.2:
            nemesis.reset(target, after_ms=rng.randint(0, 200))
        else:
            nemesis.cut(target)
        nemesis.sleep(rng.uniform(0.1, 0.6))
        if timeline.over():
            return
        nemesis.heal(target)
        nemesis.sleep(rng.uniform(0.05, 0.4))


def kill_replica(nemesis: Nemesis, rng: random.Random, duration: float) -> None:
    """kill -9 a replica mid-writes, keep it down a moment, restart it from its store;
    sometimes while its spoke is cut, so it restarts offline with a full outbox."""
    timeline = Timeline(duration)
    for _ in timeline.steps():
        name = rng.choice(nemesis.replicas)
        nemesis.sleep(min(timeline.left(), rng.uniform(0.3, 1.5)))
        cut = rng.random() < 0.3
        if cut:
            nemesis.cut([name])
            nemesis.sleep(rng.uniform(0.3, 1.0))
        nemesis.kill_replica(name)
        nemesis.sleep(min(timeline.left(), rng.uniform(0.2, 1.2)))
        if timeline.over():
            return
        nemesis.restart_replica(name)
        if cut:
            nemesis.sleep(rng.uniform(0.3, 1.0))
            nemesis.heal([name])


def kill_relay(nemesis: Nemesis, rng: random.Random, duration: float) -> None:
    """kill -9 the relay while every replica writes; restart it on the same data dir."""
    timeline = Timeline(duration)
    for _ in timeline.steps():
        nemesis.sleep(min(timeline.left(), rng.uniform(0.8, 2.0)))
        nemesis.kill_relay()
        nemesis.sleep(min(timeline.left(), rng.uniform(0.3, 1.5)))
        if timeline.over():
            return
        nemesis.restart_relay()


def clock_skew(nemesis: Nemesis, rng: random.Random, duration: float) -> None:
    """Skew replicas' HLC wall clocks forward and back (seconds to minutes, and a strobe),
    with partitions so that both sides of a cut write the same registers concurrently."""
    timeline = Timeline(duration)
    names = nemesis.replicas
    for index in timeline.steps():
        name = rng.choice(names)
        if index % 3 == 2:  # strobe: jump back and forth quickly
            for _ in range(rng.randint(3, 6)):
                nemesis.skew(name, rng.choice([-1, 1]) * rng.randint(1_000, 60_000))
                nemesis.sleep(rng.uniform(0.05, 0.2))
        else:
            nemesis.skew(name, rng.choice([-1, 1]) * rng.randint(500, 180_000))
        side = nemesis.group(rng.choice(["one", "minority", "majority"]))
        nemesis.cut(side)
        nemesis.sleep(min(timeline.left(), rng.uniform(0.8, 1.8)))
        nemesis.probe("cut", side)
        if timeline.over():
            return
        nemesis.heal(side)
        if rng.random() < 0.4:
            nemesis.skew(name, 0)
        nemesis.sleep(rng.uniform(0.3, 0.8))


def slow_network(nemesis: Nemesis, rng: random.Random, duration: float) -> None:
    """Latency with jitter (symmetric and one-way), thin pipes, stalls that release a burst,
    tiny TCP segments and slow closes."""
    timeline = Timeline(duration)
    actions = ["latency", "one-way", "bandwidth", "stall", "slicer", "slow_close"]
    for index in timeline.steps():
        action = actions[index] if index < len(actions) else rng.choice(actions)
        targets = nemesis.group(rng.choice(["one", "majority", "all"]))
        if action == "latency":
            nemesis.latency(targets, rng.randint(50, 400), rng.randint(10, 150))
        elif action == "one-way":
            direction: Direction = rng.choice(["to-relay", "from-relay"])
            nemesis.latency(targets, rng.randint(200, 800), rng.randint(0, 200), direction)
        elif action == "bandwidth":
            nemesis.bandwidth(targets, rng.randint(5, 50))
        elif action == "stall":
            nemesis.stall(targets, rng.choice(["both", "to-relay", "from-relay"]))
        elif action == "slicer":
            nemesis.slicer(targets, rng.randint(1, 64))
        else:
            nemesis.slow_close(targets, rng.randint(100, 1000))
            nemesis.reset(targets[:1], after_ms=rng.randint(0, 100))
        nemesis.sleep(min(timeline.left(), rng.uniform(0.8, 2.0)))
        if timeline.over():
            return
        nemesis.heal(targets)
        nemesis.sleep(rng.uniform(0.2, 0.6))


def relay_loss(nemesis: Nemesis, rng: random.Random, duration: float) -> None:
    """The relay loses its whole store and restarts empty while replicas keep their docs
    (some of them cut off at that moment, so they come back to a relay that never saw them):
    the Yjs "re-created server doc" failure. Nothing may be duplicated or lost."""
    timeline = Timeline(duration)
    for _ in timeline.steps():
        nemesis.sleep(min(timeline.left(), rng.uniform(1.0, 2.0)))
        side = nemesis.group(rng.choice(["one", "minority", "majority"]))
        nemesis.cut(side)
        nemesis.sleep(min(timeline.left(), rng.uniform(0.3, 1.0)))
        nemesis.wipe_relay()
        nemesis.sleep(min(timeline.left(), rng.uniform(0.5, 1.5)))
        if timeline.over():
            return
        nemesis.heal(side)


def mixed(nemesis: Nemesis, rng: random.Random, duration: float) -> None:
    """One to three faults of different families at once, drawn from every verb:
    partitions, blackholes, truncation, latency, kills of replicas and the relay, SIGSTOP,
    clock skew, hostile input from a rogue client."""
    timeline = Timeline(duration)
    families = ["net", "slow", "truncate", "kill", "relay", "pause", "skew", "hostile"]
    for _ in timeline.steps():
        chosen = rng.sample(families, rng.randint(1, 3))
        spokes: list[str] = []
        undo: list[Callable[[], None]] = []
        for family in chosen:
            name = rng.choice(nemesis.replicas)
            if family == "net":
                targets = nemesis.group(rng.choice(["one", "minority", "majority", "all"]))
                nemesis.partition(
                    targets,
                    rng.choice(["cut", "blackhole"]),
                    rng.choice(["both", "both", "to-relay", "from-relay"]),
                )
                spokes += targets
            elif family == "slow":
                targets = nemesis.group("majority")
                nemesis.latency(targets, rng.randint(50, 300), rng.randint(0, 100))
                spokes += targets
            elif family == "truncate":
                nemesis.truncate([name], rng.randint(1, 4096), rng.choice(["both", "to-relay"]))
                spokes.append(name)
            elif family == "kill" and name not in nemesis.killed and name not in nemesis.paused:
                nemesis.kill_replica(name)
                undo.append(functools.partial(nemesis.restart_replica, name))
            elif family == "relay" and not nemesis.relay_down:
                nemesis.kill_relay()
                undo.append(nemesis.restart_relay)
            elif family == "pause" and name not in nemesis.killed and name not in nemesis.paused:
                nemesis.pause(name)
                undo.append(functools.partial(nemesis.resume, name))
            elif family == "skew":
                nemesis.skew(name, rng.choice([-1, 1]) * rng.randint(1_000, 120_000))
            elif family == "hostile":
                nemesis.hostile()
        nemesis.sleep(min(timeline.left(), rng.uniform(0.8, 2.5)))
        if timeline.over():
            return
        for action in undo:
            action()
        nemesis.heal(sorted(set(spokes)))
        nemesis.sleep(min(timeline.left(), rng.uniform(0.3, 1.0)))


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "partition-heal",
            partition_heal,
            ("F1", "F2", "F3", "F11", "F13", "F21"),
            "cut / blackhole / one-way partitions of one, a minority, a majority or all spokes;"
            " relay compaction while a side is cut",
        ),
        Scenario(
            "flapping-links",
            flapping_links,
            ("F1", "F9", "F12"),
            "swizzle-clog, then cut/heal cycles shorter than the reconnect backoff, TCP resets",
        ),
        Scenario(
            "kill-replica",
            kill_replica,
            ("F14", "F1"),
            "kill -9 of replicas mid-writes (sometimes while cut off), restart from the store",
        ),
        Scenario(
            "kill-relay",
            kill_relay,
            ("F15", "F11"),
            "kill -9 of the relay mid-writes, restart on the same data directory",
        ),
        Scenario(
            "clock-skew",
            clock_skew,
            ("F18", "F1", "F13"),
            "HLC wall-clock offsets forward/back and strobing, with concurrent partitions",
        ),
        Scenario(
            "slow-network",
            slow_network,
            ("F4", "F5", "F6", "F7", "F9", "F10"),
            "latency and jitter (also one-way), thin pipes, stalls, slicing, slow closes",
        ),
        Scenario(
            "relay-loss",
            relay_loss,
            ("F17", "F1", "F13"),
            "the relay loses its store and restarts empty while some replicas are cut off",
        ),
        Scenario(
            "mixed",
            mixed,
            ("F1", "F2", "F3", "F5", "F8", "F11", "F13", "F14", "F15", "F16", "F18", "F22"),
            "1-3 composed faults of different families at a time, from every verb",
        ),
    )
}
