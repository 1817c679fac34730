"""The relay's garbage-collector policy: what start-up made leaves the collector's view.

A full (generation 2) collection walks every object the collector tracks. Once started, the
relay holds well over a hundred thousand of them (imported modules, aiohttp, the settings,
the routes), none of which will ever be garbage, and a full collection walking them all
stopped the event loop for 20 to 60 ms on the development machine, and every update in
flight waited for it. Frozen after start-up (:func:`gc.freeze`), they are skipped, and a
full collection walks only what was made since (1 to 2 ms there under the same load). The
pauses of full collections are exported, so a regression shows in ``/metrics``.

Process-wide: used by the ``serve`` entry point, never by :func:`relay.app.make_app` (tests
run several relays in one process).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

__all__ = ["FullCollectionTimer", "freeze_startup_objects"]


def freeze_startup_objects() -> int:
    """Collect once, then freeze every surviving object; returns how many are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class FullCollectionTimer:
    """Reports the duration of each full collection to ``observe`` (seconds).

    Installed as a :data:`gc.callbacks` entry; younger generations are only timed, not
    reported, to keep the per-collection cost to a clock read.
    """

    def __init__(self, observe: Callable[[float], None]) -> None:
        self._observe = observe
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif info.get("generation") == 2:
            self._observe(time.perf_counter() - self._started)

    def install(self) -> None:
        """Start timing (idempotent)."""
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        """Stop timing."""
        if self in gc.callbacks:
            gc.callbacks.remove(self)
