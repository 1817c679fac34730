"""The trace of one simulated seed: every decision and delivery, hashed.

A seed is reproducible only if everything the simulation does follows from the seed. The
trace is the witness: one short line per scheduler decision (a write, a fault, a delivered
frame, a connection opening or closing), with virtual times; two runs of one seed must give
the same :attr:`Trace.digest`, in one process or in two (a test checks both).

Lines hold only what is deterministic by construction. Frames are summarized by kind,
length and a CRC of their bytes, except heartbeats, whose JSON carries the replica's wall
clock (``sent_at``) and measured recovery time: for those, the kind alone.

Owns the line format. Imports only the standard library.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import deque
from typing import Final

__all__ = ["FRAME_KINDS", "Trace", "frame_kind"]

FRAME_KINDS: Final[dict[int, str]] = {
    0: "hello",
    1: "welcome",
    2: "update",
    3: "ack",
    4: "bcast",
    5: "batch",
    6: "snapshot",
    7: "resync",
    8: "heartbeat",
    9: "error",
}
"""Extension frame types (``wire.ExtType``) by number, as the trace names them."""

_SYNC_KINDS: Final = {0: "step1", 1: "step2", 2: "syncupd"}
_TAIL_LINES: Final = 60


def frame_kind(frame: bytes) -> str:
    """A frame's kind from its first two bytes (every type number fits one varuint byte)."""
    if len(frame) < 2:
        return "short"
    if frame[0] == 100:
        return FRAME_KINDS.get(frame[1], "ext?")
    if frame[0] == 0:
        return _SYNC_KINDS.get(frame[1], "sync?")
    return f"type{frame[0]}"


class Trace:
    """Accumulates trace lines; keeps all of them only when asked (replays), else a tail.

    Args:
        keep_all: keep every line (for ``--trace``); otherwise only the last few, which a
            failure report prints.
    """

    def __init__(self, *, keep_all: bool = False) -> None:
        self._hash = hashlib.blake2b(digest_size=16)
        self.lines: deque[str] = deque(maxlen=None if keep_all else _TAIL_LINES)
        self.count = 0

    def add(self, now: float, text: str) -> None:
        """Record one line at virtual time ``now``."""
        line = f"{now:.6f} {text}"
        self._hash.update(line.encode())
        self._hash.update(b"\n")
        self.lines.append(line)
        self.count += 1

    def frame(self, now: float, where: str, frame: bytes) -> None:
        """Record a delivered frame (kind, length, CRC of its bytes but for heartbeats)."""
        kind = frame_kind(frame)
        if kind == "heartbeat":
            self.add(now, f"{where} {kind}")
        else:
            self.add(now, f"{where} {kind} {len(frame)} {zlib.crc32(frame):08x}")

    @property
    def digest(self) -> str:
        """Hex digest of every line so far."""
        return self._hash.hexdigest()
