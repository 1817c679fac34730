"""Issue 7, the stale killswitch (background/000), replayed with real processes.

In the field, the executor kept reading ``ACTIVE`` from ``emergency.txt`` for ten days
after the incident was resolved elsewhere. Here the executor, the supervisor and the
dashboard are three replica processes; each keeps a legacy ``emergency.txt`` as a mirror
of the ``killswitch`` register (True -> ACTIVE, False -> INACTIVE); the executor reaches
the relay through a fault proxy, so the test can cut it off like a real partition.

The story, each step checked:

1. the executor activates the killswitch: every replica and every file says ACTIVE;
2. the executor is cut off (its proxy disabled) and the supervisor clears the
   killswitch: supervisor and dashboard read False, the executor cannot know yet, and
   ``crdtstate drift`` shows it lagging;
3. an operator stops the executor (its store is locked while it runs) and edits its
   ``emergency.txt`` by hand to ``INACTIVE``, believing the supervisor: the real
   ``crdtstate mirror audit`` reports the hand edit (exit 1). The literal field order
   ("hand-edited back to ACTIVE" on a file that already says ACTIVE) would change nothing
   an audit could see, so the edit is the one an operator would actually make;
4. the executor restarts, still cut off: its boot re-sync puts the file back to ACTIVE,
   because the file is a projection of the state, never a way to change it;
5. the network heals: within a bounded time every replica reads False, every mirror file
   says INACTIVE, ``crdtstate drift`` is healthy and every audit is clean.

The drift steps need the relay's ``GET /v1/namespaces/<ns>/replicas`` view.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chaos.faultproxy import FaultProxyThread
from crdtstate.cli_drift import fetch_view
from crdtstate.demo import Proxies
from crdtstate.drift import assess

from .conftest import NAMESPACE, REPO, AgentProcess, Cluster, child_env

ROLES = ("executor", "supervisor", "dashboard")
CLI_TIMEOUT_S = 60.0
HEAL_TIMEOUT_S = 30.0
MIRRORS_TOML = """
[[mirror]]
field = "killswitch"
type = "text"
path = "emergency.txt"
values = { true = "ACTIVE", false = "INACTIVE" }
"""


def start_cli(*args: str | Path) -> subprocess.Popen[str]:
    """Start the real ``crdtstate`` command line as a process."""
    return subprocess.Popen(
        [sys.executable, "-m", "crdtstate.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**child_env(), "COLUMNS": "200"},
    )


def finish_cli(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    """Wait (bounded) for a command started by :func:`start_cli`; killed by pid if late."""
    try:
        out, err = proc.communicate(timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def crdtstate_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the real ``crdtstate`` command line to completion."""
    return finish_cli(start_cli(*args))


def start_audit(agent: AgentProcess, mirrors: Path) -> subprocess.Popen[str]:
    """``crdtstate mirror audit --json`` of ``agent``'s store (its process must be stopped:
    the store is locked while a replica has it open)."""
    return start_cli(
        "mirror", "audit", "--store", agent.data_dir, "--namespace", NAMESPACE,
        "--mirrors", mirrors, "--json",
    )  # fmt: skip


def audit_result(proc: subprocess.Popen[str]) -> tuple[int, list[dict[str, Any]]]:
    """Exit status and findings of an audit started by :func:`start_audit`."""
    done = finish_cli(proc)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    findings: list[dict[str, Any]] = json.loads(done.stdout)["findings"]
    return done.returncode, findings


def drift(relay_url: str) -> tuple[int, dict[str, dict[str, Any]]]:
    """``crdtstate drift --json``: exit status and each replica's assessment by id."""
    done = crdtstate_cli("drift", "--relay", relay_url, "--namespace", NAMESPACE, "--json")
    assert done.returncode in (0, 1), (
        f"crdtstate drift failed ({done.returncode}); it needs the relay's "
        f"/v1/namespaces/<ns>/replicas view: {done.stderr or done.stdout}"
    )
    report = json.loads(done.stdout)
    return done.returncode, {r["replica_id"]: r for r in report["replicas"]}


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``check`` until true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.05)


def file_says(legacy: Path) -> str:
    """What an ``emergency.txt`` holds (stripped; empty when missing)."""
    try:
        return (legacy / "emergency.txt").read_text().strip()
    except FileNotFoundError:
        return ""


def reads(agent: AgentProcess) -> bool:
    """The killswitch as ``agent`` reads it now."""
    value = agent.view()["state"]["killswitch"]
    assert isinstance(value, bool)
    return value


@pytest.fixture
def proxies(cluster: Cluster) -> Iterator[Proxies]:
    """A fault proxy server in this process, with proxies to the cluster's relay."""
    server = FaultProxyThread()
    server.start()
    try:
        yield Proxies(server, cluster.relay.port)
    finally:
        server.stop()


def test_stale_killswitch_is_cleared_everywhere_after_the_partition(
    cluster: Cluster, proxies: Proxies, tmp_path: Path
) -> None:
    """The field story end to end (steps in the module docstring)."""
    legacy = {role: tmp_path / f"legacy-{role}" for role in ROLES}
    for folder in legacy.values():
        folder.mkdir()
        (folder / "mirrors.toml").write_text(MIRRORS_TOML)
    configs = {role: legacy[role] / "mirrors.toml" for role in ROLES}
    urls = {role: proxies.create(role) for role in ROLES}
    executor, supervisor, dashboard = cluster.add_agents(list(ROLES), urls, mirrors=configs)
    everyone = (executor, supervisor, dashboard)

    # 1. The executor activates the killswitch; every replica and every file follows.
    executor.request("set", value=True)
    wait_until(
        lambda: (
            all(reads(a) for a in everyone)
            and all(file_says(f) == "ACTIVE" for f in legacy.values())
        ),
        HEAL_TIMEOUT_S,
        "every replica reads True and every emergency.txt says ACTIVE",
    )

    wait_drift_healthy(cluster.relay.url, "before the incident, every replica is converged")

    # 2. Partition: the executor is cut off; the supervisor clears the killswitch.
    proxies.set_enabled("executor", False)
    supervisor.request("set", value=False)
    wait_until(
        lambda: not reads(supervisor) and not reads(dashboard),
        HEAL_TIMEOUT_S,
        "supervisor and dashboard read False",
    )
    wait_until(
        lambda: file_says(legacy["supervisor"]) == file_says(legacy["dashboard"]) == "INACTIVE",
        HEAL_TIMEOUT_S,
        "the supervisor's and dashboard's files say INACTIVE",
    )
    assert reads(executor) is True, "the executor cannot have seen the clear: it is cut off"
    assert file_says(legacy["executor"]) == "ACTIVE"
    _, during = drift(cluster.relay.url)
    assert during["executor"]["status"] == "lagging", json.dumps(during, indent=1)
    assert during["executor"]["lag_seqs"] >= 1
    assert during["supervisor"]["status"] == "converged", during["supervisor"]

    # 3. The operator stops the executor and edits its file by hand: the audit reports it.
    executor.stop()
    (legacy["executor"] / "emergency.txt").write_text("INACTIVE\n")
    status, findings = audit_result(start_audit(executor, configs["executor"]))
    assert status == 1
    assert [f["kind"] for f in findings] == ["hand-edited"], findings
    assert findings[0]["path"].endswith("emergency.txt")

    # 4. Restarted while still cut off, the executor re-syncs its file from its state.
    executor.start()
    wait_until(
        lambda: file_says(legacy["executor"]) == "ACTIVE",
        HEAL_TIMEOUT_S,
        "the executor's boot re-sync overwrites the hand edit with its state (ACTIVE)",
    )

    # 5. Heal: one truth everywhere, in every file, in the drift report, in every audit.
    proxies.set_enabled("executor", True)
    wait_until(
        lambda: (
            not any(reads(a) for a in everyone)
            and all(file_says(f) == "INACTIVE" for f in legacy.values())
        ),
        HEAL_TIMEOUT_S,
        "every replica reads False and every emergency.txt says INACTIVE",
    )
    views = cluster.converge()
    assert len({v["digest"] for v in views.values()}) == 1
    wait_drift_healthy(cluster.relay.url, "after the heal, every replica is converged")
    for agent in everyone:
        agent.stop()
    audits = {agent.role: start_audit(agent, configs[agent.role]) for agent in everyone}
    for role, proc in audits.items():
        assert audit_result(proc) == (0, []), f"the audit of {role} is not clean"


def wait_drift_healthy(relay_url: str, what: str) -> None:
    """Wait until every replica is converged in the relay's view, then check that the real
    ``crdtstate drift`` says so too (exit 0). The polling uses the CLI's own fetch and
    assessment in this process: a CLI process per poll would cost a second of CPU each."""

    def healthy() -> bool:
        report = assess(asyncio.run(fetch_view(relay_url, NAMESPACE)), time.time())
        return report.healthy and all(r.converged for r in report.replicas)

    wait_until(healthy, HEAL_TIMEOUT_S, what)
    status, replicas = drift(relay_url)
    assert status == 0, replicas
    assert {r["status"] for r in replicas.values()} == {"converged"}, replicas
