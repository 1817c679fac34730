"""Three agent instances, one relay, all real processes: the promises of README and DESIGN.

Each test starts a relay subprocess (embedded SQLite) and three replica processes
(``_agent_process.py``, durability ``sync``) that write every CRDT kind at once, then checks
exact values against the model of every write the processes reported as returned:

- (a) they converge: equal digests, counter = sum of increments, every append once and in
  one order, OR-set content, register = highest-HLC write;
- (b) the relay is SIGKILLed mid-stream and restarted on its data dir: nothing lost;
- (c) a replica is SIGKILLed mid-stream and restarted from its store: it kept every write
  it reported, and the cluster converges;
- (d) a late joiner catches up from a relay snapshot after the log was compacted;
- (e) the relay drains on SIGTERM, the replicas reconnect to its successor, nothing lost;

and the README's demo runs to its convergence line.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from typing import Any

from ._agent_process import Model
from .conftest import NAMESPACE, REPO, AgentProcess, Cluster, check_converged, child_env

ROLES = ("executor", "supervisor", "dashboard")
WRITES = 36
"""Writes per agent per stream: six periods of the schedule, every CRDT kind six times."""


def start_three(cluster: Cluster) -> list[AgentProcess]:
    """The field story's three instances, each with its own data dir."""
    return cluster.add_agents(list(ROLES))


def finish_streams(requests: list[tuple[AgentProcess, int]], timeout_s: float = 60.0) -> None:
    """Wait until every agent finished its stream (each write returned)."""
    for agent, request_id in requests:
        agent.reply(request_id, timeout_s)


def test_three_writers_converge_to_exact_values(cluster: Cluster) -> None:
    """(a) Concurrent writers of every CRDT kind end with one state, exactly the model."""
    start_three(cluster)
    finish_streams(cluster.stream(WRITES))
    views = cluster.converge()
    model = cluster.model()
    assert sum(len(a.reported) for a in cluster.agents.values()) == 3 * WRITES
    check_converged(views, model)
    assert len(views["executor"]["state"]["memory"]) == 3 * len(range(0, WRITES, 6))


def test_relay_sigkill_mid_stream_loses_nothing(cluster: Cluster) -> None:
    """(b) kill -9 of the relay while three replicas write; restart on the same data dir."""
    agents = start_three(cluster)
    finish_streams(cluster.stream(12))
    before = cluster.converge()  # these writes are acknowledged by the relay
    head_before = max(v["applied_seq"] for v in before.values())

    requests = cluster.stream(WRITES, start=12, pause_s=0.01)
    agents[0].wait_writes(12 + WRITES // 3)
    assert len(agents[0].reported) < 12 + WRITES, "the stream must still run at the kill"
    cluster.relay.kill()
    cluster.start_relay()  # same port: the replicas' reconnect loop finds it
    finish_streams(requests)
    # A fresh replica learns only from the relay: what the relay acknowledged before its
    # crash must be there without the writers resending it.
    cluster.add_agent("observer")

    views = cluster.converge()
    check_converged(views, cluster.model())
    assert min(v["applied_seq"] for v in views.values()) > head_before


def test_replica_sigkill_keeps_every_returned_write(cluster: Cluster) -> None:
    """(c) kill -9 of one replica mid-stream: restarted offline from its store, it holds
    every write it reported as returned (sync durability), at most the one in flight more;
    restarted online, the cluster converges to exactly the model."""
    agents = start_three(cluster)
    victim = agents[0]
    requests = cluster.stream(WRITES, pause_s=0.005)
    victim.wait_writes(WRITES // 2)
    victim.kill()
    finish_streams(requests[1:])
    promised = [e["i"] for e in victim.reported]
    assert promised == list(range(len(promised)))

    # Offline first: what the store kept, not what the relay could send back.
    victim.relay_url, relay_url = None, victim.relay_url
    victim.start()
    recovered = victim.view()
    victim.stop()
    if _own_part(recovered, victim.role) != _model_part(victim, len(promised)):
        # The write in flight at the kill was durable but never reported: count it.
        assert _own_part(recovered, victim.role) == _model_part(victim, len(promised) + 1), (
            "the recovered store lost a write reported as returned"
        )
        victim.reported.append({"ev": "w", "i": len(promised)})

    victim.relay_url = relay_url
    victim.start()
    # The resumed stream writes the killswitch again, so its last write outranks any
    # unreported one whose stamp the model cannot know.
    victim.reply(victim.send("stream", start=len(victim.reported), n=12), 60)
    views = cluster.converge()
    check_converged(views, cluster.model())


def _own_part(view: dict[str, Any], role: str) -> tuple[int, list[int], list[str]]:
    """What one replica wrote itself, read from a view: its karma slot, its appends, the
    followers it added."""
    state = view["state"]
    appends = [e["i"] for e in state["memory"] if e["by"] == role]
    followers = sorted(f for f in state["followers"] if f.startswith(f"{role}-"))
    return int(view["karma_by"].get(role, 0)), appends, followers


def _model_part(agent: AgentProcess, count: int) -> tuple[int, list[int], list[str]]:
    """The same projection for writes ``0..count-1`` of ``agent``."""
    model = Model()
    for i in range(count):
        model.apply(agent.role, i)
    return model.karma, model.appends.get(agent.role, []), sorted(model.followers)


def test_late_joiner_catches_up_through_a_snapshot(cluster: Cluster) -> None:
    """(d) After a snapshot compacted the relay's log (and a relay restart, so the log
    really is gone from memory), a fresh replica gets snapshot + tail and converges."""
    start_three(cluster)
    finish_streams(cluster.stream(WRITES))
    cluster.converge()
    snapshot = compact(cluster)
    assert snapshot["seq"] >= 3 * WRITES, snapshot

    finish_streams(cluster.stream(6, start=WRITES))  # a tail after the snapshot
    cluster.converge()
    cluster.relay.kill()
    cluster.start_relay()
    late = cluster.add_agent("late-joiner")
    views = cluster.converge()
    check_converged(views, cluster.model())
    assert views["late-joiner"]["applied_seq"] >= snapshot["seq"] + 3 * 6  # and the tail
    assert late.view()["state"]["memory"] == views["executor"]["state"]["memory"]


def compact(cluster: Cluster, attempts: int = 40) -> dict[str, Any]:
    """Snapshot through the admin endpoint until the relay trimmed its log.

    The relay trims only below the lowest seq every live replica reported applied in a
    heartbeat, so the first snapshot may trim nothing until each replica heartbeated.
    """
    outcome: dict[str, Any] = {}
    for _ in range(attempts):
        status, body = cluster.relay.http("POST", f"/admin/namespaces/{NAMESPACE}/snapshot")
        assert status == 200, body
        outcome = json.loads(body)
        if outcome["trimmed"] > 0:
            return outcome
        time.sleep(0.25)
    raise AssertionError(f"the relay never trimmed its log: {outcome}")


def test_relay_sigterm_drains_and_clients_reconnect(cluster: Cluster) -> None:
    """(e) SIGTERM: the relay drains (exit 0), the replicas reconnect to the restarted
    relay and nothing written before, during or after is lost."""
    agents = start_three(cluster)
    requests = cluster.stream(WRITES, pause_s=0.01)
    agents[1].wait_writes(WRITES // 3)
    assert len(agents[1].reported) < WRITES, "the stream must still run at the SIGTERM"
    assert cluster.relay.terminate(timeout_s=20) == 0, cluster.relay.log_tail()
    cluster.start_relay()
    finish_streams(requests)
    views = cluster.converge()
    check_converged(views, cluster.model())


def test_demo_runs_to_convergence() -> None:
    """The README's first command: the demo converges and says so, within its bound."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "crdtstate.demo"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=child_env(),
        timeout=120,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"converged in \d+(\.\d+)? s", done.stdout), done.stdout
    assert elapsed < 60, f"the demo took {elapsed:.1f} s"
