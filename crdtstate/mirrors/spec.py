"""Mirror declarations and their file formats: :class:`TextMirror` and :class:`JsonKeyMirror`.

A mirror projects one field (an ``LWWRegister``, or one key of an ``LWWMap``) into a legacy
file. This module owns how a value is rendered into the file, how the file is read back
(for audits and adoption, never as a source of truth) and how it is written: atomically,
with a ``last_synced`` record (:class:`~crdtstate.mirrors.meta.MirrorMeta`) in a sidecar
``<name>.meta.json`` for text files or under ``"_crdtstate"`` inside JSON files.

Knows nothing about replicas: callers pass the field's state in. Imports ``crdt.base``
(value types), ``schema`` (field name rules) and the mirrors' own modules.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from crdtstate.crdt.base import ValueType, json_value_fits
from crdtstate.errors import SchemaError
from crdtstate.mirrors._atomic import read_limited, write_atomic
from crdtstate.mirrors.errors import MirrorConfigError, MirrorWriteError
from crdtstate.mirrors.meta import FieldState, MirrorMeta, WriteState, canonical, show
from crdtstate.schema import validate_field_name

SIDECAR_SUFFIX = ".meta.json"
DEFAULT_META_KEY = "_crdtstate"

ValueMapping = Mapping[Any, Any] | Iterable[tuple[Any, Any]]
"""``{state value: file value}`` or pairs of them (pairs allow keys a dict cannot hold)."""


@dataclass(frozen=True, slots=True)
class Observation:
    """What a mirror file holds, read back for an audit (never used as the state).

    Attributes:
        exists: the file (and, for JSON mirrors, the key) is there.
        value: the state value the content stands for (after the reverse mapping).
        error: why the content cannot be read back as a value (then ``value`` is ``None``).
        shown: a short rendering of the content for messages.
        meta: crdtstate's ``last_synced`` record, ``None`` if absent or unreadable.
        sha256: hash of the raw file bytes (text mirrors), for interrupted-write checks.
    """

    exists: bool
    value: Any = None
    error: str | None = None
    shown: str = ""
    meta: MirrorMeta | None = None
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """Result of one mirror write.

    Attributes:
        content_changed: the value in the file changed (otherwise only the stamp did).
        note: something worth telling a person (an unparsable file moved aside).
    """

    content_changed: bool
    note: str | None = None


class Mirror(ABC):
    """One projection of a field into a file. Subclasses define the file format.

    Args:
        field: the mirrored field's name.
        path: the file; a relative path is resolved against the mirror set's root.
        map_key: for an ``LWWMap`` field, the map key mirrored (``None`` for a register).
        values: optional ``{state value: file value}`` mapping; every value the field takes
            must be in it.

    Raises:
        MirrorConfigError: a bad field name, path or mapping.
    """

    kind: str = ""

    def __init__(
        self,
        field: str,
        path: str | os.PathLike[str],
        *,
        map_key: str | None = None,
        values: ValueMapping | None = None,
    ) -> None:
        try:
            self.field = validate_field_name(field)
        except SchemaError as exc:
            raise MirrorConfigError(f"mirror: {exc}") from exc
        if not isinstance(path, str | os.PathLike) or not os.fspath(path).strip():
            raise MirrorConfigError(f"mirror of {field!r}: path must be a non-empty path")
        self.path = Path(os.fspath(path))
        if self.path.name in ("", ".", ".."):
            raise MirrorConfigError(f"mirror of {field!r}: {path!r} does not name a file")
        if map_key is not None and (not isinstance(map_key, str) or not map_key):
            raise MirrorConfigError(f"mirror of {field!r}: map_key must be a non-empty string")
        self.map_key = map_key
        self._to_file: dict[str, Any] = {}
        self._from_file: dict[str, Any] = {}
        if values is not None:
            self._set_values(values)

    # -- declaration -----------------------------------------------------------------------

    def _set_values(self, values: ValueMapping) -> None:
        pairs = list(values.items()) if isinstance(values, Mapping) else list(values)
        if not pairs:
            raise MirrorConfigError(f"{self.describe()}: the value mapping is empty")
        for pair in pairs:
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise MirrorConfigError(
                    f"{self.describe()}: mapping entries must be [state value, file value] "
                    f"pairs, got {pair!r}"
                )
            state_value, file_value = pair
            self._check_file_value(file_value)
            try:
                state_key, file_key = canonical(state_value), canonical(file_value)
            except (TypeError, ValueError) as exc:
                raise MirrorConfigError(
                    f"{self.describe()}: mapping entry {pair!r} is not JSON: {exc}"
                ) from exc
            if state_key in self._to_file:
                raise MirrorConfigError(
                    f"{self.describe()}: state value {state_key} is mapped twice"
                )
            if file_key in self._from_file:
                raise MirrorConfigError(
                    f"{self.describe()}: file value {file_key} is mapped twice, "
                    "so it could not be read back"
                )
            self._to_file[state_key] = file_value
            self._from_file[file_key] = state_value

    def _check_file_value(self, file_value: Any) -> None:
        """Refuse file values the format cannot hold (here: anything but JSON)."""
        try:
            canonical(file_value)
        except (TypeError, ValueError) as exc:
            raise MirrorConfigError(
                f"{self.describe()}: file value {file_value!r} is not JSON: {exc}"
            ) from exc

    @property
    def values(self) -> list[tuple[Any, Any]]:
        """The value mapping as ``(state value, file value)`` pairs (empty: identity)."""
        return [(self._from_file[canonical(f)], f) for f in self._to_file.values()]

    def resolved(self, root: Path) -> Mirror:
        """A copy whose path is absolute (relative paths are taken from ``root``)."""
        out = copy.copy(self)
        out.path = Path(os.path.abspath(root / self.path))
        return out

    @property
    def target(self) -> tuple[str, str | None]:
        """What the mirror occupies: ``(path, key)``; two mirrors may not share one."""
        return (os.path.normcase(os.fspath(self.path)), None)

    @property
    def source(self) -> str:
        """The mirrored state: ``field`` or ``field[key]``."""
        return self.field if self.map_key is None else f"{self.field}[{self.map_key!r}]"

    @abstractmethod
    def describe(self) -> str:
        """A person's name for this mirror (``emergency.txt (text mirror of killswitch)``)."""

    # -- values ----------------------------------------------------------------------------

    def _map_to_file(self, value: Any) -> Any:
        if not self._to_file:
            return value
        try:
            key = canonical(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"value {value!r} is not JSON: {exc}") from exc
        if key not in self._to_file:
            known = ", ".join(sorted(self._to_file))
            raise ValueError(f"state value {show(value)} has no entry in the mapping ({known})")
        return self._to_file[key]

    def _map_from_file(self, file_value: Any) -> Any:
        if not self._from_file:
            return file_value
        key = canonical(file_value)
        if key not in self._from_file:
            known = ", ".join(sorted(self._from_file))
            raise ValueError(f"{show(file_value)} is not one of the mapped values ({known})")
        return self._from_file[key]

    # -- files -----------------------------------------------------------------------------

    @abstractmethod
    def check_renderable(self, value: Any, json_type: ValueType) -> None:
        """Raise ``ValueError`` if ``value`` cannot be written and read back unchanged."""

    @abstractmethod
    def observe(self, json_type: ValueType) -> Observation:
        """Read the file back (for audits and adoption; never as the state)."""

    @abstractmethod
    def write(self, state: FieldState, json_type: ValueType, now: float) -> WriteOutcome:
        """Write ``state`` into the file with a fresh ``last_synced`` record.

        Raises:
            ValueError: the value cannot be rendered (see :meth:`check_renderable`).
            MirrorWriteError: the file system refused; the old file is untouched.
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class TextMirror(Mirror):
    """A field projected into a text file, e.g. ``emergency.txt`` holding ``ACTIVE``.

    The file holds the mapped text (or, without a mapping, a ``str`` field's value as is and
    any other value as JSON) and a newline; the ``last_synced`` record goes in the sidecar
    ``<name>.meta.json``. Reading back ignores surrounding whitespace.

    Example::

        TextMirror("killswitch", "emergency.txt", values={True: "ACTIVE", False: "INACTIVE"})
    """

    kind = "text"

    def __init__(
        self,
        field: str,
        path: str | os.PathLike[str],
        *,
        values: Mapping[Any, str] | Iterable[tuple[Any, str]] | None = None,
        map_key: str | None = None,
        newline: bool = True,
    ) -> None:
        super().__init__(field, path, map_key=map_key, values=values)
        self.newline = bool(newline)

    def _check_file_value(self, file_value: Any) -> None:
        if not isinstance(file_value, str) or not file_value.strip():
            raise MirrorConfigError(
                f"{self.describe()}: mapped texts must be non-empty strings, got {file_value!r}"
            )
        if file_value != file_value.strip():
            raise MirrorConfigError(
                f"{self.describe()}: mapped text {file_value!r} has surrounding whitespace, "
                "which reading back ignores"
            )

    def describe(self) -> str:
        return f"{self.path} (text mirror of {self.source})"

    @property
    def sidecar(self) -> Path:
        """Where the ``last_synced`` record lives: ``<name>.meta.json`` beside the file."""
        return self.path.with_name(self.path.name + SIDECAR_SUFFIX)

    def render(self, value: Any, json_type: ValueType) -> str:
        """The text written for ``value`` (without the newline).

        Raises:
            ValueError: no mapping entry, or not representable.
        """
        mapped = self._map_to_file(value)
        if self._to_file:
            return str(mapped)
        if json_type is ValueType.STR and isinstance(value, str):
            return value
        return canonical(value)

    def parse(self, text: str, json_type: ValueType) -> Any:
        """The state value a (stripped) text stands for.

        Raises:
            ValueError: the text is not a mapped value or does not parse for the field.
        """
        if self._from_file:
            return self._map_from_file(text)
        if json_type is ValueType.STR:
            return text
        try:
            value = json.loads(text)
        except ValueError:
            raise ValueError(f"{show(text)} is not a {json_type} value") from None
        if not json_value_fits(json_type, value):
            raise ValueError(f"{show(text)} is not a {json_type} value")
        return value

    def check_renderable(self, value: Any, json_type: ValueType) -> None:
        text = self.render(value, json_type)
        if "\x00" in text:
            raise ValueError(f"value {show(value)} holds a NUL character")
        if canonical(self.parse(text.strip(), json_type)) != canonical(value):
            raise ValueError(f"value {show(value)} would not read back unchanged from a text file")

    def observe(self, json_type: ValueType) -> Observation:
        meta = self._read_meta()
        try:
            data = read_limited(self.path)
        except (OSError, ValueError) as exc:
            return Observation(True, error=f"cannot be read: {exc}", meta=meta)
        if data is None:
            return Observation(False, meta=meta)
        digest = hashlib.sha256(data).hexdigest()
        try:
            text = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            return Observation(True, error="is not UTF-8 text", meta=meta, sha256=digest)
        shown = show(text)
        try:
            value = self.parse(text, json_type)
        except ValueError as exc:
            return Observation(True, error=str(exc), shown=shown, meta=meta, sha256=digest)
        return Observation(True, value=value, shown=shown, meta=meta, sha256=digest)

    def _read_meta(self) -> MirrorMeta | None:
        try:
            data = read_limited(self.sidecar)
            return None if data is None else MirrorMeta.from_json(json.loads(data))
        except (OSError, ValueError):
            return None

    def _write_meta(self, meta: MirrorMeta) -> None:
        data = json.dumps(meta.to_json(), indent=2, ensure_ascii=False) + "\n"
        write_atomic(self.sidecar, data.encode())

    def write(self, state: FieldState, json_type: ValueType, now: float) -> WriteOutcome:
        self.check_renderable(state.value, json_type)
        data = (self.render(state.value, json_type) + ("\n" if self.newline else "")).encode()
        try:
            current = read_limited(self.path)
        except ValueError:
            current = b""  # oversized: replace it, and never load it
        except OSError as exc:
            raise MirrorWriteError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        meta = MirrorMeta(self.field, state.value, state.stamp, now)
        if current == data:
            self._write_meta(meta)
            return WriteOutcome(content_changed=False)
        # The sidecar announces the write first, so a crash between the two files reads
        # as an interrupted sync (old content, "writing" record), never as a hand edit.
        previous = None if current is None else hashlib.sha256(current).hexdigest()
        self._write_meta(replace(meta, state=WriteState.WRITING, previous_sha256=previous))
        write_atomic(self.path, data)
        self._write_meta(meta)
        return WriteOutcome(content_changed=True)


class JsonKeyMirror(Mirror):
    """A field projected into one top-level key of a JSON object file, e.g.
    ``config.json`` -> ``"emergency_active"``.

    Every other key of the file is kept. The ``last_synced`` record goes under
    ``meta_key`` (default ``"_crdtstate"``), keyed by the mirrored key. A file that is not
    a JSON object is moved aside (``<name>.unparsable-<ms>``) before it is rewritten.

    Example::

        JsonKeyMirror("killswitch", "config.json", key="emergency_active")
    """

    kind = "json"

    def __init__(
        self,
        field: str,
        path: str | os.PathLike[str],
        key: str | None = None,
        *,
        values: ValueMapping | None = None,
        map_key: str | None = None,
        meta_key: str = DEFAULT_META_KEY,
    ) -> None:
        self.key = field if key is None else key
        self.meta_key = meta_key
        super().__init__(field, path, map_key=map_key, values=values)
        if not isinstance(self.key, str) or not self.key:
            raise MirrorConfigError(f"mirror of {field!r}: key must be a non-empty string")
        if not isinstance(meta_key, str) or not meta_key or meta_key == self.key:
            raise MirrorConfigError(
                f"mirror of {field!r}: meta_key must be a non-empty string other than the key"
            )

    def describe(self) -> str:
        return f"{self.path} key {self.key!r} (JSON mirror of {self.source})"

    @property
    def target(self) -> tuple[str, str | None]:
        return (os.path.normcase(os.fspath(self.path)), self.key)

    def check_renderable(self, value: Any, json_type: ValueType) -> None:
        rendered = self._map_to_file(value)
        back = self._map_from_file(json.loads(canonical(rendered)))
        if canonical(back) != canonical(value):
            raise ValueError(f"value {show(value)} would not read back unchanged")

    def _load(self) -> tuple[dict[str, Any] | None, str | None]:
        """The file's object, or ``(None, why)`` when it is missing (``why`` None) or bad."""
        try:
            data = read_limited(self.path)
        except (OSError, ValueError) as exc:
            return None, f"cannot be read: {exc}"
        if data is None:
            return None, None
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            return None, f"does not parse as JSON ({exc})"
        if not isinstance(doc, dict):
            return None, f"holds a JSON {type(doc).__name__}, not an object"
        return doc, None

    def observe(self, json_type: ValueType) -> Observation:
        doc, problem = self._load()
        if doc is None:
            return Observation(problem is not None, error=problem)
        metas = doc.get(self.meta_key)
        meta = MirrorMeta.from_json(metas.get(self.key)) if isinstance(metas, dict) else None
        if self.key not in doc:
            return Observation(False, meta=meta)
        raw = doc[self.key]
        shown = show(raw)
        try:
            value = self._map_from_file(raw)
        except (TypeError, ValueError) as exc:
            return Observation(True, error=str(exc), shown=shown, meta=meta)
        absent_map_key = value is None and self.map_key is not None
        if not self._from_file and not absent_map_key and not json_value_fits(json_type, value):
            error = f"{shown} is not a {json_type} value"
            return Observation(True, error=error, shown=shown, meta=meta)
        return Observation(True, value=value, shown=shown, meta=meta)

    def write(self, state: FieldState, json_type: ValueType, now: float) -> WriteOutcome:
        self.check_renderable(state.value, json_type)
        rendered = self._map_to_file(state.value)
        doc, problem = self._load()
        note = None
        if doc is None:
            if problem is not None:
                note = self._move_aside(problem, now)
            doc = {}
        changed = self.key not in doc or canonical(doc[self.key]) != canonical(rendered)
        doc[self.key] = rendered
        metas = doc.get(self.meta_key)
        if not isinstance(metas, dict):
            metas = {}
        metas[self.key] = MirrorMeta(self.field, state.value, state.stamp, now).to_json()
        doc[self.meta_key] = metas
        write_atomic(self.path, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode())
        return WriteOutcome(content_changed=changed, note=note)

    def _move_aside(self, problem: str, now: float) -> str:
        if self.path.exists() and not self.path.is_file():
            raise MirrorWriteError(f"{self.path} {problem} and is not a regular file; left alone")
        aside = self.path.with_name(f"{self.path.name}.unparsable-{int(now * 1000)}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return f"{self.path} {problem}; it vanished before it could be kept"
        except OSError as exc:
            raise MirrorWriteError(
                f"{self.path} {problem} and cannot be moved aside: {exc.strerror or exc}"
            ) from exc
        return f"{self.path} {problem}; kept as {aside.name} and rewritten"
