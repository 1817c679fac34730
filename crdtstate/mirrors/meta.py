"""What a mirror records about its last write, and the state it is compared with.

:class:`MirrorMeta` is the ``last_synced`` record: the value crdtstate wrote, the stamp of
the field's winning write at that moment, and when. It lives in a sidecar
``<name>.meta.json`` for text mirrors and under ``"_crdtstate"`` inside JSON files.
:class:`FieldState` is a field's current value and winning stamp as read from a replica.

Pure: no file access; imports ``_codec`` and ``hlc`` only.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from crdtstate import _codec
from crdtstate.hlc import Stamp

META_VERSION = 1


def canonical(value: Any) -> str:
    """Canonical JSON of a value: the identity used to compare mirror and state values."""
    return _codec.dumps(value)


def same_value(a: Any, b: Any) -> bool:
    """Whether two JSON values are equal as JSON (``True`` is not ``1``)."""
    try:
        return canonical(a) == canonical(b)
    except (TypeError, ValueError):
        return False


def show(value: Any) -> str:
    """A short JSON rendering of a value for messages."""
    try:
        text = canonical(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def iso_utc(ts: float) -> str:
    """Seconds since the epoch as ISO 8601 UTC with milliseconds (``2025-01-02T03:04:05.678Z``)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class FieldState:
    """A mirrored field's value (as JSON) and the stamp of its winning write.

    Attributes:
        value: the value as JSON (``None`` for an absent map key).
        stamp: the winning write's stamp; ``None`` when nobody ever wrote the field, so
            ``value`` is the schema default.
    """

    value: Any
    stamp: Stamp | None

    @property
    def written(self) -> bool:
        """Whether any replica ever wrote the field (otherwise the value is the default)."""
        return self.stamp is not None


class WriteState(enum.StrEnum):
    """Progress of a text mirror write: the sidecar is written before and after the file."""

    WRITING = "writing"
    SYNCED = "synced"


def stamp_to_json(stamp: Stamp | None) -> dict[str, Any] | None:
    """JSON form of a stamp."""
    if stamp is None:
        return None
    return {"wall_ms": stamp.wall_ms, "counter": stamp.counter, "replica_id": stamp.replica_id}


def stamp_from_json(obj: Any) -> Stamp | None:
    """Stamp from its JSON form; ``None`` for null or anything malformed."""
    if not isinstance(obj, dict):
        return None
    wall, counter, replica = obj.get("wall_ms"), obj.get("counter"), obj.get("replica_id")
    if (
        isinstance(wall, int)
        and isinstance(counter, int)
        and not isinstance(wall, bool)
        and not isinstance(counter, bool)
        and isinstance(replica, str)
    ):
        return Stamp(wall, counter, replica)
    return None


@dataclass(frozen=True, slots=True)
class MirrorMeta:
    """The ``last_synced`` record of a mirror.

    Attributes:
        field: the mirrored field.
        value: the state value (JSON) crdtstate wrote into the mirror.
        stamp: the field's winning stamp when it was written (``None``: default value).
        last_synced: when (seconds since the epoch).
        state: ``WRITING`` while a text mirror is being replaced (a crash leaves it so).
        previous_sha256: for ``WRITING``, the sha256 of the content being replaced.
    """

    field: str
    value: Any
    stamp: Stamp | None
    last_synced: float
    state: WriteState = WriteState.SYNCED
    previous_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object."""
        out: dict[str, Any] = {
            "crdtstate_mirror": META_VERSION,
            "field": self.field,
            "value": self.value,
            "stamp": stamp_to_json(self.stamp),
            "last_synced": iso_utc(self.last_synced),
            "last_synced_ts": round(self.last_synced, 3),
            "state": str(self.state),
        }
        if self.previous_sha256 is not None:
            out["previous_sha256"] = self.previous_sha256
        return out

    @classmethod
    def from_json(cls, obj: Any) -> MirrorMeta | None:
        """Parse a record; ``None`` when ``obj`` is not one (missing keys, wrong types)."""
        if not isinstance(obj, dict) or obj.get("crdtstate_mirror") != META_VERSION:
            return None
        field, ts = obj.get("field"), obj.get("last_synced_ts")
        if (
            not isinstance(field, str)
            or "value" not in obj
            or isinstance(ts, bool)
            or not isinstance(ts, int | float)
            or not math.isfinite(ts)
        ):
            return None
        try:
            state = WriteState(obj.get("state", "synced"))
        except ValueError:
            return None
        previous = obj.get("previous_sha256")
        return cls(
            field=field,
            value=obj["value"],
            stamp=stamp_from_json(obj.get("stamp")),
            last_synced=float(ts),
            state=state,
            previous_sha256=previous if isinstance(previous, str) else None,
        )
