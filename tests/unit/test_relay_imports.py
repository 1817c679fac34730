"""Starting the relay imports only what serving needs: its memory is mostly its imports."""

from __future__ import annotations

import json
import subprocess
import sys

_LOADED = """
import json, sys
import relay.__main__
print(json.dumps(sorted(sys.modules)))
"""

# Loaded on first use: the first signed update, the first drift or state view, the NATS
# backend, the replica side of crdtstate. The settings are plain dataclasses (no pydantic).
_LAZY = (
    "cryptography",
    "pydantic",
    "rich",
    "nats",
    "crdtstate.replica",
    "crdtstate.store",
    "crdtstate.drift",
    "crdtstate.doc",
    "crdtstate.schema",
    "relay.drift_view",
    "relay.backend.nats",
)


def test_relay_start_does_not_import_optional_modules() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _LOADED], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    loaded = set(json.loads(out))
    assert "relay.app" in loaded
    assert sorted(name for name in _LAZY if name in loaded) == []


def test_crdtstate_names_still_import_on_use() -> None:
    import crdtstate

    assert crdtstate.Replica.__name__ == "Replica"
    assert crdtstate.Durability is not None
    assert "Schema" in dir(crdtstate)
