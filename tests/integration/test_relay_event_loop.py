"""Which event loop runs the relay (``event_loop``): uvloop by default when installed (it is
a dependency), asyncio's own on request; a real relay process reports it in ``/healthz``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import uvloop  # a dependency of crdtstate (pyproject.toml)

from crdtstate.sync import wire
from relay.__main__ import loop_factory
from relay.config import ConfigError, load_settings
from tests.integration.relay_helpers import DocTarget, RelayProcess, connect_replica, signed_update

NS = "loops"


@pytest.mark.parametrize(
    ("config", "expected"), [("", "uvloop"), ('event_loop = "asyncio"', "asyncio")]
)
async def test_the_relay_runs_and_reports_the_chosen_loop(
    tmp_path: Path, config: str, expected: str
) -> None:
    relay = RelayProcess(tmp_path / "data", config_text=config + "\n").start()
    try:
        status, body = relay.http("GET", "/healthz")
        assert status == 200
        assert json.loads(body)["event_loop"] == expected
        # And it serves on that loop: a write is sequenced and acknowledged.
        target = DocTarget(NS, "writer")
        replica, _, _ = await connect_replica(relay.url, target)
        try:
            op_id = target.write("k", 1)
            await replica.send(signed_update(target, op_id, target.outbox[op_id].update))
            ack, _ = await replica.recv_until(lambda f: isinstance(f, wire.Ack))
            assert ack == wire.Ack(op_id, wire.Seq(1), False)  # type: ignore[attr-defined]
        finally:
            await replica.close()
    finally:
        relay.kill()


def test_event_loop_is_read_from_the_config_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    assert load_settings(None, environ={}).event_loop == "auto"
    path.write_text('event_loop = "asyncio"\n')
    assert load_settings(path, environ={}).event_loop == "asyncio"
    path.write_text('event_loop = "trio"\n')
    with pytest.raises(ConfigError, match=r"event_loop"):
        load_settings(path, environ={})
    assert loop_factory("asyncio") is None
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
