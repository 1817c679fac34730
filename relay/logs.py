"""Structured logs: one JSON object per line on stderr.

Fields: ``ts`` (unix seconds), ``level``, ``logger``, ``msg`` and every ``extra=`` key.
Owns log formatting only.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Final

__all__ = ["JsonFormatter", "configure_logging"]

_STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` with its extra fields."""
        data: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(level: str) -> None:
    """Send every log record of the process to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log per request is noise at this volume.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
