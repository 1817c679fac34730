"""Yjs state vectors as Python values.

An encoded state vector is ``varuint n`` then ``n`` pairs ``varuint client, varuint clock``,
in no particular order: two equal state vectors may encode to different bytes, so compare
them decoded. Pure; imports nothing from the project.
"""

from __future__ import annotations


def decode_state_vector(data: bytes) -> dict[int, int]:
    """Decode an encoded Yjs state vector into ``{client id: clock}``.

    Raises:
        ValueError: the bytes are not a state vector.
    """
    pos = 0

    def varuint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            if pos >= len(data):
                raise ValueError("truncated state vector")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
            if shift > 63:
                raise ValueError("state vector varuint too long")

    count = varuint()
    out: dict[int, int] = {}
    for _ in range(count):
        client = varuint()
        out[client] = varuint()
    if pos != len(data):
        raise ValueError("trailing bytes after state vector")
    return out


def state_vectors_equal(a: bytes | str, b: bytes | str) -> bool:
    """Whether two encoded state vectors (bytes or hex) describe the same state."""
    left = bytes.fromhex(a) if isinstance(a, str) else a
    right = bytes.fromhex(b) if isinstance(b, str) else b
    return decode_state_vector(left) == decode_state_vector(right)


def dominates(a: dict[int, int], b: dict[int, int]) -> bool:
    """Whether state ``a`` includes everything in state ``b``."""
    return all(a.get(client, 0) >= clock for client, clock in b.items())
