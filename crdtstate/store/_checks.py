"""Argument checks shared by every store, run in the caller's thread.

A store's writer must never meet a value it cannot write (that would wedge it on a poison
item), so everything a caller hands over is checked and encoded here first, with an error
naming what was wrong. Imports only the id types and the JSON codec; must not import
pycrdt or any store.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from crdtstate._codec import EncodedOp, NestingError, make_encoder
from crdtstate._ids import OpId, Seq

MAX_BLOB_BYTES: Final = 512 * 1024 * 1024
"""Largest update or snapshot a store accepts (SQLite's own limit is about 1 GB)."""

MAX_INT: Final = 2**63 - 1
"""Op ids and sequence numbers are stored as signed 64-bit integers."""

MAX_META_KEY_CHARS: Final = 1024

# ASCII only: a lone surrogate must not reach SQLite's UTF-8 text binding in the writer.
_encode_json: Final = make_encoder(sort_keys=False, ensure_ascii=True)
_DECODER: Final = json.JSONDecoder()


def check_blob(value: object, what: str) -> bytes:
    """Return ``value`` as ``bytes`` or raise naming ``what`` was wrong.

    Raises:
        TypeError: not bytes-like.
        ValueError: larger than :data:`MAX_BLOB_BYTES`.
    """
    if isinstance(value, bytes):
        blob = value
    elif isinstance(value, bytearray | memoryview):
        blob = bytes(value)
    else:
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    if len(blob) > MAX_BLOB_BYTES:
        raise ValueError(f"{what} is {len(blob)} bytes, more than the {MAX_BLOB_BYTES} allowed")
    return blob


def encode_op(op: object) -> str:
    """Return the canonical JSON text of a semantic operation.

    The op must be a mapping with string keys that survives a JSON round trip unchanged
    (no tuples, sets, NaN, non-string keys), so what the outbox gives back equals what was
    appended.

    Raises:
        TypeError: ``op`` is not a mapping or holds a value JSON cannot encode.
        ValueError: ``op`` would come back different from a JSON round trip.
    """
    if type(op) is EncodedOp:
        return op.text  # built by a field from canonical JSON parts
    if type(op) is dict:
        as_dict: dict[Any, Any] = op
    elif isinstance(op, Mapping):
        as_dict = dict(op)
    else:
        raise TypeError(f"op must be a mapping (a JSON object), not {type(op).__name__}")
    try:
        text = _encode_json(as_dict)
    except NestingError as exc:
        raise ValueError("op is nested too deeply to encode") from exc
    except (TypeError, ValueError) as exc:
        raise TypeError(f"op is not JSON-encodable: {exc}") from exc
    if _is_flat_json(as_dict):
        return text  # every value encodes exactly: no need to decode it again
    try:
        same = _DECODER.decode(text) == as_dict
    except RecursionError as exc:
        raise ValueError("op is nested too deeply to encode") from exc
    if not same:
        raise ValueError(
            "op does not survive a JSON round trip unchanged (use str keys, lists not "
            f"tuples, finite numbers): {text[:200]}"
        )
    return text


def _is_flat_json(op: Mapping[Any, Any]) -> bool:
    """True when ``op`` has str keys and only str/int/bool/None/float values or lists of
    str (all exact in JSON).

    Semantic ops are nearly always this shape; checking it costs far less than a decode.
    """
    for key, value in op.items():
        if type(key) is not str:
            return False
        kind = type(value)
        if kind is list:
            if not all(type(item) is str for item in value):
                return False
        elif not (kind is str or kind is int or kind is bool or kind is float or value is None):
            return False
    return True  # NaN and infinities were already refused by the encoder


def decode_op(text: str) -> dict[str, Any]:
    """Inverse of :func:`encode_op` for text the store itself wrote."""
    value = _DECODER.decode(text)
    if not isinstance(value, dict):
        raise ValueError(f"stored op is not a JSON object: {text[:200]}")
    return value


def check_seq(value: object, what: str = "seq") -> Seq:
    """Return ``value`` as a :data:`Seq` (an int in 0..2**63-1) or raise saying why not."""
    return Seq(_check_int(value, what))


def check_op_id(value: object, what: str = "op_id") -> OpId:
    """Return ``value`` as an :data:`OpId` (an int in 0..2**63-1) or raise saying why not."""
    return OpId(_check_int(value, what))


def _check_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not 0 <= value <= MAX_INT:
        raise ValueError(f"{what} must be in 0..2**63-1, got {value}")
    return value


def check_meta(key: object, value: object | None = None) -> None:
    """Check a meta key (and value, when given): non-empty strings that encode as UTF-8.

    Raises:
        TypeError: not a string.
        ValueError: empty key, key too long, or text that cannot be stored as UTF-8.
    """
    _check_text(key, "meta key")
    assert isinstance(key, str)
    if not key:
        raise ValueError("meta key must not be empty")
    if len(key) > MAX_META_KEY_CHARS:
        raise ValueError(f"meta key is {len(key)} characters, more than {MAX_META_KEY_CHARS}")
    if value is not None:
        _check_text(value, f"meta value of {key!r}")
        assert isinstance(value, str)
        if len(value) > MAX_BLOB_BYTES // 4:
            raise ValueError(f"meta value of {key!r} is too large ({len(value)} characters)")


def _check_text(value: object, what: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} cannot be stored as UTF-8: {exc}") from exc


def check_timeout(timeout_s: object) -> float | None:
    """Return ``timeout_s`` as a non-negative float, or None for no limit."""
    if timeout_s is None:
        return None
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float):
        raise TypeError(f"timeout_s must be a number or None, not {type(timeout_s).__name__}")
    if not timeout_s >= 0:  # also refuses NaN
        raise ValueError(f"timeout_s must be >= 0, got {timeout_s}")
    return float(timeout_s)
