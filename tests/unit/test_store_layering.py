"""The store and the identity sit below everything: bytes and keys only, no pycrdt."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import crdtstate.identity
import crdtstate.store

_ALLOWED_PROJECT_MODULES = (
    "crdtstate._codec",  # a leaf: imports nothing from the project
    "crdtstate._ids",
    "crdtstate.errors",
    "crdtstate.store",
)
_SOURCES = [
    *sorted(Path(crdtstate.store.__file__).parent.glob("*.py")),
    Path(crdtstate.identity.__file__),
]


def _imports(source: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("source", _SOURCES, ids=lambda p: p.name)
def test_module_imports_nothing_above_the_store(source: Path) -> None:
    imported = _imports(source)
    assert not {n for n in imported if n.split(".")[0] == "pycrdt"}
    project = {n for n in imported if n.split(".")[0] == "crdtstate"}
    above = {n for n in project if not n.startswith(_ALLOWED_PROJECT_MODULES)}
    assert not above, f"{source.name} imports {sorted(above)}"


def test_every_public_name_is_exported() -> None:
    assert sorted(crdtstate.store.__all__) == sorted(
        [
            "NO_OP_ID",
            "NO_SEQ",
            "Durability",
            "LoadedState",
            "MemoryStore",
            "OutboxEntry",
            "SqliteStore",
            "Store",
            "StoreVersionError",
            "open_store",
        ]
    )
    for name in crdtstate.store.__all__:
        assert hasattr(crdtstate.store, name)
