"""The chaos harness itself: processes, histories, control channel and nemesis verbs.

Every test here uses real processes (a relay, replica workers) on loopback ports; each
checks one harness promise the scenarios rely on: writes and acks are recorded, a kill -9
and a restart keep the history consistent, the relay restarts on the same port, one-way
partitions cut exactly one direction, clock skew reaches the HLC, and nothing outlives the
harness.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.checkers import check_history
from chaos.cluster import Cluster, ClusterConfig
from chaos.faultproxy import FaultProxyThread
from chaos.faultproxy.testing import wait_until_sync
from chaos.history import fold
from chaos.kit import ChaosKit
from chaos.nemesis import Nemesis
from chaos.nodeproc import NodeError, NodeOptions
from chaos.procs import live_pids
from chaos.proxyapi import ProxyApi, ProxyApiError
from chaos.runcheckers import check_acks
from chaos.workload import KINDS, ChaosState

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    config = ClusterConfig(replicas=2, node=NodeOptions(seed=11, rate=40.0))
    with Cluster(tmp_path / "run", config) as running:
        yield running


def _acked_ops(running: Cluster) -> int:
    ops, _reads = fold(running.history())
    return sum(1 for op in ops if op.outcome == "acked")


def test_workers_record_writes_and_acks_and_converge(cluster: Cluster) -> None:
    wait_until_sync(lambda: _acked_ops(cluster) >= 20, timeout_s=20, what="20 acked writes")
    cluster.pause_writes()
    assert cluster.wait_converged(20) < 20
    reads = cluster.final_reads()
    assert len({r["digest"] for r in reads}) == 1
    events = cluster.history()
    assert {e.type for e in events} >= {"invoke", "ok", "acked", "read", "note"}
    assert all(v.ok for v in check_history(events, KINDS)), check_history(events, KINDS)
    assert check_acks(events).ok


def test_kill9_and_restart_keeps_the_history_consistent(cluster: Cluster) -> None:
    nemesis = Nemesis(cluster, random.Random(1))
    r1 = cluster.nodes["r1"]
    wait_until_sync(lambda: _acked_ops(cluster) >= 10, timeout_s=20, what="first writes")
    nemesis.cut(["r1"])  # r1 keeps writing offline: its outbox fills
    time.sleep(0.8)
    first_pid = r1.pid
    nemesis.kill_replica("r1")
    assert not r1.alive
    with pytest.raises(NodeError):
        r1.status()
    nemesis.restart_replica("r1")
    assert r1.pid != first_pid and r1.incarnation == 2
    nemesis.heal(["r1"])
    time.sleep(1.0)
    cluster.pause_writes()
    cluster.wait_converged(20)
    cluster.final_reads()
    events = cluster.history()
    ops, _ = fold(events)
    incarnations = {op.invoke.op.split("-")[0] for op in ops if op.invoke.process == "r1"}
    assert incarnations == {"r1.1", "r1.2"}  # op ids never collide across restarts
    opens = [e for e in events if e.type == "note" and e.process == "r1"]
    assert [e.value["incarnation"] for e in opens if e.value["event"] == "open"] == [1, 2]
    failed = [str(v) for v in check_history(events, KINDS) if not v.ok]
    assert failed == []
    assert check_acks(events).ok


def test_relay_kill9_restarts_on_the_same_port_and_data(cluster: Cluster) -> None:
    nemesis = Nemesis(cluster, random.Random(2))
    port, first_pid = cluster.relay.port, cluster.relay.pid
    wait_until_sync(lambda: _acked_ops(cluster) >= 10, timeout_s=20, what="first writes")
    nemesis.kill_relay()
    time.sleep(0.5)
    ops_before = {n: s["ops"] for n, s in cluster.statuses().items()}
    time.sleep(0.5)
    ops_during = {n: s["ops"] for n, s in cluster.statuses().items()}
    assert all(ops_during[n] > ops_before[n] for n in ops_before)  # C7: writes go on
    nemesis.restart_relay()
    assert cluster.relay.port == port and cluster.relay.pid != first_pid
    cluster.pause_writes()
    cluster.wait_converged(25)
    cluster.final_reads()
    events = cluster.history()
    assert [str(v) for v in check_history(events, KINDS) if not v.ok] == []
    assert check_acks(events).ok


def test_cluster_stops_every_process_when_the_body_raises(tmp_path: Path) -> None:
    config = ClusterConfig(replicas=2, node=NodeOptions(seed=3, rate=5.0))
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"), Cluster(tmp_path, config) as running:
        pids = [running.relay.pid, *(n.pid for n in running.nodes.values())]
        raise RuntimeError("boom")
    assert len(pids) == 3
    assert not set(pids) & set(live_pids())
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_one_way_partition_cuts_exactly_one_direction(tmp_path: Path) -> None:
    with ChaosKit(tmp_path, seed=5) as kit:
        a, b = kit.replicas(ChaosState, 2)
        kit.wait_converged(20)
        kit.partition(a, direction="to-relay", how="blackhole")
        b.state.memory.append("from-b")
        wait_until_sync(lambda: "from-b" in a.state.memory.value, timeout_s=10, what="b -> a")
        a.state.memory.append("from-a")
        time.sleep(1.5)
        assert "from-a" not in b.state.memory.value  # a's updates vanish on the way
        kit.heal(a)
        kit.wait_converged(20)
        assert a.state.memory.value == b.state.memory.value
        assert {"from-a", "from-b"} <= set(b.state.memory.value)


def test_clock_skew_reaches_the_workers_hlc(tmp_path: Path) -> None:
    hour_ms = 3_600_000
    with ChaosKit(tmp_path, seed=6) as kit:
        (node,) = kit.spawn("chaos.workload:ChaosState", 1)
        kit.skew(node, hour_ms)
        stamp = node.call("flag", "set", "skewed")
        assert stamp[0] > time.time() * 1000 + hour_ms - 60_000
        kit.skew(node, 0)
        later = node.call("flag", "set", "unskewed")
        assert later[:2] > stamp[:2]  # the HLC never goes back, even when the clock does
        assert [r.action for r in kit.schedule] == ["skew", "skew"]


def test_proxy_api_client_drives_the_fault_proxy() -> None:
    with FaultProxyThread() as server:
        api = ProxyApi(server.url)
        assert api.version()
        info = api.create("spoke", "127.0.0.1:9")
        assert info.port > 0 and info.enabled
        name = api.add_toxic("spoke", "latency", "downstream", {"latency": 10}, name="lat")
        assert [t["name"] for t in api.toxics("spoke")] == [name]
        api.set_enabled("spoke", False)
        api.clear("spoke")
        assert api.toxics("spoke") == [] and api.get("spoke").enabled
        api.delete("spoke")
        api.delete("spoke")  # missing: not an error
        with pytest.raises(ProxyApiError) as caught:
            api.get("spoke")
        assert caught.value.status == 404
