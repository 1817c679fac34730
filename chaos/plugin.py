"""pytest plugin of crdtstate's chaos toolkit (registered as the ``crdtstate_chaos`` entry point).

Fixtures for users' own test suites:

- ``chaos_seed``: the seed of this test (``--chaos-seed`` or random), printed when the
  test fails so the run can be replayed.
- ``chaos_rng``: a ``random.Random`` seeded with it.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--chaos-seed``."""
    group = parser.getgroup("crdtstate-chaos")
    group.addoption(
        "--chaos-seed", type=int, default=None, help="seed for crdtstate chaos fixtures"
    )


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> Iterator[int]:
    """The seed driving this test's schedule; reported if the test fails."""
    option: Any = request.config.getoption("--chaos-seed")
    seed = int(option) if option is not None else secrets.randbelow(2**31)
    yield seed
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"\ncrdtstate chaos: replay with --chaos-seed {seed}")


@pytest.fixture
def chaos_rng(chaos_seed: int) -> random.Random:
    """A random source seeded with :func:`chaos_seed`."""
    return random.Random(chaos_seed)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item so fixtures can see whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
