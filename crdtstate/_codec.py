"""Canonical JSON used for values stored in the doc, digests and element identity.

Canonical means: sorted keys, no whitespace, no NaN or infinity, UTF-8. Two equal JSON
values always encode to the same string, so the encoding can serve as an identity (OR-set
elements) and as the input of the state digest. Imports nothing from the project.
"""

from __future__ import annotations

import json
from typing import Any

JSON = Any
"""A value made of dict (str keys), list, str, int, float, bool and None."""

_encoder = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def dumps(value: JSON) -> str:
    """Encode ``value`` as canonical JSON.

    Raises:
        ValueError: the value holds NaN or infinity.
        TypeError: the value holds something JSON cannot represent.
    """
    return _encoder.encode(value)


def loads(text: str) -> JSON:
    """Decode JSON text (raises ``ValueError`` on malformed input)."""
    return json.loads(text)
