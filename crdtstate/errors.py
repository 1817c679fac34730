"""Exception tree of crdtstate.

Every exception the library raises on purpose derives from :class:`CrdtStateError`;
branches follow what the caller can do about it::

    CrdtStateError
    ├── SchemaError            a schema or a field declaration is wrong (fix the code)
    │   ├── UnknownFieldError  no field of that name in the namespace
    │   └── WrongKindError     the field exists but is another CRDT kind
    ├── ValidationError        a value does not fit its field's type (fix the value)
    ├── InvalidUpdate          bytes offered to apply_update are not a usable Yjs update
    ├── StoreError             the local store cannot be used
    │   ├── StoreLockedError   another process holds the store
    │   ├── CorruptStoreError  the store's contents cannot be read back
    │   ├── StoreFullError     the disk (or the store's size limit) is full
    │   └── StoreClosedError   the store was closed
    ├── TransportError         the network path to the relay failed
    │   ├── ConnectError
    │   └── ClosedError
    ├── ProtocolError          a peer broke the wire protocol
    │   ├── LocalProtocolError
    │   └── RemoteProtocolError
    ├── AuthError              the relay refused our credentials
    └── SyncTimeout            a wait for the relay did not finish in time

Foreign exceptions (sqlite3, OSError, aiohttp, pycrdt's ValueError) are translated at
the seam where they occur with ``raise ... from exc``. A bad value found in a peer's
document is not raised at all: it is reported as a :class:`SchemaViolation` record.

This module imports nothing from the project.
"""

from __future__ import annotations

from dataclasses import dataclass


class CrdtStateError(Exception):
    """Root of every error raised by crdtstate."""


class SchemaError(CrdtStateError):
    """A schema, a field declaration or a use of a field does not make sense."""


class UnknownFieldError(SchemaError, KeyError):
    """The namespace has no field of that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown field"


class WrongKindError(SchemaError, TypeError):
    """An operation was asked of a field of another CRDT kind (``inc`` on an OR-set)."""


class ValidationError(CrdtStateError, ValueError):
    """A value does not fit its field's declared type.

    Attributes:
        field: name of the field the value was meant for.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"field {field!r}: {message}")
        self.field = field


class InvalidUpdate(CrdtStateError, ValueError):
    """Bytes given to ``apply_update`` are garbage, truncated or too large.

    The document and the store are left exactly as they were.
    """


class StoreError(CrdtStateError):
    """The local store cannot be opened, read or written."""


class StoreLockedError(StoreError):
    """Another process (or another open replica in this process) holds the store."""


class CorruptStoreError(StoreError):
    """The store's files exist but their contents cannot be read back."""


class StoreFullError(StoreError):
    """The store's disk (or its size limit) is full: commits fail until space is freed.

    Writes already taken are kept and retried; new ones are refused before they change
    anything while the failure lasts.
    """


class StoreClosedError(StoreError):
    """The store (or the replica owning it) was already closed."""


class TransportError(CrdtStateError):
    """The connection to the relay failed."""


class ConnectError(TransportError):
    """The relay could not be reached."""


class ClosedError(TransportError):
    """The connection was closed while in use."""


class ProtocolError(CrdtStateError):
    """The wire protocol was broken."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class AuthError(CrdtStateError):
    """The relay refused our token, our key or our signature."""


class SyncTimeout(CrdtStateError, TimeoutError):
    """Waiting for the relay (acknowledgement, catch-up) took longer than allowed."""


@dataclass(frozen=True, slots=True)
class SchemaViolation:
    """A report (not an exception) that a field's content in the doc has a foreign shape.

    Attributes:
        field: the field whose content was wrong.
        detail: what was wrong, for a person.
        key: the doc key (writer slot, tag) holding the bad content, when there is one.
    """

    field: str
    detail: str
    key: str | None = None
