"""pytest plugin of crdtstate's chaos toolkit (registered as the ``crdtstate_chaos`` entry point).

Fixtures for users' own test suites:

- ``chaos_seed``: the seed of this test (``--chaos-seed`` or random), printed when the
  test fails so the run can be replayed.
- ``chaos_rng``: a ``random.Random`` seeded with it.
- ``chaos_cluster``: a :class:`chaos.kit.ChaosKit`: a relay process behind a fault proxy
  (one proxy per replica), factories of replicas of *your* schema (in-process:
  ``chaos_cluster.replicas(MySchema, 3)``; worker processes: ``.spawn("pkg.mod:MySchema")``),
  and the nemesis verbs ``partition``, ``heal``, ``latency``, ``kill``, ``restart``,
  ``pause``, ``resume``, ``skew``, ``wait_converged``. Everything is stopped by pid at
  teardown; a failing test prints the seed and the fault schedule.
- ``chaos_replicas``: the replica factory alone (``chaos_replicas(MySchema, n=3)``).
- ``chaos_relay``: the relay process (``.url``, ``.kill()``, ``.start()``).
- ``chaos_proxy``: the fault proxy's Toxiproxy API (:class:`chaos.proxyapi.ProxyApi`);
  ``$TOXIPROXY_URL`` makes every fixture use a real toxiproxy-server instead.

Example::

    def test_karma_converges_across_a_partition(chaos_cluster):
        a, b, c = chaos_cluster.replicas(Agent, 3)
        chaos_cluster.partition(c)
        a.state.karma.inc(2)
        c.state.karma.inc(5)
        chaos_cluster.heal()
        chaos_cluster.wait_converged(timeout_s=20)
        assert {r.state.karma.value for r in (a, b, c)} == {7}

The heavy imports (relay, fault proxy) happen only when a chaos fixture is used, so the plugin
costs nothing to test suites that never ask for one.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from chaos.kit import ChaosKit
    from chaos.procs import RelayProcess
    from chaos.proxyapi import ProxyApi


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--chaos-seed`` and ``--chaos-proxy``."""
    group = parser.getgroup("crdtstate-chaos")
    group.addoption(
        "--chaos-seed", type=int, default=None, help="seed for crdtstate chaos fixtures"
    )
    group.addoption(
        "--chaos-proxy",
        choices=["thread", "process", "external"],
        default=None,
        help="fault proxy of chaos_cluster: in a thread (default), a child process, or the "
        "toxiproxy-server at $TOXIPROXY_URL (default when that is set)",
    )


def _failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "rep_call", None)
    return report is not None and bool(report.failed)


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> Iterator[int]:
    """The seed driving this test's schedule; reported if the test fails."""
    option: Any = request.config.getoption("--chaos-seed")
    seed = int(option) if option is not None else secrets.randbelow(2**31)
    yield seed
    if _failed(request):
        print(f"\ncrdtstate chaos: replay with --chaos-seed {seed}")


@pytest.fixture
def chaos_rng(chaos_seed: int) -> random.Random:
    """A random source seeded with :func:`chaos_seed`."""
    return random.Random(chaos_seed)


@pytest.fixture
def chaos_cluster(
    request: pytest.FixtureRequest, tmp_path: Path, chaos_seed: int
) -> Iterator[ChaosKit]:
    """A relay behind fault proxies, replica factories and nemesis verbs (see module doc)."""
    from chaos.kit import ChaosKit

    mode: Any = request.config.getoption("--chaos-proxy")
    kit = ChaosKit(tmp_path / "crdtstate-chaos", seed=chaos_seed, proxy_mode=mode)
    kit.start()
    try:
        yield kit
    finally:
        if _failed(request):
            lines = [str(record) for record in kit.schedule] or ["(no faults injected)"]
            print(
                f"\ncrdtstate chaos: seed {chaos_seed}; logs in {kit.workdir / 'logs'}; "
                "fault schedule:\n  " + "\n  ".join(lines)
            )
        kit.close()


@pytest.fixture
def chaos_replicas(chaos_cluster: ChaosKit) -> Callable[..., list[Any]]:
    """``chaos_replicas(MySchema, n=3, namespace="test")``: in-process replicas, each behind
    its own proxy of :func:`chaos_cluster`."""
    return chaos_cluster.replicas


@pytest.fixture
def chaos_relay(chaos_cluster: ChaosKit) -> RelayProcess:
    """The relay process of :func:`chaos_cluster`."""
    return chaos_cluster.relay


@pytest.fixture
def chaos_proxy(chaos_cluster: ChaosKit) -> ProxyApi:
    """The Toxiproxy API of :func:`chaos_cluster`'s fault proxy."""
    return chaos_cluster.proxy


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item so fixtures can see whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
