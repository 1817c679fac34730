"""The relay measured against the servers a user would otherwise pick, in one run.

    python bench/peers.py [--clients 10,30] [--writes 2000] [--rate 500] [--paced-writes 2000]
                          [--late 3] [--repeat 1] [--servers relay,yws,hocuspocus,pycrdt]
                          [--budget-s 1200] [--quick] [--json FILE] [--profile DIR]

Starts, one at a time on 127.0.0.1, each server and drives it with the same Node load
generator (``bench/peers/loadgen.mjs``: N stock Yjs clients in one room, M small Y.Map writes
each; see that file for the phases):

* ``relay``: this relay (``python -m relay serve``), SQLite with fsync: every update durable
  before it is acknowledged or fanned out; limits raised so that the load is not throttled.
* ``yws``: the reference Node server, ``@y/websocket-server`` 0.1.1 (its own bin).
* ``hocuspocus``: ``@hocuspocus/server`` 3.4 with no extensions, driven through
  ``@hocuspocus/provider`` (its own framing) with the same edits.
* ``pycrdt``: pycrdt-websocket's ``WebsocketServer`` under uvicorn
  (``bench/peers/pycrdt_server.py``).

Prints one markdown table: burst throughput until every client converged, server CPU µs per
edit (``/proc/PID/stat``; the load generator shares the 2 cores, so this is the comparable
number), paced fan-out latency p50/p99, late-joiner catch-up, server peak RSS (VmHWM), each
with its ratio to the relay; plus the floor: the raw in-process cost of applying the same
updates (pycrdt: decode + apply + encode, as a relay does; yjs: apply).

Every process it starts is stopped by pid (SIGTERM, then SIGKILL), also on Ctrl-C; the run is
bounded by ``--budget-s`` (a server whose turn comes after the budget is reported as
skipped). ``--profile DIR`` also records the relay under py-spy (a separate run, not timed).
Node packages: ``scripts/install-node-deps.sh bench/peers``; Python: uvicorn, websockets,
pycrdt-websocket (and py-spy for ``--profile``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "bench" / "peers"
LOADGEN = PEERS / "loadgen.mjs"
START_TIMEOUT_S = 30.0

RELAY_BENCH_TOML = """
# bench/peers.py: the load must not be throttled or cut off by the relay's protective limits
# (the peers have none). Durability stays on: fsync on every commit (group commit).
log_level = "WARNING"

[limits]
conn_updates_per_s = 1000000
conn_updates_burst = 1000000
namespace_updates_per_s = 1000000
namespace_updates_burst = 1000000
queue_frames_max = 1000000
queue_bytes_max = 1073741824
"""

SERVER_LABELS = {
    "relay": "crdtstate relay",
    "yws": "@y/websocket-server",
    "hocuspocus": "@hocuspocus/server",
    "pycrdt": "pycrdt-websocket",
}


# -- processes -----------------------------------------------------------------------------


class Started:
    """Every process this run started, so that all of them are stopped, whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def add(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        """Track ``proc``."""
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
        """SIGTERM, wait, SIGKILL: by pid, only this process."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=timeout_s)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        """Stop everything still tracked."""
        for proc in list(self.procs):
            self.stop(proc)


STARTED = Started()


def _wait_line(proc: subprocess.Popen[bytes], pattern: str, what: str) -> re.Match[str]:
    """Read ``proc``'s stdout until a line matches ``pattern`` (bounded by START_TIMEOUT_S)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    os.set_blocking(proc.stdout.fileno(), False)
    buffer = ""
    while time.monotonic() < deadline:
        chunk = proc.stdout.read()
        if chunk:
            buffer += chunk.decode(errors="replace")
            match = re.search(pattern, buffer)
            if match:
                return match
        elif proc.poll() is not None:
            break
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not start: {buffer[-500:]!r}")


@dataclass
class Server:
    """A started server: its process, websocket URL for the load generator, version."""

    kind: str
    proc: subprocess.Popen[bytes]
    url: str
    version: str
    child_pid: int | None = None
    """The server itself when ``proc`` is a wrapper (py-spy) that started it."""

    @property
    def pid(self) -> int:
        """The server's pid (the process whose CPU and RSS are measured)."""
        return self.child_pid if self.child_pid is not None else self.proc.pid


def _npm_version(package: str) -> str:
    path = PEERS / "node_modules" / package / "package.json"
    return str(json.loads(path.read_text())["version"])


def _pip_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def start_server(kind: str, work: Path, wrap: list[str] | None = None) -> Server:
    """Start one server on 127.0.0.1 and wait until it listens (the relay optionally under
    a wrapper command such as ``py-spy record ... --``)."""
    log = (work / f"{kind}.log").open("ab")
    try:
        if kind == "relay":
            config = work / "relay.toml"
            config.write_text(RELAY_BENCH_TOML)
            data = work / f"relay-data-{time.monotonic_ns()}"
            args = [sys.executable, "-m", "relay", "serve", "--host", "127.0.0.1", "--port", "0"]
            args = [*(wrap or []), *args, "--data", str(data), "--config", str(config)]
            proc = STARTED.add(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, cwd=ROOT))
            port = _wait_line(proc, r"listening on \S*:(\d+)", "relay").group(1)
            child = _only_child(proc.pid) if wrap else None
            loop = _relay_event_loop(int(port))
            return Server(
                kind, proc, f"ws://127.0.0.1:{port}/yjs", f"0.1.0 (this tree, {loop})", child
            )
        if kind == "yws":
            port = _free_port()
            env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port)}
            script = PEERS / "node_modules" / "@y" / "websocket-server" / "src" / "server.js"
            proc = STARTED.add(
                subprocess.Popen(
                    ["node", str(script)], stdout=subprocess.PIPE, stderr=log, env=env, cwd=PEERS
                )
            )
            _wait_line(proc, r"running at", "@y/websocket-server")
            return Server(kind, proc, f"ws://127.0.0.1:{port}", _npm_version("@y/websocket-server"))
        if kind == "hocuspocus":
            proc = STARTED.add(
                subprocess.Popen(
                    ["node", str(PEERS / "hocuspocus-server.mjs")],
                    stdout=subprocess.PIPE,
                    stderr=log,
                    cwd=PEERS,
                )
            )
            port = _wait_line(proc, r"listening on (\d+)", "hocuspocus").group(1)
            return Server(kind, proc, f"ws://127.0.0.1:{port}", _npm_version("@hocuspocus/server"))
        if kind == "pycrdt":
            proc = STARTED.add(
                subprocess.Popen(
                    [sys.executable, str(PEERS / "pycrdt_server.py")],
                    stdout=subprocess.PIPE,
                    stderr=log,
                    cwd=ROOT,
                )
            )
            port = _wait_line(proc, r"listening on (\d+)", "pycrdt-websocket").group(1)
            version = f"{_pip_version('pycrdt-websocket')} (uvicorn {_pip_version('uvicorn')})"
            return Server(kind, proc, f"ws://127.0.0.1:{port}", version)
    finally:
        log.close()
    raise ValueError(f"unknown server {kind!r}")


def _relay_event_loop(port: int) -> str:
    """The event loop the relay reports in ``/healthz`` (uvloop or asyncio)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
        return str(json.load(response).get("event_loop", "?"))


def _only_child(pid: int) -> int:
    """The one child process of ``pid`` (the server a wrapper started)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if len(children) != 1:
        raise RuntimeError(f"expected one child of {pid}, found {children}")
    return int(children[0])


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- one measurement -------------------------------------------------------------------------


@dataclass
class Options:
    """What every load generator run does."""

    writes: int
    rate: int
    paced_writes: int
    late: int
    timeout_s: float


def run_loadgen(server: Server, clients: int, opts: Options, budget_s: float) -> dict[str, Any]:
    """One load generator run against ``server``; its JSON result (``error`` on failure)."""
    args = ["node", str(LOADGEN), "--kind", server.kind, "--url", server.url]
    args += ["--room", "bench", "--clients", str(clients), "--writes", str(opts.writes)]
    args += ["--rate", str(opts.rate), "--paced-writes", str(opts.paced_writes)]
    args += ["--late", str(opts.late), "--server-pid", str(server.pid)]
    args += ["--timeout-s", str(max(5, min(opts.timeout_s, budget_s)))]
    proc = STARTED.add(
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=PEERS)
    )
    try:
        out, err = proc.communicate(timeout=max(10.0, budget_s + 10))
    except subprocess.TimeoutExpired:
        STARTED.stop(proc)
        return {"error": "load generator exceeded the time budget"}
    STARTED.stop(proc)
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"no result; stderr: {err.decode(errors='replace')[-400:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def measure(kind: str, clients: int, opts: Options, work: Path, budget_s: float) -> dict[str, Any]:
    """Start ``kind``, drive it once, stop it."""
    server = start_server(kind, work)
    try:
        time.sleep(0.3)  # let it finish starting (imports, JIT) before CPU is counted
        result = run_loadgen(server, clients, opts, budget_s)
    finally:
        STARTED.stop(server.proc)
    result["version"] = server.version
    return result


# -- the floor -------------------------------------------------------------------------------


def pycrdt_floor(clients: int, writes: int) -> dict[str, Any]:
    """Raw in-process cost of what a relay must do per update: decode the frame, apply the
    update to the room's doc, encode the outgoing frame once (pycrdt, no I/O)."""
    sys.path.insert(0, str(ROOT))
    from pycrdt import Doc, Map

    from crdtstate.sync import wire

    writers = [Doc() for _ in range(clients)]
    per_writer: list[list[bytes]] = [[] for _ in range(clients)]
    for index, doc in enumerate(writers):
        doc.observe(lambda event, out=per_writer[index]: out.append(event.update))
    maps = [doc.get("m", type=Map) for doc in writers]
    for value in range(1, writes + 1):
        for index, m in enumerate(maps):
            m[f"c{index}"] = value
    frames = [
        wire.encode_sync_update(per_writer[i][j]) for j in range(writes) for i in range(clients)
    ]
    room: Doc[Any] = Doc()
    started = time.perf_counter()
    for frame in frames:
        decoded = wire.decode(frame)
        assert isinstance(decoded, wire.SyncUpdate)
        room.apply_update(decoded.update)
        wire.encode_sync_update(decoded.update)
    seconds = time.perf_counter() - started
    return {
        "floor": "pycrdt",
        "edits": len(frames),
        "us_per_edit": seconds / len(frames) * 1e6,
        "edits_per_s": len(frames) / seconds,
    }


def yjs_floor(clients: int, writes: int) -> dict[str, Any]:
    """Raw in-process cost of applying the same updates with yjs."""
    out = subprocess.run(
        ["node", str(LOADGEN), "--floor", "--clients", str(clients), "--writes", str(writes)],
        capture_output=True,
        timeout=120,
        cwd=PEERS,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.decode().splitlines()[-1])
    result["us_per_edit"] = result.pop("apply_us_per_edit")
    return result


# -- profile ---------------------------------------------------------------------------------


def profile_relay(clients: int, opts: Options, work: Path, out_dir: Path) -> str:
    """Run the relay under py-spy (as its child: attaching to a running relay stalled it
    here) during one burst; a summary of the hottest frames. Not part of the timed runs."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return "py-spy not installed (pip install py-spy)"
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / "relay-pyspy.txt"
    wrap = [spy, "record", "--format", "raw", "--rate", "250", "--output", str(raw), "--"]
    server = start_server("relay", work, wrap)
    try:
        time.sleep(1.0)
        burst_only = Options(opts.writes, opts.rate, 0, 0, opts.timeout_s)
        run_loadgen(server, clients, burst_only, opts.timeout_s)
    finally:
        # Stop the relay (py-spy's child, started by this run); py-spy then writes and exits.
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.proc.wait(timeout=30)
        STARTED.stop(server.proc)
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGKILL)
    if not raw.exists():
        return "py-spy wrote nothing"
    return summarize_profile(raw)


_IGNORED_STACK = re.compile(
    r"_find_and_load|EpollSelector\.select \([^)]*\)$|_worker \([^)]*thread\.py:81\)$"
)


def summarize_profile(raw: Path, top: int = 20) -> str:
    """Self and inclusive sample shares of the hottest functions in py-spy's raw output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    skipped = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        if _IGNORED_STACK.search(stack):
            skipped += count  # start-up imports, or a thread waiting for work
            continue
        total += count
        frames = [re.sub(r" \(([^)]*/)?([^/)]+)\)", r" (\2)", f) for f in stack.split(";")]
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if total == 0:
        return "no samples"
    lines = [f"{total} busy samples ({skipped} of start-up or waiting left out); self time:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    lines.append("inclusive time:")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


# -- report ----------------------------------------------------------------------------------


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each metric over repeated runs of one server."""

    def pick(get: Callable[[dict[str, Any]], Any]) -> float | None:
        values = []
        for run in runs:
            with contextlib.suppress(KeyError, TypeError):
                values.append(get(run))
        return _median(values)

    errors = sorted({str(r["error"]) for r in runs if r.get("error")})
    return {
        "version": runs[0].get("version", "?") if runs else "?",
        "edits_per_s": pick(lambda r: r["burst"]["edits_per_s"]),
        "cpu_us_burst": pick(lambda r: r["burst"]["server_cpu_us_per_edit"]),
        "cpu_us_paced": pick(lambda r: r["paced"]["server_cpu_us_per_edit"]),
        "p50_ms": pick(lambda r: r["paced"]["latency"]["p50_ms"]),
        "p99_ms": pick(lambda r: r["paced"]["latency"]["p99_ms"]),
        "late_ms": pick(lambda r: r["late"]["median_ms"]),
        "rss_mib": pick(lambda r: r["server_hwm_kib"] / 1024),
        "runs": len(runs),
        "errors": errors,
    }


COLUMNS = [
    ("edits_per_s", "burst edits/s", "{:,.0f}"),
    ("cpu_us_burst", "server CPU µs/edit (burst)", "{:,.0f}"),
    ("cpu_us_paced", "server CPU µs/edit (paced)", "{:,.0f}"),
    ("p50_ms", "paced fan-out p50 ms", "{:.2f}"),
    ("p99_ms", "paced fan-out p99 ms", "{:.2f}"),
    ("late_ms", "late joiner ms", "{:.1f}"),
    ("rss_mib", "peak RSS MiB", "{:.0f}"),
]


def _cell(value: float | None, relay: float | None, fmt: str) -> str:
    if value is None:
        return "-"
    text = fmt.format(value)
    if relay:
        text += f" (x{value / relay:.2f})"
    return text


def table(
    rows: list[tuple[int, str, dict[str, Any]]], floors: dict[int, list[dict[str, Any]]]
) -> str:
    """The markdown table: one row per (N, server), ratios against the relay's row of N."""
    header = ["N", "server", *(title for _, title, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    relay_of = {n: s for n, kind, s in rows if kind == "relay"}
    for n, kind, summary in rows:
        relay = relay_of.get(n, {})
        name = f"{SERVER_LABELS[kind]} {summary['version']}"
        if summary["errors"]:
            name += " ⚠ " + "; ".join(summary["errors"])[:120]
        cells = [
            _cell(summary[key], relay.get(key) if kind != "relay" else None, fmt)
            for key, _, fmt in COLUMNS
        ]
        lines.append("| " + " | ".join([str(n), name, *cells]) + " |")
    for n, found in floors.items():
        relay = relay_of.get(n, {})
        for floor in found:
            per_s = _cell(floor["edits_per_s"], relay.get("edits_per_s"), "{:,.0f}")
            cpu = _cell(floor["us_per_edit"], relay.get("cpu_us_burst"), "{:,.1f}")
            what = (
                "floor: pycrdt decode+apply+encode in-process"
                if floor["floor"] == "pycrdt"
                else "floor: yjs apply in-process"
            )
            lines.append(
                "| " + " | ".join([str(n), what, per_s, cpu] + ["-"] * (len(COLUMNS) - 2)) + " |"
            )
    return "\n".join(lines)


@dataclass
class Plan:
    """What to run."""

    clients: list[int]
    servers: list[str]
    repeat: int
    opts: Options
    budget_s: float
    results: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)


def run(plan: Plan, work: Path) -> tuple[list[tuple[int, str, dict[str, Any]]], dict[str, Any]]:
    """Every (N, server, repeat) measurement within the budget; rows and raw results."""
    deadline = time.monotonic() + plan.budget_s
    rows = []
    raw: dict[str, Any] = {}
    for n in plan.clients:
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in plan.servers}
        # Round-robin over the servers, not all runs of one server then the next: a noisy
        # minute on a shared machine then lands on every server alike.
        for attempt in range(plan.repeat):
            for kind in plan.servers:
                left = deadline - time.monotonic()
                if left < 5:
                    runs[kind].append({"error": "skipped: time budget spent"})
                    continue
                print(f"# N={n} {kind} run {attempt + 1}/{plan.repeat}", file=sys.stderr)
                try:
                    result = measure(kind, n, plan.opts, work, left)
                except (RuntimeError, OSError, ValueError) as exc:
                    result = {"error": str(exc)[:300]}
                runs[kind].append(result)
                if result.get("error"):
                    print(f"#   error: {result['error']}", file=sys.stderr)
        for kind in plan.servers:
            raw[f"{n}/{kind}"] = runs[kind]
            rows.append((n, kind, summarize(runs[kind])))
    return rows, raw


def main() -> None:
    """Parse options, run, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="10", help="comma-separated N values")
    parser.add_argument("--writes", type=int, default=2000, help="burst edits per client (M)")
    parser.add_argument("--rate", type=int, default=500, help="paced edits/s, all clients")
    parser.add_argument("--paced-writes", type=int, default=2000, help="paced edits in total")
    parser.add_argument("--late", type=int, default=3, help="late joiners (median reported)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per server (medians)")
    parser.add_argument("--servers", default="relay,yws,hocuspocus,pycrdt")
    parser.add_argument("--budget-s", type=float, default=1200.0, help="bound on the whole run")
    parser.add_argument("--timeout-s", type=float, default=180.0, help="bound on one phase")
    parser.add_argument("--quick", action="store_true", help="small smoke run (about 30 s)")
    parser.add_argument("--json", type=Path, help="also write raw results here")
    parser.add_argument("--profile", type=Path, help="record the relay with py-spy into DIR")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.writes, args.paced_writes, args.late, args.repeat = "4", 200, 300, 2, 1
        args.budget_s = min(args.budget_s, 120.0)
        args.timeout_s = min(args.timeout_s, 30.0)
    servers = [s for s in args.servers.split(",") if s]
    unknown = set(servers) - set(SERVER_LABELS)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; choose from {sorted(SERVER_LABELS)}")
    if not (PEERS / "node_modules" / "yjs").exists():
        parser.error("bench/peers/node_modules missing: run scripts/install-node-deps.sh")
    plan = Plan(
        clients=[int(n) for n in args.clients.split(",") if n],
        servers=servers,
        repeat=max(1, args.repeat),
        opts=Options(args.writes, args.rate, args.paced_writes, args.late, args.timeout_s),
        budget_s=args.budget_s,
    )

    def interrupted(signum: int, _frame: Any) -> None:
        STARTED.stop_all()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="crdtstate-peers-") as tmp:
            work = Path(tmp)
            rows, raw = run(plan, work)
            floors = {
                n: [pycrdt_floor(n, args.writes), yjs_floor(n, args.writes)] for n in plan.clients
            }
            profile = None
            if args.profile is not None:
                profile = profile_relay(plan.clients[0], plan.opts, work, args.profile)
    finally:
        STARTED.stop_all()
    print(table(rows, floors))
    print()
    print(
        f"N clients in one room; burst: {args.writes} edits per client, unpaced; paced: "
        f"{args.paced_writes} edits at {args.rate}/s; late joiner: median of {args.late}; "
        f"{plan.repeat} run(s) per server (medians); {time.monotonic() - started:.0f} s in all."
    )
    print(
        f"Machine: {os.cpu_count()} cores, Node {_node_version()}, Python {sys.version.split()[0]}."
    )
    if profile is not None:
        print()
        print("Relay profile (py-spy, burst):")
        print(profile)
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "raw": raw, "floors": floors}, indent=1))


def _node_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return (
            subprocess.run(["node", "--version"], capture_output=True, timeout=10)
            .stdout.decode()
            .strip()
        )
    return "?"


if __name__ == "__main__":
    main()
