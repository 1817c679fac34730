"""What the relay itself says: its document (``/v1/namespaces/NS/state``), its view of the
replicas (``/v1/namespaces/NS/replicas``), and the admin snapshot trigger.

Why: convergence (C1) must include the relay's own document, not only the replicas; detection
(C10) must tell the truth — a replica cut off is reported as disconnected, and after the heal
every replica is reported converged with the digest they really hold; and compaction while a
replica is cut off (F21) needs a way to make the relay snapshot now.

Blocking standard-library HTTP with a timeout; a relay that lacks an endpoint answers None.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

TIMEOUT_S = 5.0


def _request(url: str, method: str = "GET") -> dict[str, Any] | None:
    data = b"" if method == "POST" else None
    request = urllib.request.Request(url, method=method, data=data)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            body: dict[str, Any] = json.load(response)
            return body
    except (urllib.error.URLError, OSError, ValueError):
        return None


def relay_state(port: int, namespace: str) -> dict[str, Any] | None:
    """The relay's materialized document (values, digest, state vector), or None."""
    return _request(f"http://127.0.0.1:{port}/v1/namespaces/{namespace}/state")


def relay_replicas(port: int, namespace: str) -> dict[str, Any] | None:
    """The relay's drift view of every replica of ``namespace``, or None."""
    return _request(f"http://127.0.0.1:{port}/v1/namespaces/{namespace}/replicas")


def snapshot_now(port: int, namespace: str) -> dict[str, Any] | None:
    """Ask the relay to snapshot (and compact) ``namespace`` now (open dev mode relay)."""
    return _request(f"http://127.0.0.1:{port}/admin/namespaces/{namespace}/snapshot", "POST")
