"""The mirror, lint and drift verbs as real processes, against real stores and sockets.

The verbs run through their modules' stand-alone entry points (``python -m
crdtstate.cli_mirror`` / ``crdtstate.cli_drift``), which build the same argparse tree the
``crdtstate`` command registers them into. The drift verb talks to a small aiohttp server
that serves the replicas view built from real replicas' heartbeats.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from crdtstate import LWWRegister, Replica, Schema
from crdtstate.drift import ReplicaEntry, ReplicasView

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
ENV.pop("CRDTSTATE_MIRRORS", None)
ENV.pop("CRDTSTATE_TOKEN", None)
TIMEOUT_S = 60

MIRRORS_TOML = """
[[mirror]]
field = "killswitch"
type = "text"
path = "emergency.txt"
values = { true = "ACTIVE", false = "INACTIVE" }

[[mirror]]
field = "killswitch"
type = "json"
path = "config.json"
key = "emergency_active"
"""


class Agent(Schema):
    killswitch = LWWRegister(bool, default=False)


def run(module: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ENV,
        timeout=TIMEOUT_S,
        check=False,
    )


def mirror_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run("crdtstate.cli_mirror", *args)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[dict[str, Path]]:
    store, legacy = tmp_path / "store", tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps({"supervisor": {"rate": 3}}))
    (legacy / "mirrors.toml").write_text(MIRRORS_TOML)
    with Replica.open(store, "agent", Agent, replica_id="executor") as replica:
        replica.state.killswitch.set(True)
    yield {"store": store, "legacy": legacy, "config": legacy / "mirrors.toml"}


def test_audit_sync_adopt_round_trip(setup: dict[str, Path]) -> None:
    store, legacy, config = setup["store"], setup["legacy"], setup["config"]
    common: list[str | Path] = ["--store", store, "--namespace", "agent"]

    audit = mirror_cli(*common, "mirror", "audit", "--mirrors", config)
    assert audit.returncode == 1, audit.stderr
    assert audit.stdout.count("MISSING") == 2 and "emergency.txt" in audit.stdout

    sync = mirror_cli("mirror", "sync", *common, "--mirrors", config)
    assert sync.returncode == 0, sync.stdout + sync.stderr
    assert "2 mirror(s) of agent in line; 2 repaired" in sync.stdout
    assert (legacy / "emergency.txt").read_text() == "ACTIVE\n"
    doc = json.loads((legacy / "config.json").read_text())
    assert doc["supervisor"] == {"rate": 3} and doc["emergency_active"] is True

    clean = mirror_cli(*common, "mirror", "audit", "--mirrors", config)
    assert clean.returncode == 0 and "all 2 mirror(s) of agent in line" in clean.stdout

    (legacy / "emergency.txt").write_text("INACTIVE\n")  # the operator's manual fix
    edited = mirror_cli(*common, "mirror", "audit", "--mirrors", config, "--json")
    assert edited.returncode == 1
    findings = json.loads(edited.stdout)["findings"]
    assert [f["kind"] for f in findings] == ["hand-edited"]
    assert "adopt" in findings[0]["hint"]

    adopt = mirror_cli(*common, "mirror", "adopt", legacy / "emergency.txt", "--mirrors", config)
    assert adopt.returncode == 0, adopt.stderr
    assert "adopted killswitch = false (was true)" in adopt.stdout
    assert json.loads((legacy / "config.json").read_text())["emergency_active"] is False
    with Replica.open(store, "agent", Agent) as replica:
        assert replica.state.killswitch.value is False
        assert replica.outbox_len() >= 2  # the adoption is a real write, queued for the relay


def test_adopt_refuses_garbage_and_writes_nothing(setup: dict[str, Path]) -> None:
    store, legacy, config = setup["store"], setup["legacy"], setup["config"]
    (legacy / "emergency.txt").write_text("MAYBE\n")

    adopt = mirror_cli(
        "--store",
        store,
        "--namespace",
        "agent",
        "mirror",
        "adopt",
        legacy / "emergency.txt",
        "--mirrors",
        config,
    )

    assert adopt.returncode == 1
    assert '"MAYBE" is not one of the mapped values' in adopt.stderr
    with Replica.open(store, "agent", Agent) as replica:
        assert replica.state.killswitch.value is True


def test_mirror_verbs_explain_usage_and_environment_errors(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    store, config = setup["store"], setup["config"]

    no_config = mirror_cli("--store", store, "--namespace", "agent", "mirror", "audit")
    assert no_config.returncode == 2 and "--mirrors FILE" in no_config.stderr

    wrong_ns = mirror_cli(
        "--store", store, "--namespace", "other", "mirror", "sync", "--mirrors", config
    )
    assert wrong_ns.returncode == 2 and "no replica of namespace 'other'" in wrong_ns.stderr

    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("[[mirror]]\nfield = 'killswitch'\ntype = 'yaml'\npath = 'x'\n")
    bad = mirror_cli(
        "--store", store, "--namespace", "agent", "mirror", "audit", "--mirrors", bad_config
    )
    assert bad.returncode == 2 and "'type' must be" in bad.stderr and "bad.toml" in bad.stderr

    with Replica.open(store, "agent", Agent):
        locked = mirror_cli(
            "--store", store, "--namespace", "agent", "mirror", "audit", "--mirrors", config
        )
    assert locked.returncode == 2 and locked.stderr.startswith("crdtstate: error:")
    assert "Traceback" not in locked.stderr


def test_lint_reports_direct_writes_with_file_and_line(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    tree = tmp_path / "project"
    tree.mkdir()
    (tree / "executor.py").write_text('import json\n\nopen("data/emergency.txt", "w").write("x")\n')
    (tree / "dashboard.py").write_text('print(open("data/config.json").read())\n')

    dirty = mirror_cli("lint", tree, "--mirrors", setup["config"])
    clean = mirror_cli("lint", tree / "dashboard.py", "--file", "emergency.txt")
    nothing = mirror_cli("lint", tree)

    assert dirty.returncode == 1
    assert f"{tree / 'executor.py'}:3:1: direct-write: opens 'emergency.txt'" in dirty.stdout
    assert "1 direct write(s) to mirrored files in 2 file(s)" in dirty.stdout
    assert clean.returncode == 0
    assert nothing.returncode == 2 and "nothing to look for" in nothing.stderr


# -- drift ---------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_drift_exits_2_when_the_relay_cannot_be_reached() -> None:
    result = run(
        "crdtstate.cli_drift",
        "drift",
        "--relay",
        f"ws://127.0.0.1:{closed_port()}",
        "--namespace",
        "agent",
        "--timeout-seconds",
        "5",
    )

    assert result.returncode == 2
    assert "cannot reach the relay" in result.stderr and "Traceback" not in result.stderr


async def drift(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crdtstate.cli_drift",
        "drift",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=ENV,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_drift_reports_a_relays_view(tmp_path: Path) -> None:
    beats = []
    for name in ("executor", "supervisor"):
        with Replica.open(tmp_path / name, "agent", Agent, replica_id=name) as replica:
            replica.state.killswitch.set(name == "supervisor")
            beats.append({**replica.heartbeat(), "applied_seq": 4, "outbox": 0})
    beats[1]["state_vector"] = beats[0]["state_vector"]  # same updates, other digest: a bug
    views: dict[str, Any] = {}

    async def replicas(request: web.Request) -> web.Response:
        body = views.get(request.match_info["ns"])
        if body is None:
            return web.json_response({"error": "unknown namespace"}, status=404)
        return web.Response(text=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/namespaces/{ns}/replicas", replicas)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        relay = f"http://127.0.0.1:{port}"
        now = time.time()

        def serve(ns: str, entries: list[ReplicaEntry], head: int = 4) -> None:
            view = ReplicasView(
                namespace=ns, head_seq=head, head_time=now - 60, served_at=now, replicas=entries
            )
            views[ns] = view.model_dump_json()

        healthy = ReplicaEntry.from_heartbeat(beats[0], connected=True, last_seen=now - 1)
        serve("agent", [healthy])
        code, out, err = await drift("--relay", relay, "--namespace", "agent")
        assert code == 0, err
        assert "executor" in out and "converged" in out and "healthy" in out

        lagging = ReplicaEntry.from_heartbeat(
            {**beats[0], "applied_seq": 2}, connected=False, last_seen=now - 30
        )
        serve("lagging", [lagging])
        code, out, _ = await drift("--relay", relay, "--namespace", "lagging", "--json")
        report = json.loads(out)
        assert code == 0 and report["replicas"][0]["status"] == "lagging"
        assert report["replicas"][0]["lag_seqs"] == 2
        code, out, _ = await drift(
            "--relay", relay, "--namespace", "lagging", "--json", "--max-lag-seconds", "10"
        )
        assert code == 1 and json.loads(out)["replicas"][0]["alerts"][0]["code"] == "lag"

        twins = [
            ReplicaEntry.from_heartbeat(beat, connected=True, last_seen=now - 1) for beat in beats
        ]
        serve("twins", twins)
        code, out, _ = await drift("--relay", relay, "--namespace", "twins")
        assert code == 1 and "diverged" in out and "convergence bug" in out

        code, out, _ = await drift(
            "--relay",
            relay,
            "--namespace",
            "agent",
            "--json",
            "--watch",
            "--watch-count",
            "2",
            "--interval-seconds",
            "0",
        )
        assert code == 0 and len(out.strip().splitlines()) == 2

        code, _, err = await drift("--relay", relay, "--namespace", "nobody")
        assert code == 2 and "knows no namespace 'nobody'" in err

        views["garbage"] = '{"namespace": "garbage", "head_seq": "four"}'
        code, _, err = await drift("--relay", relay, "--namespace", "garbage")
        assert code == 2 and "not a replicas view" in err and "head_seq" in err
    finally:
        await runner.cleanup()
