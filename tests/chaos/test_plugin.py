"""The pytest plugin, used as a user would: fixtures in this suite, and a user's suite run by
pytester (a passing test, and a failing one whose report must carry seed and schedule)."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chaos.faultproxy.testing import wait_until_sync
from chaos.kit import ChaosKit
from chaos.procs import RelayProcess
from chaos.proxyapi import ProxyApi
from crdtstate import GCounter, Log, LWWRegister, ORSet, PNCounter, Schema

pytest_plugins = ["pytester"]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


class Agent(Schema):
    """A user's schema: nothing to do with the chaos workload's."""

    killswitch = LWWRegister(bool, default=False)
    karma = PNCounter()
    visits = GCounter()
    followers = ORSet(str)
    memory = Log(str)


def test_replicas_of_the_users_schema_converge_after_a_partition(
    chaos_cluster: ChaosKit, chaos_replicas: Callable[..., list[Any]]
) -> None:
    a, b, c = chaos_replicas(Agent, 3)
    chaos_cluster.partition(c)
    a.state.karma.inc(2)
    a.state.followers.add("bob")
    c.state.karma.inc(5)  # c writes while cut off: a local write never waits
    c.state.followers.remove("bob")  # c has not seen bob: add wins
    c.state.memory.append("offline note")
    wait_until_sync(lambda: b.state.karma.value == 2, timeout_s=15, what="a -> b")
    time.sleep(0.5)
    assert c.state.karma.value == 5  # the partition holds
    chaos_cluster.heal()
    chaos_cluster.wait_converged(timeout_s=20)
    for replica in (a, b, c):
        assert replica.state.karma.value == 7
        assert list(replica.state.followers.value) == ["bob"]
        assert replica.state.memory.value == ["offline note"]


def test_relay_fixture_kill9_and_restart(
    chaos_cluster: ChaosKit, chaos_relay: RelayProcess, chaos_proxy: ProxyApi
) -> None:
    a, b = chaos_cluster.replicas(Agent, 2)
    assert chaos_proxy.version()
    chaos_cluster.kill("relay")
    assert not chaos_relay.running
    a.state.visits.inc(3)
    b.state.visits.inc(4)
    chaos_cluster.restart("relay")
    chaos_cluster.wait_converged(timeout_s=25)
    assert a.state.visits.value == b.state.visits.value == 7


def test_spawned_workers_of_the_users_schema_survive_kill9(
    chaos_cluster: ChaosKit, tmp_path: Path
) -> None:
    module = tmp_path / "user_agent_schema.py"
    module.write_text(
        "from crdtstate import PNCounter, Schema, LWWRegister\n"
        "class Bot(Schema):\n"
        "    karma = PNCounter()\n"
        "    mode = LWWRegister(str, default='idle')\n"
    )
    env = {"PYTHONPATH": str(tmp_path)}
    w1, w2 = chaos_cluster.spawn("user_agent_schema:Bot", 2, env=env)
    w1.call("karma", "inc", 4)
    chaos_cluster.kill(w1)
    w2.call("karma", "inc", 1)
    chaos_cluster.restart(w1)
    chaos_cluster.wait_converged(timeout_s=20)
    assert w1.call("karma", "value") == w2.call("karma", "value") == 5
    assert [r.action for r in chaos_cluster.schedule] == ["kill", "restart"]


def test_in_process_restart_reopens_from_the_store(chaos_cluster: ChaosKit) -> None:
    a, b = chaos_cluster.replicas(Agent, 2)
    a.state.killswitch.set(True)
    a2 = chaos_cluster.restart(a)
    assert a2 is not a and a2.state.killswitch.value is True
    chaos_cluster.wait_converged(timeout_s=20)
    assert b.state.killswitch.value is True


USER_SUITE = textwrap.dedent(
    """
    from crdtstate import PNCounter, Schema

    class Agent(Schema):
        karma = PNCounter()

    def test_converges(chaos_cluster):
        a, b = chaos_cluster.replicas(Agent, 2)
        chaos_cluster.partition(b)
        a.state.karma.inc(1)
        b.state.karma.inc(2)
        chaos_cluster.heal()
        chaos_cluster.wait_converged(timeout_s=20)
        assert a.state.karma.value == b.state.karma.value == 3

    def test_wrong_expectation(chaos_cluster):
        a, b = chaos_cluster.replicas(Agent, 2)
        chaos_cluster.partition(b, how="blackhole")
        b.state.karma.inc(2)
        chaos_cluster.heal()
        chaos_cluster.wait_converged(timeout_s=20)
        assert a.state.karma.value == 3  # wrong on purpose
    """
)


def test_a_users_suite_gets_fixtures_and_failure_reports(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user_agent=USER_SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--chaos-seed", "4242")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*crdtstate chaos: seed 4242; logs in *",
            "*blackhole*r2*direction=both*",
            "*heal*r2*",
            "*replay with --chaos-seed 4242*",
        ]
    )
