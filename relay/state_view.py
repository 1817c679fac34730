"""A namespace's field values as the relay holds them, read through the schema in the doc.

The relay's document is plain Yjs; what its fields mean is written in the doc itself (root
map ``_schema``, one descriptor per field). Rather than decode CRDT layouts here, the
relay's state is merged into a read-only :class:`crdtstate.doc.NamespaceDoc` opened without
a schema: it binds every declared field from its descriptor (as the CLI's ``dump`` does), so
the values, the digest and the schema violations are exactly what a replica computes.

Materializing decodes the whole document, so it runs on a worker thread (each call makes
its own pycrdt doc, used by that thread alone) and results are cached per namespace until
the relay's document changes. Imports ``crdtstate.doc`` and below; no aiohttp.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

from relay.hub import LiveNamespace

__all__ = ["MaterializedState", "StateCache", "materialize"]

_CACHE_ENTRIES_MAX: Final = 32
_READER_ID: Final = "relay-view"
"""Replica id of the read-only doc; it never writes, so it never shows up anywhere."""


@dataclass(frozen=True, slots=True)
class MaterializedState:
    """What a person reads of a namespace.

    Attributes:
        values: every declared field's value, as JSON (``NamespaceDoc.to_dict``).
        fields: every field's descriptor found in the doc (kind, type, default, ...).
        schema: the schema's name and version recorded in the doc (empty if none).
        digest: sha256 of the canonical JSON of ``values``, comparable with heartbeats.
        state_vector: the relay document's state vector, hex.
        violations: ``{"field", "detail"}`` for every part of the doc that does not fit.
    """

    values: dict[str, Any]
    fields: dict[str, dict[str, Any]]
    schema: dict[str, Any]
    digest: str
    state_vector: str
    violations: list[dict[str, str]]


def materialize(update: bytes) -> MaterializedState:
    """Read a whole-document Yjs update through the schema it declares.

    Raises:
        crdtstate.errors.InvalidUpdate: the bytes are not a Yjs update.
    """
    # Imported here, at the first state view, not at start: the schema reader is memory a
    # relay that nobody reads through never needs.
    from crdtstate.doc import NamespaceDoc
    from crdtstate.hlc import HybridClock

    doc = NamespaceDoc(_READER_ID, None, client_id=secrets.randbits(32) or 1, clock=HybridClock())
    doc.apply_update(update, notify=False)
    return MaterializedState(
        values=doc.to_dict(),
        fields=doc.declared(),
        schema=doc.schema_meta(),
        digest=doc.digest(),
        state_vector=doc.state_vector().hex(),
        violations=[{"field": v.field, "detail": v.detail} for v in doc.violations()],
    )


class StateCache:
    """Materialized states of recently viewed namespaces, valid while the doc is unchanged.

    A dashboard polls every few seconds; re-decoding an unchanged document each time would
    cost the relay's event loop for nothing.
    """

    def __init__(self, entries_max: int = _CACHE_ENTRIES_MAX) -> None:
        self._entries: OrderedDict[str, tuple[tuple[object, ...], MaterializedState]] = (
            OrderedDict()
        )
        self._entries_max = entries_max

    async def get(self, live: LiveNamespace) -> MaterializedState:
        """The materialized state of ``live`` now.

        Raises:
            crdtstate.errors.InvalidUpdate: the relay's document cannot be read back.
        """
        # Every accepted update changes doc_bytes and every commit head: together they
        # say whether the document changed since the cached read.
        key = (id(live), live.incarnation, int(live.head), live.doc_bytes)
        cached = self._entries.get(live.name)
        if cached is not None and cached[0] == key:
            self._entries.move_to_end(live.name)
            return cached[1]
        update = live.full_state()  # on the loop thread: the doc belongs to it
        state = await asyncio.get_running_loop().run_in_executor(None, materialize, update)
        self._entries[live.name] = (key, state)
        self._entries.move_to_end(live.name)
        while len(self._entries) > self._entries_max:
            self._entries.popitem(last=False)
        return state
