"""relay.gcpolicy: full collections are timed, younger ones are not reported."""

from __future__ import annotations

import gc

from relay.gcpolicy import FullCollectionTimer


def test_only_full_collections_are_reported_and_uninstall_stops_reporting() -> None:
    pauses: list[float] = []
    timer = FullCollectionTimer(pauses.append)
    timer.install()
    timer.install()  # idempotent: still one callback
    try:
        assert gc.callbacks.count(timer) == 1
        gc.collect(0)
        gc.collect(1)
        assert pauses == []
        gc.collect()
        assert len(pauses) == 1 and 0 <= pauses[0] < 5
    finally:
        timer.uninstall()
    gc.collect()
    assert len(pauses) == 1
    assert timer not in gc.callbacks
