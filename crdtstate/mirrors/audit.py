"""Audit of one mirror: compare what its file holds with the field's state.

:func:`classify` turns an :class:`~crdtstate.mirrors.spec.Observation` of a file and the
field's :class:`~crdtstate.mirrors.meta.FieldState` into at most one :class:`Finding`:

- ``MISSING``: no file (or no key in the JSON file);
- ``HAND_EDITED``: the content differs from the state and is not what crdtstate last wrote
  (or does not even parse);
- ``STALE``: the content differs from the state but is what crdtstate last wrote (the
  record's stamp is older than the field's winning write), a sync was interrupted, or the
  content is right but carries no ``last_synced`` record;
- ``UNRENDERABLE``: the state's value cannot be written into this mirror (no mapping entry).

A file whose value equals the state is in line, whoever wrote it.

Pure: no file access. Imports the mirrors' ``meta`` and ``spec`` only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from crdtstate.mirrors.meta import FieldState, WriteState, iso_utc, same_value, show
from crdtstate.mirrors.spec import JsonKeyMirror, Mirror, Observation


class FindingKind(enum.StrEnum):
    """What is wrong with a mirror file."""

    MISSING = "missing"
    STALE = "stale"
    HAND_EDITED = "hand-edited"
    UNRENDERABLE = "unrenderable"


_HINTS = {
    FindingKind.MISSING: "`crdtstate mirror sync` writes it",
    FindingKind.STALE: "`crdtstate mirror sync` rewrites it from the state",
    FindingKind.HAND_EDITED: (
        "`crdtstate mirror sync` overwrites it; `crdtstate mirror adopt FILE` makes the edit "
        "a real write of the field instead"
    ),
    FindingKind.UNRENDERABLE: "add the value to the mirror's mapping",
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem found by an audit.

    Attributes:
        kind: what is wrong.
        path: the mirror file.
        field: the mirrored field (``field[key]`` for a map entry).
        key: the JSON key, for JSON mirrors.
        reason: what is wrong, naming the content and the state.
    """

    kind: FindingKind
    path: Path
    field: str
    key: str | None
    where: str
    reason: str

    @property
    def message(self) -> str:
        """A sentence for a person: the mirror, then what is wrong with it."""
        return f"{self.where}: {self.reason}"

    @property
    def hint(self) -> str:
        """What to do about it."""
        return _HINTS[self.kind]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def classify(
    mirror: Mirror,
    observation: Observation,
    state: FieldState,
    render_error: str | None = None,
) -> Finding | None:
    """The finding for one mirror, or ``None`` when the file matches the state.

    Args:
        mirror: the mirror (absolute path).
        observation: what its file holds.
        state: the field's value and winning stamp.
        render_error: why the state cannot be rendered into this mirror, if it cannot.
    """
    key = mirror.key if isinstance(mirror, JsonKeyMirror) else None
    where = mirror.describe()

    def finding(kind: FindingKind, text: str) -> Finding:
        return Finding(kind, mirror.path, mirror.source, key, where, text)

    wanted = show(state.value) + ("" if state.written else " (never written: the default)")
    if render_error is not None:
        return finding(
            FindingKind.UNRENDERABLE, f"the state value cannot be written: {render_error}"
        )
    if not observation.exists:
        what = "the key is missing" if key is not None else "the file is missing"
        return finding(FindingKind.MISSING, f"{what}; the state says {wanted}")
    if observation.error is not None:
        return finding(FindingKind.HAND_EDITED, f"{observation.error}; the state says {wanted}")
    held = f"holds {observation.shown}"
    if observation.shown != show(observation.value):
        held += f" (= {show(observation.value)})"
    meta = observation.meta
    if meta is None:
        if same_value(observation.value, state.value):
            return finding(
                FindingKind.STALE,
                f"{held}, the state's value, but carries no last_synced record "
                "(crdtstate did not write it)",
            )
        return finding(
            FindingKind.HAND_EDITED,
            f"{held} but the state says {wanted}, and no last_synced record shows crdtstate "
            "wrote it",
        )
    if same_value(observation.value, state.value):
        return None  # in line with the state, whoever wrote it
    synced = iso_utc(meta.last_synced)
    if (
        meta.state is WriteState.WRITING
        and observation.sha256 is not None
        and observation.sha256 == meta.previous_sha256
    ):
        return finding(
            FindingKind.STALE,
            f"{held}: a sync started at {synced} was interrupted; the state says {wanted}",
        )
    if not same_value(observation.value, meta.value):
        return finding(
            FindingKind.HAND_EDITED,
            f"{held} but crdtstate last wrote {show(meta.value)} at {synced}; "
            f"the state says {wanted}",
        )
    if meta.stamp is not None and (state.stamp is None or meta.stamp > state.stamp):
        return finding(
            FindingKind.STALE,
            f"{held}, synced at {synced} for write {meta.stamp}, which this replica has "
            f"not seen yet (it lags); its state says {wanted}",
        )
    written_for = "" if meta.stamp is None else f" for write {meta.stamp}"
    changed = "" if state.stamp is None else f" (write {state.stamp})"
    return finding(
        FindingKind.STALE,
        f"{held}, synced at {synced}{written_for}; the field has changed since: "
        f"the state says {wanted}{changed}",
    )
