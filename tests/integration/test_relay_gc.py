"""The relay process freezes what start-up made, so full collections stay short."""

from __future__ import annotations

from tests.integration.relay_helpers import RelayProcess, metric_value


def test_the_relay_freezes_its_start_up_objects_and_exports_full_collection_pauses(
    relay: RelayProcess,
) -> None:
    text = relay.metrics()
    # Modules, aiohttp, the settings and the routes: far more than any young generation.
    assert metric_value(text, "crdtstate_relay_gc_frozen_objects") > 10_000
    assert "crdtstate_relay_gc_full_collection_seconds_count" in text
