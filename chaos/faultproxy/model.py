"""Request bodies of the Toxiproxy API: JSON decoding and typed input models.

Owns the parsing rules of spec §2 (Go ``encoding/json`` semantics as the reference uses
them): unknown keys are ignored, a ``null`` value means "absent", a value of the wrong JSON
type is a 400 ``bad request body: <where>: <what>``, integer fields take JSON integers only
(``100.0``, ``"100"`` and ``true`` are refused), ``toxicity`` takes any finite number in
float32 range. Toxic attributes are additionally bounded to ``0 ..= 2**63 - 1``: a negative
or out-of-int64 value is refused with the attribute named.

Must not import aiohttp or anything of the data plane; only pydantic, the standard
library and :mod:`chaos.faultproxy.errors`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from chaos.faultproxy.errors import ApiError, bad_request

INT64_MAX = 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38

AttrInt = Annotated[int, Field(ge=0, le=INT64_MAX)]
"""A toxic attribute: a JSON integer, 0 ..= int64 max (Go's field type is int64)."""

Toxicity = Annotated[float, Field(ge=-FLOAT32_MAX, le=FLOAT32_MAX, allow_inf_nan=False)]
"""Probability that a toxic acts on a link; any finite float32 (≤ 0 never, ≥ 1 always)."""


class _Input(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class ProxyInput(_Input):
    """Body of ``POST /proxies`` and one entry of ``POST /populate``."""

    name: str = ""
    listen: str = ""
    upstream: str = ""
    enabled: bool = True


class ProxyUpdateInput(_Input):
    """Body of ``POST|PATCH /proxies/{proxy}``; absent fields keep the current value."""

    name: str | None = None
    listen: str | None = None
    upstream: str | None = None
    enabled: bool | None = None


class ToxicInput(_Input):
    """Body of ``POST /proxies/{proxy}/toxics``; ``attributes`` is checked per type later."""

    name: str = ""
    type: str = ""
    stream: str = "downstream"
    toxicity: Toxicity = 1.0
    attributes: Any = None


class ToxicUpdateInput(_Input):
    """Body of ``POST|PATCH /proxies/{proxy}/toxics/{toxic}``."""

    toxicity: Toxicity | None = None
    attributes: Any = None


class Attributes(_Input):
    """Base of every toxic type's attributes (all JSON integers, zero by default)."""


class NoopAttributes(Attributes):
    """``noop``: no attributes."""


class LatencyAttributes(Attributes):
    """``latency``: delay each chunk by ``latency`` ± ``jitter`` milliseconds."""

    latency: AttrInt = 0
    jitter: AttrInt = 0


class BandwidthAttributes(Attributes):
    """``bandwidth``: at most ``rate`` KB/s (1 KB = 1000 bytes); 0 stalls the stream."""

    rate: AttrInt = 0


class SlowCloseAttributes(Attributes):
    """``slow_close``: hold the close for ``delay`` milliseconds."""

    delay: AttrInt = 0


class TimeoutAttributes(Attributes):
    """``timeout``: black hole; close after ``timeout`` idle milliseconds (0 = never)."""

    timeout: AttrInt = 0


class ResetPeerAttributes(Attributes):
    """``reset_peer``: TCP RST ``timeout`` milliseconds after the first data."""

    timeout: AttrInt = 0


class SlicerAttributes(Attributes):
    """``slicer``: cut chunks into ~``average_size`` ± ``size_variation`` byte pieces."""

    average_size: AttrInt = 0
    size_variation: AttrInt = 0
    delay: AttrInt = 0


class LimitDataAttributes(Attributes):
    """``limit_data``: close the link once ``bytes`` bytes went through."""

    bytes: AttrInt = 0


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON literal {name}")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_WHITESPACE = " \t\r\n"


def decode_json(raw: bytes) -> Any:
    """Decode the first JSON value of a request body.

    Args:
        raw: the body bytes (any content type).

    Returns:
        The decoded value; bytes after the first value are ignored, as Go's decoder does.

    Raises:
        ApiError: 400 ``bad request body: ...`` for an empty body, invalid UTF-8, invalid
            JSON, ``NaN``/``Infinity`` literals or nesting too deep to decode.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"invalid UTF-8 at byte {exc.start}") from None
    start = len(text) - len(text.lstrip(_WHITESPACE))
    if start == len(text):
        raise bad_request("EOF")
    try:
        value, _end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise bad_request(f"invalid JSON: {exc.msg} at offset {exc.pos}") from None
    except RecursionError:
        raise bad_request("JSON nested too deeply") from None
    except ValueError as exc:  # NaN/Infinity, or an integer literal too long to convert
        raise bad_request(str(exc)) from None
    return value


def without_nulls(obj: dict[str, Any]) -> dict[str, Any]:
    """Return ``obj`` without its ``null`` values (Go leaves such fields at their default)."""
    return {key: value for key, value in obj.items() if value is not None}


_M = TypeVar("_M", bound=BaseModel)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def parse_object(value: Any, model: type[_M], where: str = "") -> _M:
    """Validate a decoded JSON value as ``model``.

    Args:
        value: the decoded value; must be a JSON object.
        model: the input model.
        where: dotted prefix naming the value in error messages (``attributes``).

    Returns:
        The validated model, ``null`` members treated as absent.

    Raises:
        ApiError: 400 ``bad request body: <where.field>: <what was wrong>``.
    """
    if not isinstance(value, dict):
        label = f"{where}: " if where else ""
        raise bad_request(f"{label}expected a JSON object, got {_json_type(value)}")
    try:
        return model.model_validate(without_nulls(value))
    except PydanticValidationError as exc:
        raise _as_bad_request(exc, where) from None


def _as_bad_request(exc: PydanticValidationError, where: str) -> ApiError:
    error = exc.errors(include_url=False)[0]
    path = ".".join(str(part) for part in (where, *error["loc"]) if part != "")
    return bad_request(f"{path}: {error['msg']}" if path else str(error["msg"]))


def parse_body(raw: bytes, model: type[_M]) -> _M:
    """Decode ``raw`` and validate it as ``model`` (see :func:`parse_object`)."""
    return parse_object(decode_json(raw), model)


def parse_populate(raw: bytes) -> list[ProxyInput]:
    """Parse a ``/populate`` body: a JSON array of proxy objects.

    Raises:
        ApiError: 400 ``bad request body: ...`` (with ``"proxies": null`` in the body) for a
            malformed array; 400 ``missing required field: name at proxy N`` (or
            ``upstream``) for the first entry lacking one, 1-based. Nothing is applied.
    """
    try:
        value = decode_json(raw)
        if not isinstance(value, list):
            raise bad_request(f"expected a JSON array, got {_json_type(value)}")
        entries = [parse_object(item, ProxyInput, f"[{index}]") for index, item in enumerate(value)]
    except ApiError as exc:
        raise ApiError(exc.status, exc.message, {"proxies": None}) from None
    for number, entry in enumerate(entries, start=1):
        if not entry.name:
            raise ApiError(400, f"missing required field: name at proxy {number}")
        if not entry.upstream:
            raise ApiError(400, f"missing required field: upstream at proxy {number}")
    return entries
