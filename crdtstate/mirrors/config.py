"""Where mirror declarations come from: a schema's ``__mirrors__`` or a TOML/JSON file.

A config file names fields and their mirrors for tools that run without the agent's code
(the CLI opens replicas with ``schema=None``)::

    # mirrors.toml; relative paths are taken from this file's directory, or from `root`
    root = "data"

    [[mirror]]
    field = "killswitch"
    type = "text"                 # a text file holding the mapped value
    path = "emergency.txt"
    values = { true = "ACTIVE", false = "INACTIVE" }

    [[mirror]]
    field = "killswitch"
    type = "json"                 # one key of a JSON object file
    path = "config.json"
    key = "emergency_active"

``values`` is a table whose keys are state values written as JSON (``true``, ``3``; a key
that is not JSON is a string), or a list of ``[state value, file value]`` pairs.
``map_key`` selects one key of an ``LWWMap`` field; ``newline`` (text) and ``meta_key``
(JSON) are optional. A ``.json`` file with the same structure is accepted too.

Imports the mirrors' ``spec`` and ``errors`` and ``schema``; reads only the config file.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crdtstate.mirrors.errors import MirrorConfigError
from crdtstate.mirrors.spec import JsonKeyMirror, Mirror, TextMirror
from crdtstate.schema import Schema

CONFIG_BYTES_MAX = 1 << 20
MIRRORS_MAX = 1000

_COMMON_KEYS = {"field", "type", "path", "values", "map_key"}
_KEYS = {
    "text": _COMMON_KEYS | {"newline"},
    "json": _COMMON_KEYS | {"key", "meta_key"},
}


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    """Mirrors read from a config file, with absolute paths.

    Attributes:
        root: the directory relative mirror paths were taken from.
        mirrors: the declared mirrors.
    """

    root: Path
    mirrors: list[Mirror]


def load_mirror_config(path: str | os.PathLike[str]) -> MirrorConfig:
    """Read a TOML (or ``.json``) mirror config.

    Raises:
        MirrorConfigError: the file is missing, unreadable, not TOML/JSON, or declares a
            mirror wrongly; the message names the file, the entry and the problem.
    """
    file = Path(path)
    try:
        with open(file, "rb") as handle:
            data = handle.read(CONFIG_BYTES_MAX + 1)
    except OSError as exc:
        raise MirrorConfigError(f"cannot read mirror config {file}: {exc.strerror or exc}") from exc
    if len(data) > CONFIG_BYTES_MAX:
        raise MirrorConfigError(f"{file}: larger than {CONFIG_BYTES_MAX} bytes")
    try:
        text = data.decode("utf-8")
        raw: Any = json.loads(text) if file.suffix.lower() == ".json" else tomllib.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:  # TOMLDecodeError is a ValueError
        kind = "JSON" if file.suffix.lower() == ".json" else "TOML"
        raise MirrorConfigError(f"{file}: not valid {kind}: {exc}") from exc
    return parse_mirror_config(raw, base=file.parent.absolute(), source=str(file))


def parse_mirror_config(raw: Any, *, base: Path, source: str = "mirror config") -> MirrorConfig:
    """Build mirrors from a decoded config document (see the module docstring).

    Raises:
        MirrorConfigError: anything malformed, naming ``source`` and the entry.
    """
    if not isinstance(raw, dict):
        raise MirrorConfigError(f"{source}: the top level must be a table/object")
    unknown = sorted(set(raw) - {"root", "mirror"})
    if unknown:
        raise MirrorConfigError(
            f"{source}: unknown top-level key(s) {', '.join(map(repr, unknown))} "
            "(allowed: 'root', 'mirror')"
        )
    root_value = raw.get("root", ".")
    if not isinstance(root_value, str) or not root_value or "\x00" in root_value:
        raise MirrorConfigError(f"{source}: 'root' must be a non-empty path string")
    root = Path(os.path.abspath(base / root_value))
    entries = raw.get("mirror", [])
    if not isinstance(entries, list):
        raise MirrorConfigError(f"{source}: 'mirror' must be an array of tables ([[mirror]])")
    if len(entries) > MIRRORS_MAX:
        raise MirrorConfigError(f"{source}: more than {MIRRORS_MAX} mirrors")
    mirrors = [
        _entry(entry, f"{source}: mirror #{n}").resolved(root) for n, entry in enumerate(entries, 1)
    ]
    check_unique(mirrors, source)
    return MirrorConfig(root, mirrors)


def _entry(entry: Any, where: str) -> Mirror:
    if not isinstance(entry, dict):
        raise MirrorConfigError(f"{where}: must be a table/object, got {type(entry).__name__}")
    kind = entry.get("type")
    if not isinstance(kind, str) or kind not in _KEYS:
        raise MirrorConfigError(f'{where}: \'type\' must be "text" or "json", got {kind!r}')
    unknown = sorted(set(entry) - _KEYS[kind])
    if unknown:
        allowed = ", ".join(sorted(_KEYS[kind]))
        raise MirrorConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} for a {kind} mirror "
            f"(allowed: {allowed})"
        )
    for name in ("field", "path"):
        if not isinstance(entry.get(name), str) or not entry[name]:
            raise MirrorConfigError(f"{where}: {name!r} must be a non-empty string")
        if "\x00" in entry[name]:
            raise MirrorConfigError(f"{where}: {name!r} holds a NUL character")
    for name in ("map_key", "key", "meta_key"):
        if name in entry and (not isinstance(entry[name], str) or not entry[name]):
            raise MirrorConfigError(f"{where}: {name!r} must be a non-empty string")
    if "newline" in entry and not isinstance(entry["newline"], bool):
        raise MirrorConfigError(f"{where}: 'newline' must be true or false")
    values = _values(entry["values"], where) if "values" in entry else None
    try:
        if kind == "text":
            return TextMirror(
                entry["field"],
                entry["path"],
                values=values,
                map_key=entry.get("map_key"),
                newline=entry.get("newline", True),
            )
        return JsonKeyMirror(
            entry["field"],
            entry["path"],
            entry.get("key"),
            values=values,
            map_key=entry.get("map_key"),
            meta_key=entry.get("meta_key", "_crdtstate"),
        )
    except MirrorConfigError as exc:
        raise MirrorConfigError(f"{where}: {exc}") from exc


def _values(raw: Any, where: str) -> list[tuple[Any, Any]]:
    if isinstance(raw, dict):
        return [(_state_key(k), v) for k, v in raw.items()]
    if isinstance(raw, list):
        pairs = []
        for item in raw:
            if not isinstance(item, list) or len(item) != 2:
                raise MirrorConfigError(
                    f"{where}: 'values' pairs must be [state value, file value], got {item!r}"
                )
            pairs.append((item[0], item[1]))
        return pairs
    raise MirrorConfigError(f"{where}: 'values' must be a table or a list of pairs")


def _state_key(key: str) -> Any:
    """A table key is a state value written as JSON (``true``, ``3``); otherwise a string."""
    try:
        return json.loads(key)
    except ValueError:
        return key


def mirrors_of_schema(schema: type[Schema]) -> list[Mirror]:
    """The mirrors a schema class declares in ``__mirrors__`` (empty when none).

    Raises:
        MirrorConfigError: ``__mirrors__`` is not a list of mirrors, or names a field the
            schema does not declare.
    """
    declared = getattr(schema, "__mirrors__", None)
    if declared is None:
        return []
    if not isinstance(declared, Sequence) or isinstance(declared, str):
        raise MirrorConfigError(f"{schema.__name__}.__mirrors__ must be a list of mirrors")
    out: list[Mirror] = []
    fields = schema.fields()
    for item in declared:
        if not isinstance(item, Mirror):
            raise MirrorConfigError(
                f"{schema.__name__}.__mirrors__ holds {item!r}, not a TextMirror/JsonKeyMirror"
            )
        if item.field not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise MirrorConfigError(
                f"{schema.__name__}.__mirrors__: {item.describe()} names field "
                f"{item.field!r}, which the schema does not declare (fields: {known})"
            )
        out.append(item)
    return out


def check_unique(mirrors: Sequence[Mirror], source: str) -> None:
    """Refuse two mirrors on one text file, or on one key of one JSON file.

    Raises:
        MirrorConfigError: naming both.
    """
    by_path: dict[str, list[Mirror]] = {}
    for mirror in mirrors:
        path, key = mirror.target
        for other in by_path.get(path, []):
            other_key = other.target[1]
            if key is None or other_key is None or key == other_key:
                raise MirrorConfigError(
                    f"{source}: {mirror.describe()} and {other.describe()} would both write "
                    + ("the same key" if key is not None and other_key is not None else "one file")
                )
        by_path.setdefault(path, []).append(mirror)
