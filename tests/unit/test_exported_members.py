"""The package root's public API: ``__all__`` lists exactly its public names, sorted."""

from __future__ import annotations

import inspect

import crdtstate

PUBLIC_API = {
    "AuthError",
    "Change",
    "ConnectError",
    "CorruptStoreError",
    "CrdtStateError",
    "Durability",
    "Field",
    "FieldKind",
    "GCounter",
    "HybridClock",
    "InvalidUpdate",
    "LWWMap",
    "LWWRegister",
    "Log",
    "LogEntry",
    "Namespace",
    "NamespaceDoc",
    "ORSet",
    "OpId",
    "PNCounter",
    "Replica",
    "ReplicaId",
    "Schema",
    "SchemaError",
    "SchemaViolation",
    "Seq",
    "Stamp",
    "StoreClosedError",
    "StoreError",
    "StoreFullError",
    "StoreLockedError",
    "SyncTimeout",
    "TransportError",
    "UnknownFieldError",
    "ValidationError",
    "ValueType",
    "WrongKindError",
    "__version__",
    "schema_from_descriptor",
}


def test_all_lists_every_public_name_once_in_sorted_order() -> None:
    # Names load on first use (PEP 562): resolve every listed one before looking.
    for name in dir(crdtstate):
        getattr(crdtstate, name)
    included_private_members = ["__version__"]
    public = [
        name
        for name, value in vars(crdtstate).items()
        if (not name.startswith("_") or name in included_private_members)
        and not inspect.ismodule(value)  # submodules become attributes when imported
        and name != "TYPE_CHECKING"
    ]
    assert crdtstate.__all__ == sorted(public)
    assert len(set(crdtstate.__all__)) == len(crdtstate.__all__)


def test_the_public_api_is_pinned() -> None:
    assert set(crdtstate.__all__) == PUBLIC_API
    for name in crdtstate.__all__:
        assert getattr(crdtstate, name) is not None


def test_exported_errors_share_one_root() -> None:
    errors = [getattr(crdtstate, n) for n in crdtstate.__all__ if n.endswith("Error")]
    errors.append(crdtstate.InvalidUpdate)
    errors.append(crdtstate.SyncTimeout)
    assert all(issubclass(e, crdtstate.CrdtStateError) for e in errors)
