"""Exceptions of the file mirrors, hung on the project's tree (``crdtstate.errors``)::

    CrdtStateError
    └── MirrorError             a mirror cannot be written, declared or adopted
        ├── MirrorConfigError   a declaration or a config file is wrong (also a SchemaError)
        ├── MirrorWriteError    the file system refused a mirror write (wraps the OSError)
        └── AdoptError          a hand-edited file cannot be turned into a write

Imports only ``crdtstate.errors``.
"""

from __future__ import annotations

from crdtstate.errors import CrdtStateError, SchemaError


class MirrorError(CrdtStateError):
    """A file mirror cannot be used as asked."""


class MirrorConfigError(MirrorError, SchemaError):
    """A mirror declaration (in a schema or a config file) does not make sense."""


class MirrorWriteError(MirrorError):
    """Writing a mirror file (or its sidecar) failed; the old file is left in place."""


class AdoptError(MirrorError):
    """A mirror file's content cannot be adopted as a write of its field."""
