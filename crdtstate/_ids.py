"""Distinct id types shared by every layer.

Owns the vocabulary of identifiers; imports nothing from the project.
"""

from __future__ import annotations

import re
from typing import NewType

ReplicaId = NewType("ReplicaId", str)
"""Stable id of one replica (one data directory), kept in its store."""

Namespace = NewType("Namespace", str)
"""One shared document: an agent identity or a shared board."""

Seq = NewType("Seq", int)
"""Relay sequence number of an accepted update, per namespace, starting at 1."""

OpId = NewType("OpId", int)
"""Per-replica id of a local write; (replica id, op id) names an update at the relay."""

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_REPLICA_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def validate_namespace(value: str) -> Namespace:
    """Return ``value`` as a :data:`Namespace` or raise ``ValueError`` saying why not.

    Namespaces become file names and URL path segments, so they are restricted to
    ``[A-Za-z0-9._-]``, start with a letter or digit, and are at most 128 characters.
    """
    if not isinstance(value, str) or not _NAMESPACE_RE.match(value):
        raise ValueError(
            f"invalid namespace {value!r}: use 1-128 characters from [A-Za-z0-9._-], "
            "starting with a letter or digit"
        )
    return Namespace(value)


def validate_replica_id(value: str) -> ReplicaId:
    """Return ``value`` as a :data:`ReplicaId` or raise ``ValueError`` saying why not."""
    if not isinstance(value, str) or not _REPLICA_RE.match(value):
        raise ValueError(
            f"invalid replica id {value!r}: use 1-64 characters from [A-Za-z0-9._:-], "
            "starting with a letter or digit"
        )
    return ReplicaId(value)
