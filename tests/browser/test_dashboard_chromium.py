"""The relay's dashboard in headless Chromium, against a running relay and real replicas.

It reads what a person sees (the rendered text of the page's tables and banner) while the
namespace changes under it: values rendered from the schema, replicas converged, a stopped
replica shown lagging, a forged heartbeat shown as a divergence alarm, all without a reload.

Needs Debian's ``chromium`` (installed by .ci/run); skipped without it outside CI.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.chromium import Chromium, chromium_binary
from tests.integration.drift_helpers import forge_heartbeat, open_replica, replicas_by_id
from tests.integration.relay_helpers import RelayProcess, wait_until

BINARY = chromium_binary()

pytestmark = pytest.mark.skipif(
    BINARY is None and not os.environ.get("CI"),
    reason="chromium is not installed (apt-get install chromium chromium-driver)",
)

ROWS_JS = """
(() => {
  if (!document.getElementById("status")) return null;  // still loading
  const rows = (id) => Array.from(document.querySelectorAll(`#${id} tbody tr`))
    .map((tr) => Array.from(tr.cells).map((td) => td.innerText.trim()));
  const alarm = document.getElementById("alarm");
  return {
    status: document.getElementById("status").innerText,
    namespaces: rows("namespaces"),
    replicas: rows("replicas"),
    fields: rows("fields"),
    title: document.getElementById("detail-title").innerText,
    summary: document.getElementById("detail-summary").innerText,
    alarm: alarm.hidden ? "" : alarm.innerText,
  };
})()
"""

# Column order of the page's replicas table (index.html).
REPLICA, CONNECTION, STATUS, APPLIED, LAG_SEQS, LAG = range(6)
FIELD, KIND, TYPE, VALUE = range(4)


def _by_first_cell(rows: list[list[str]]) -> dict[str, list[str]]:
    return {row[0]: row for row in rows if row}


async def _until_page(
    browser: Chromium, check: Callable[[dict[str, Any]], bool], what: str, timeout_s: float = 30
) -> dict[str, Any]:
    """Poll the rendered page until ``check`` holds; returns the page as last seen."""
    seen: dict[str, Any] = {}

    async def probe() -> bool:
        nonlocal seen
        page = await browser.evaluate(ROWS_JS)
        if page is None:
            return False
        seen = page
        return bool(check(seen))

    try:
        await wait_until(probe, timeout_s, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the page showed {seen}") from None
    return seen


async def test_dashboard_shows_namespaces_replicas_values_lag_and_drift_live(
    tmp_path: Path,
) -> None:
    if BINARY is None:
        pytest.fail("chromium is required in CI (apt-get install chromium chromium-driver)")
    relay = RelayProcess(tmp_path / "relay-data").start()
    browser = Chromium(BINARY, tmp_path / "profile", tmp_path / "chromium.log")
    executor = open_replica(tmp_path, "executor", relay)
    supervisor = open_replica(tmp_path, "supervisor", relay)
    forger = None
    try:
        executor.state.killswitch.set(True)
        executor.state.followers.add("bob")
        executor.state.memory.append({"event": "incident opened"})
        supervisor.state.karma.inc(3)
        supervisor.state.config.set("retries", 4)
        for replica in (executor, supervisor):
            replica.wait_synced(15)

        await browser.open(f"{relay.http_url}/?interval_ms=300#/ns/agent")

        def first_view(page: dict[str, Any]) -> bool:
            replicas = _by_first_cell(page["replicas"])
            fields = _by_first_cell(page["fields"])
            return (
                {"executor", "supervisor"} <= set(replicas)
                and all(replicas[n][STATUS] == "converged" for n in ("executor", "supervisor"))
                and fields.get("killswitch", [""] * 4)[VALUE] == "true"
                and [row[3] for row in page["namespaces"]] == ["healthy"]
            )

        page = await _until_page(browser, first_view, "namespace, replicas and values shown")
        assert page["title"] == "Namespace agent"
        assert page["status"].startswith("live")
        (namespace_row,) = page["namespaces"]
        assert namespace_row[0] == "agent" and namespace_row[2] == "2/2 connected"
        assert namespace_row[3] == "healthy"
        replicas = _by_first_cell(page["replicas"])
        assert replicas["executor"][CONNECTION] == "connected"
        assert replicas["executor"][LAG_SEQS] == "0"
        fields = _by_first_cell(page["fields"])
        assert fields["killswitch"][KIND:] == ["lww", "bool", "true"]
        assert fields["mode"][VALUE] == "normal"
        assert fields["followers"][KIND:] == ["orset", "str", "bob"]
        assert fields["karma"][KIND:] == ["pncounter", "int", "3"]
        assert fields["config"][VALUE] == "retries = 4"
        assert fields["memory"][VALUE] == '1 entry; last: {"event":"incident opened"}'
        await browser.screenshot(tmp_path / "dashboard-converged.png")

        # Live: a write shows up without a reload.
        supervisor.state.killswitch.set(False)
        supervisor.state.followers.add("carol")
        supervisor.wait_synced(15)
        await _until_page(
            browser,
            lambda p: (
                _by_first_cell(p["fields"]).get("killswitch", [""] * 4)[VALUE] == "false"
                and _by_first_cell(p["fields"])["followers"][VALUE] == "bob, carol"
            ),
            "the new values",
        )

        # A stopped replica falls behind: disconnected and lagging.
        supervisor.close()
        executor.state.karma.inc(1)
        executor.wait_synced(15)

        def stopped(page: dict[str, Any]) -> bool:
            rows = _by_first_cell(page["replicas"])
            row = rows.get("supervisor")
            return (
                row is not None
                and rows["executor"][STATUS] == "converged"  # its own heartbeat caught up
                and row[CONNECTION] == "disconnected"
                and row[STATUS] == "lagging"
                and row[LAG_SEQS] not in ("0", "-")
            )

        page = await _until_page(
            browser,
            lambda p: stopped(p) and p["namespaces"][0][3] == "syncing, 1 lagging",
            "the stopped replica shown lagging",
        )
        assert "1 lagging" in page["summary"]
        await browser.screenshot(tmp_path / "dashboard-lagging.png")

        # Equal state vectors, different digests: the alarm a person cannot miss.
        honest = replicas_by_id(relay)["executor"]
        forged = {k: v for k, v in honest.items() if k not in ("replica_id", "alerts", "status")}
        forged["digest"] = "e" * 64
        forger = await forge_heartbeat(relay, "forger", forged)
        page = await _until_page(
            browser,
            lambda p: (
                _by_first_cell(p["replicas"]).get("forger", [""] * 3)[STATUS] == "DIVERGED"
                and p["namespaces"][0][3] == "DIVERGED"
            ),
            "the divergence alarm",
        )
        assert page["alarm"].startswith("Divergence alarm:")
        assert "executor" in page["alarm"] and "forger" in page["alarm"]
        assert _by_first_cell(page["replicas"])["executor"][STATUS] == "DIVERGED"
        await browser.screenshot(tmp_path / "dashboard-diverged.png")
    finally:
        if forger is not None:
            await forger.close()
        await browser.close()
        executor.close()
        supervisor.close()
        relay.kill()


async def test_dashboard_says_when_the_relay_is_gone(tmp_path: Path) -> None:
    if BINARY is None:
        pytest.fail("chromium is required in CI (apt-get install chromium chromium-driver)")
    relay = RelayProcess(tmp_path / "relay-data").start()
    browser = Chromium(BINARY, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        await browser.open(f"{relay.http_url}/?interval_ms=300")
        page = await _until_page(browser, lambda p: p["status"].startswith("live"), "first poll")
        assert page["namespaces"] == []
        relay.kill()
        await _until_page(
            browser,
            lambda p: p["status"].startswith("relay unreachable"),
            "the page to report the relay unreachable",
        )
    finally:
        await browser.close()
        relay.kill()
