"""Errors of the fault proxy.

Owns the fault proxy's branch of the exception tree::

    CrdtStateError
    └── FaultProxyError        the fault proxy refused or failed an operation
        ├── ApiError           an API request gets a non-2xx answer (carries status, message)
        └── ListenError        a listen address cannot be parsed, resolved or bound

Imports only :mod:`crdtstate.errors`; nothing from aiohttp or the data plane.
"""

from __future__ import annotations

from typing import Any

from crdtstate.errors import CrdtStateError


class FaultProxyError(CrdtStateError):
    """The fault proxy refused or failed an operation."""


class ApiError(FaultProxyError):
    """An API request that must be answered with an error status.

    Attributes:
        status: HTTP status code to answer with.
        message: the ``error`` text of the JSON body, verbatim as Toxiproxy words it.
        extra: additional keys of the error body (``/populate`` adds ``proxies``).
    """

    def __init__(self, status: int, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.extra: dict[str, Any] = dict(extra or {})

    def body(self) -> dict[str, Any]:
        """Return the JSON error body: ``{"error": message, "status": code, **extra}``."""
        return {"error": self.message, "status": self.status, **self.extra}


class ListenError(FaultProxyError):
    """A listen address cannot be parsed, resolved or bound.

    The message mimics the text Toxiproxy's Go server reports, e.g.
    ``listen tcp 127.0.0.1:3310: bind: address already in use``.
    """


def bad_request(detail: str) -> ApiError:
    """Return the 400 ``bad request body: <detail>`` error."""
    return ApiError(400, f"bad request body: {detail}")
