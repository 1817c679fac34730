"""Canonical JSON used for values stored in the doc, digests and element identity.

Canonical means: sorted keys, no whitespace, no NaN or infinity, UTF-8. Two equal JSON
values always encode to the same string, so the encoding can serve as an identity (OR-set
elements) and as the input of the state digest. Imports nothing from the project.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from typing import Any

JSON = Any
"""A value made of dict (str keys), list, str, int, float, bool and None."""


class NestingError(ValueError):
    """A value contains itself or is nested deeper than the encoder can follow."""


def make_encoder(*, sort_keys: bool, ensure_ascii: bool = False) -> Callable[[Any], str]:
    """A compact, strict (no NaN) JSON encoder function.

    ``json.JSONEncoder.encode`` builds a new C encoder object on every call, which costs
    more than encoding a small value. Here the C encoder is built once and reused. It is
    built without a circular-reference table (a shared one would be corrupted by an
    encoding that fails half way), so a value that contains itself ends in Python's
    recursion limit, reported as ``ValueError`` like any value nested too deeply. Where
    the interpreter has no C encoder, or its output differs from the standard encoder's,
    the standard encoder is used.

    Raises (the returned function):
        ValueError: NaN or infinity; :class:`NestingError` for a value containing itself
            or nested too deeply.
        TypeError: something JSON cannot represent.
    """
    standard = json.JSONEncoder(
        sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=ensure_ascii, allow_nan=False
    )

    def encode_standard(value: Any) -> str:
        try:
            return standard.encode(value)
        except RecursionError as exc:
            raise NestingError("value contains itself or is nested too deeply") from exc

    make_c = getattr(json.encoder, "c_make_encoder", None)
    if make_c is None:
        return encode_standard

    def refuse(value: Any) -> Any:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    quote = json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    try:
        iterencode = make_c(None, refuse, quote, None, ":", ",", sort_keys, False, False)
    except TypeError:
        return encode_standard

    def encode(value: Any) -> str:
        kind = type(value)
        if kind is str:  # the common scalars, without the encoder's list of chunks
            return quote(value)
        if kind is int:
            return int.__repr__(value)  # what the encoder writes for an int
        try:
            return "".join(iterencode(value, 0))
        except RecursionError as exc:
            raise NestingError("value contains itself or is nested too deeply") from exc

    probe = {"b": [1, 2.5, -0.0, 1e16, True, None, 'é\n"\\\x00'], "a": {"z": 1, "y": "x"}}
    try:
        if encode(probe) != standard.encode(probe):
            return encode_standard
        encode(float("nan"))
    except ValueError:
        return encode
    return encode_standard  # NaN was accepted: not the strict encoder that was asked for


dumps = make_encoder(sort_keys=True)
"""Encode a value as canonical JSON (raises ``ValueError``/``TypeError``, see
:func:`make_encoder`)."""


def loads(text: str) -> JSON:
    """Decode JSON text (raises ``ValueError`` on malformed input)."""
    return json.loads(text)


quote = json.encoder.encode_basestring
"""The JSON text of a ``str`` (quoted and escaped, non-ASCII kept), as :func:`dumps` writes it."""


def dumps_str_list(items: list[str]) -> str:
    """:func:`dumps` of a list of ``str``, without the general encoder (op tag lists)."""
    if len(items) == 1:
        return f"[{quote(items[0])}]"
    return "[" + ",".join(map(quote, items)) + "]"


class EncodedOp(dict[str, Any]):
    """A semantic operation that carries its own JSON text in :attr:`text`.

    A field builds its op from values it has just encoded for the doc. Handing that text on
    spares the store a second encoding of the same value and the round-trip check, which is
    most of what storing an op costs on the write path. ``text`` must decode to a dict equal
    to this one; only the fields build these.
    """

    __slots__ = ("text",)
    text: str
