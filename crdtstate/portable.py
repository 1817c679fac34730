"""The portable export file: a namespace's whole state in one JSON document.

Format (version 1)::

    {"format": "crdtstate-export", "version": 1, "namespace": "...",
     "exported_at": <unix s>, "replica_id": "...", "schema": {<field descriptors>},
     "digest": "<sha256 of the state>", "update": "<base64 of a full Yjs update>"}

Importing merges (it never replaces), so the same file can be imported twice, into a fresh
instance or across an air gap, and state converges as with any other update.
Imports only ``errors`` and ``_codec``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crdtstate.errors import CrdtStateError

FORMAT = "crdtstate-export"
VERSION = 1
MAX_EXPORT_BYTES = 256 << 20


class ExportFileError(CrdtStateError):
    """An export file cannot be read or is not a crdtstate export."""


@dataclass(frozen=True, slots=True)
class Export:
    """The content of an export file."""

    namespace: str
    update: bytes
    schema: dict[str, Any]
    digest: str
    replica_id: str
    exported_at: float


def write_export(path: Path, export: Export) -> None:
    """Write ``export`` to ``path`` atomically (temp file, fsync, rename)."""
    body = {
        "format": FORMAT,
        "version": VERSION,
        "namespace": export.namespace,
        "exported_at": export.exported_at or time.time(),
        "replica_id": export.replica_id,
        "schema": export.schema,
        "digest": export.digest,
        "update": base64.b64encode(export.update).decode("ascii"),
    }
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(body, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_export(path: Path) -> Export:
    """Read an export file.

    Raises:
        ExportFileError: unreadable, not JSON, not an export, or of an unknown version.
    """
    try:
        if path.stat().st_size > MAX_EXPORT_BYTES:
            raise ExportFileError(f"{path}: larger than {MAX_EXPORT_BYTES} bytes")
        body = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ExportFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportFileError(f"{path}: not a JSON document: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise ExportFileError(f"{path}: not a crdtstate export (no format {FORMAT!r})")
    if body.get("version") != VERSION:
        raise ExportFileError(f"{path}: export version {body.get('version')!r} is not {VERSION}")
    try:
        update = base64.b64decode(str(body["update"]), validate=True)
        return Export(
            namespace=str(body["namespace"]),
            update=update,
            schema=dict(body.get("schema") or {}),
            digest=str(body.get("digest", "")),
            replica_id=str(body.get("replica_id", "")),
            exported_at=float(body.get("exported_at", 0.0)),
        )
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ExportFileError(f"{path}: malformed export: {exc}") from exc
