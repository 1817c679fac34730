"""``crdtstate-chaos run SCENARIO``: one chaos run, start to verdict; and ``check RUNDIR``.

A run follows Jepsen's phases: start a relay and N replica workers, each behind its own
proxy, all writing every CRDT kind (durability ``sync``) → the scenario's nemesis schedule
→ heal everything → stop the writers and poll until every replica agrees (the time from the
final heal to that moment is the time to converge) → a late joiner reads what the relay
holds → final reads → stop every process → checkers over the saved histories.

Why checks run after everything stopped: the checkers read only files (histories, logs), so
``crdtstate-chaos check RUNDIR`` re-checks a saved run with the same code, e.g. after a
checker fix. A failing run prints its seed, fault schedule, history directory and the
command that replays it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chaos.checkers import Verdict, check_history
from chaos.cluster import Cluster, ClusterConfig, ConvergenceTimeout
from chaos.history import Event, read_history
from chaos.nemesis import FaultRecord, Nemesis
from chaos.nodeproc import NodeError, NodeOptions
from chaos.proxyapi import ProxyMode
from chaos.relayview import relay_replicas, relay_state
from chaos.runcheckers import (
    Window,
    check_acks,
    check_availability,
    check_detection,
    check_hygiene,
    check_monotonic,
    check_recovery,
    write_stats,
)
from chaos.scenarios import SCENARIOS
from chaos.workload import KINDS

CONVERGE_BOUND_S = 30.0
"""C8 bound: reconnect backoff cap (2 s) + heartbeats + backlog, with a wide margin for
a loaded 2-core CI machine."""

RELAY_VIEW_WAIT_S = 6.0
"""How long the relay's view may take to show the post-heal heartbeats (period 1 s)."""

MONITOR_INTERVAL_S = 1.0
WARMUP_S = 0.5

Log = Callable[[str], None]


@dataclass(slots=True)
class RunResult:
    """Everything a run reports (also saved as ``report.json`` in its directory)."""

    scenario: str
    seed: int
    replicas: int
    duration: float
    workdir: str
    ok: bool = False
    converge_s: float | None = None
    observer_s: float | None = None
    wall_s: float = 0.0
    faults: int = 0
    writes: dict[str, int] = field(default_factory=dict)
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def replay(self) -> str:
        """The command that replays this run."""
        return (
            f"crdtstate-chaos run {self.scenario} --replicas {self.replicas} "
            f"--seed {self.seed} --duration {self.duration:g}"
        )

    @property
    def failed_checks(self) -> list[str]:
        """Names of the checks that failed."""
        return [str(v["check"]) for v in self.verdicts if not v["ok"]]


class Monitor:
    """Polls every live worker's status in the background and records it as ``read``
    events with ``phase: poll`` (C6 monotonicity needs state observed during the run)."""

    def __init__(self, cluster: Cluster, path: Path) -> None:
        self.cluster = cluster
        self.path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chaos-monitor", daemon=True)

    def start(self) -> None:
        """Start polling."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling (waits for the poll in flight)."""
        self._stop.set()
        self._thread.join(timeout=15)

    def _loop(self) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            for _ in range(100_000):
                if self._stop.wait(MONITOR_INTERVAL_S):
                    return
                for node in list(self.cluster.nodes.values()):
                    if not node.alive or node.stopped_by_signal:
                        continue
                    try:
                        status = node.status(timeout_s=2.0)
                    except (NodeError, OSError, ValueError):
                        continue
                    read = {k: status.get(k) for k in ("digest", "state_vector", "applied_seq")}
                    read |= {
                        "phase": "poll",
                        "incarnation": status.get("incarnation", 0),
                        "relay_incarnation": status.get("relay_incarnation", ""),
                    }
                    event = Event("read", node.name, read=read, t=float(status.get("t", 0.0)))
                    out.write(event.to_json() + "\n")
                    out.flush()


def frozen_windows(schedule: list[FaultRecord], end: float) -> list[Window]:
    """The spans each worker spent SIGSTOPped, from the fault schedule."""
    opened: dict[str, float] = {}
    windows: list[Window] = []
    for record in schedule:
        for target in record.targets:
            if record.action == "pause":
                opened[target] = record.t
            elif record.action in ("resume", "kill") and target in opened:
                windows.append(Window(target, opened.pop(target), record.t))
    windows += [Window(target, start, end) for target, start in opened.items()]
    return windows


def check_run(workdir: Path) -> tuple[list[Verdict], dict[str, int]]:
    """Every checker over a saved run directory (histories, schedule, logs, report)."""
    events: list[Event] = []
    for path in sorted((workdir / "histories").glob("*.jsonl")):
        events.extend(read_history(path))
    schedule_path = workdir / "schedule.json"
    schedule = [
        FaultRecord(**r)
        for r in (json.loads(schedule_path.read_text()) if schedule_path.exists() else [])
    ]
    end = max((e.t for e in events), default=0.0)
    logs = {p.name: p.read_text(errors="replace") for p in sorted((workdir / "logs").glob("*"))}
    verdicts = check_history(events, KINDS)
    verdicts += [
        check_acks(events),
        check_monotonic(events, [r.t for r in schedule if r.action == "wipe"]),
        check_availability(events, frozen_windows(schedule, end)),
        check_recovery(events),
        check_detection(events),
        check_hygiene(logs),
    ]
    stats = write_stats(events)
    return verdicts, asdict(stats)


def run_scenario(
    name: str,
    *,
    replicas: int = 3,
    seed: int = 0,
    duration: float = 10.0,
    workdir: Path | None = None,
    proxy_mode: ProxyMode | None = None,
    rate: float = 20.0,
    converge_bound_s: float = CONVERGE_BOUND_S,
    log: Log | None = None,
) -> RunResult:
    """Run scenario ``name`` and check it; never raises for a failed check (see ``ok``)."""
    scenario = SCENARIOS[name]
    say = log or (lambda _text: None)
    started = time.monotonic()
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"crdtchaos-{name}-"))
    root.mkdir(parents=True, exist_ok=True)
    result = RunResult(name, seed, replicas, duration, str(root))
    rng = random.Random(seed)
    options = NodeOptions(seed=seed, rate=rate)
    cluster = Cluster(root, ClusterConfig(replicas=replicas, node=options, proxy_mode=proxy_mode))
    nemesis = Nemesis(cluster, rng)
    liveness = Verdict("C8 liveness", True)
    try:
        with cluster:
            monitor = Monitor(cluster, root / "histories" / "monitor.jsonl")
            monitor.start()
            try:
                say(f"{name}: {replicas} replicas, seed {seed}, {duration:g} s; dir {root}")
                nemesis.sleep(WARMUP_S)
                try:
                    scenario.run(nemesis, rng, duration)
                finally:
                    nemesis.heal_all()
                healed = time.monotonic()
                cluster.pause_writes()
                result.converge_s, result.observer_s = _quiesce(
                    cluster, nemesis, healed, converge_bound_s, liveness
                )
            finally:
                monitor.stop()
                nemesis.save(root / "schedule.json")
            with contextlib.suppress(NodeError):
                cluster.final_reads()
    except Exception as exc:  # the run broke (not a check): report it as a failure
        result.error = f"{type(exc).__name__}: {exc}"
        liveness.fail(f"run aborted: {result.error}")
    nemesis.save(root / "schedule.json")
    verdicts, stats = check_run(root)
    verdicts.append(liveness)
    result.verdicts = [asdict(v) for v in verdicts]
    result.writes = stats
    result.faults = sum(1 for r in nemesis.schedule if r.action not in ("heal", "healed"))
    result.ok = result.error is None and all(v.ok for v in verdicts)
    result.wall_s = round(time.monotonic() - started, 3)
    (root / "report.json").write_text(json.dumps(asdict(result), indent=1) + "\n")
    return result


def _quiesce(
    cluster: Cluster, nemesis: Nemesis, healed: float, bound_s: float, liveness: Verdict
) -> tuple[float | None, float | None]:
    """Wait for agreement after the final heal, then for the relay's late joiner."""
    try:
        cluster.wait_converged(bound_s)
    except ConvergenceTimeout as exc:
        liveness.fail(str(exc)[:600])
        return None, None
    converge_s = round(time.monotonic() - healed, 3)
    liveness.checked = len(cluster.nodes)
    liveness.details.append(f"converged {converge_s:.2f} s after the final heal")
    try:
        _observer, observer_s = cluster.observe(bound_s)
    except ConvergenceTimeout as exc:
        liveness.fail(f"late joiner: {str(exc)[:600]}")
        return converge_s, None
    _read_relay(cluster, nemesis)
    return converge_s, round(observer_s, 3)


def _read_relay(cluster: Cluster, nemesis: Nemesis) -> None:
    """The relay's own document as a final read (C1), and its view of the replicas once it
    has their post-heal heartbeats (C10)."""
    port, namespace = cluster.relay.port, cluster.config.node.namespace
    digests = {s.get("digest") for s in cluster.statuses().values()}
    for _ in range(int(RELAY_VIEW_WAIT_S / 0.2)):
        view = relay_replicas(port, namespace)
        entries = [] if view is None else view.get("replicas", [])
        if view is None or (
            entries and all(e.get("converged") and e.get("digest") in digests for e in entries)
        ):
            break
        time.sleep(0.2)
    nemesis.probe("final")
    state = relay_state(port, namespace)
    if state is None:
        return
    read = {k: state.get(k) for k in ("values", "digest", "state_vector")}
    read |= {"applied_seq": state.get("head_seq", 0), "phase": "final", "incarnation": 0}
    event = Event("read", "relay-doc", read=read, t=round(cluster.now(), 6))
    path = cluster.workdir / "histories" / "relay-doc.jsonl"
    path.write_text(event.to_json() + "\n", encoding="utf-8")


def format_result(result: RunResult, schedule: list[dict[str, Any]] | None = None) -> str:
    """Human-readable verdict: one line per check, convergence, and replay facts on failure."""
    lines = [f"scenario {result.scenario}  seed {result.seed}  replicas {result.replicas}"]
    w = result.writes
    lines.append(
        f"writes: {w.get('attempted', 0)} attempted, {w.get('ok', 0)} ok, "
        f"{w.get('acked', 0)} acked, {w.get('unknown', 0)} unknown; faults: {result.faults}"
    )
    for verdict in result.verdicts:
        mark = "ok" if verdict["ok"] else "FAILED"
        lines.append(f"  {verdict['check']:<24} {mark:<7} ({verdict['checked']} checked)")
        if not verdict["ok"] or verdict["check"].startswith(("C7", "C9")):
            lines += [f"      {d}" for d in verdict["details"][:8]]
    converge = "n/a" if result.converge_s is None else f"{result.converge_s:.2f} s"
    lines.append(f"time to converge after heal: {converge}; run took {result.wall_s:.1f} s")
    lines.append(f"histories: {result.workdir}/histories")
    if not result.ok:
        if result.error:
            lines.append(f"run error: {result.error}")
        lines.append(f"FAILED. seed {result.seed}; replay: {result.replay}")
        lines.append(f"fault schedule ({result.workdir}/schedule.json):")
        lines += [f"  {FaultRecord(**r)}" for r in (schedule or [])[:60]]
    lines.append("verdict: " + ("PASS" if result.ok else "FAIL"))
    return "\n".join(lines)


def _run_command(args: argparse.Namespace) -> int:
    names = sorted(SCENARIOS) if args.scenario == "all" else [args.scenario]
    status = 0
    for index, name in enumerate(names):
        workdir = None
        if args.workdir is not None:
            workdir = args.workdir / name if len(names) > 1 else args.workdir
        result = run_scenario(
            name,
            replicas=args.replicas,
            seed=args.seed + index,
            duration=args.duration,
            workdir=workdir,
            proxy_mode=args.proxy,
            rate=args.rate,
            log=print,
        )
        if args.json:
            print(json.dumps(asdict(result)))
        else:
            schedule_path = Path(result.workdir) / "schedule.json"
            schedule = json.loads(schedule_path.read_text()) if schedule_path.exists() else []
            print(format_result(result, schedule), flush=True)
        status = status or (0 if result.ok else 1)
    return status


def _check_command(args: argparse.Namespace) -> int:
    verdicts, stats = check_run(args.rundir)
    for verdict in verdicts:
        print(verdict)
    print(f"writes: {stats}")
    ok = all(v.ok for v in verdicts)
    print("verdict: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


def add_run_command(subparsers: Any) -> None:
    """Register ``run`` and ``check`` with the ``crdtstate-chaos`` parser."""
    run = subparsers.add_parser(
        "run",
        help="run a chaos scenario on real processes and check it",
        description="Scenarios: "
        + "; ".join(f"{s.name} ({s.summary})" for s in SCENARIOS.values()),
    )
    run.add_argument("scenario", choices=[*sorted(SCENARIOS), "all"])
    run.add_argument("--replicas", type=int, default=3)
    run.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    run.add_argument("--duration", type=float, default=15.0, help="seconds of faults")
    run.add_argument("--rate", type=float, default=20.0, help="writes/s per replica")
    run.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir")
    run.add_argument("--proxy", choices=["thread", "process", "external"], default=None)
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    run.set_defaults(handler=_seeded(_run_command))
    check = subparsers.add_parser("check", help="re-run the checkers over a saved run dir")
    check.add_argument("rundir", type=Path)
    check.set_defaults(handler=_check_command)


def _seeded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def with_seed(args: argparse.Namespace) -> int:
        if args.seed is None:
            args.seed = random.SystemRandom().randrange(2**31)
        if args.replicas < 1 or args.duration <= 0:
            raise SystemExit("crdtstate-chaos run: --replicas >= 1 and --duration > 0")
        return handler(args)

    return with_seed
