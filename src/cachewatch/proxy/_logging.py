"""The proxy's request log: one JSON line per proxied request.

The proxy is an application, so unlike the library it configures the ``cachewatch``
logger itself. The lines carry the ``cachewatch.request`` fields: no credentials, no
prompt or completion text.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

import orjson

__all__ = ["log_json_lines"]


class _JsonLines(logging.Formatter):
    """One JSON object per record: the ``cachewatch.request`` fields, or the message."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
        }
        fields = getattr(record, "cachewatch", None)
        if isinstance(fields, dict):
            line["event"] = "cachewatch.request"
            line.update(fields)
        else:
            line["event"] = record.getMessage()
        return orjson.dumps(line, default=str).decode()


def log_json_lines(stream: TextIO | None = None) -> None:
    """One JSON line per proxied request on ``stream`` (default stdout).

    The proxy is an application, so it configures the library's stdlib logger
    ``cachewatch`` (once per process); the events carry no credentials.
    """
    log = logging.getLogger("cachewatch")
    if any(isinstance(h.formatter, _JsonLines) for h in log.handlers):
        return
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(_JsonLines())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
