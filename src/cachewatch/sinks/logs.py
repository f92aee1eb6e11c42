"""The log sink: one ``cachewatch.request`` event per exchange, silent unless asked.

Where the event goes:

- a logger the caller passed (``logger=``): a standard-library ``logging.Logger`` (or
  ``LoggerAdapter``) gets the stdlib form below; anything else is treated as a
  structlog-style logger and called as ``logger.info("cachewatch.request", **fields)``;
- otherwise, when the application has configured structlog (``structlog.is_configured()``,
  checked only if structlog is already imported), ``structlog.get_logger("cachewatch")``;
- otherwise the standard-library logger ``cachewatch``, at INFO. It prints nothing until
  the application configures logging, and a disabled logger costs one
  ``isEnabledFor`` call: the event is not even built.

The stdlib form: the message ``cachewatch.request key=value ...`` (rendered only when a
handler formats it) and the fields as a dict on the log record's ``cachewatch``
attribute, for JSON formatters. cachewatch never configures logging or structlog and
never writes to stdout. The event carries labels, counts, timings and identifiers
only: no prompt, completion, key or header.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from ..accounting._records import RequestInfo, UsageRecord

__all__ = ["LogSink", "log_fields"]

EVENT = "cachewatch.request"

_LOG = logging.getLogger("cachewatch")
_INFO = logging.INFO


class LogSink:
    """Emits the per-request event; see the module docstring for where it goes."""

    name = "log"

    def __init__(self, logger: Any | None = None) -> None:
        self._logger = logger
        self._stdlib = isinstance(logger, (logging.Logger, logging.LoggerAdapter))
        self._structlog: Any = None

    def start(self, info: RequestInfo) -> None:
        return None

    def finish(self, state: object | None, record: UsageRecord) -> None:
        logger = self._logger
        if logger is None:
            logger = self._configured_structlog()
            if logger is None:
                _emit_stdlib(_LOG, record)
                return
        elif self._stdlib:
            _emit_stdlib(logger, record)
            return
        logger.info(EVENT, **log_fields(record))

    def _configured_structlog(self) -> Any:
        """``structlog.get_logger("cachewatch")`` once the application configured structlog."""
        if self._structlog is not None:
            return self._structlog
        structlog = sys.modules.get("structlog")
        if structlog is None:
            return None
        try:
            if not structlog.is_configured():
                return None
            self._structlog = structlog.get_logger("cachewatch")
        except Exception:  # a structlog without is_configured(): stay on the stdlib logger
            return None
        return self._structlog


def _emit_stdlib(logger: Any, record: UsageRecord) -> None:
    if not logger.isEnabledFor(_INFO):
        return
    fields = log_fields(record)
    logger.info("%s %s", EVENT, _KeyValues(fields), extra={"cachewatch": fields})


class _KeyValues:
    """Renders the fields as ``key=value`` pairs, only if a handler formats the message."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self._fields = fields

    def __str__(self) -> str:
        return " ".join(f"{key}={_value(value)}" for key, value in self._fields.items())


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def log_fields(record: UsageRecord) -> dict[str, Any]:
    """The event's fields. Seconds are rounded to the microsecond and money to 1e-9.

    ``round(x * 1e6) / 1e6`` is ``round(x, 6)`` at a third of the cost; the two differ
    only when ``x`` is within a rounding error of a half-way case, and then by one unit
    of the last kept digit.
    """
    info = record.request
    fields: dict[str, Any] = {
        "provider": info.provider,
        "api": info.api,
        "model": info.model,
        "workspace": info.workspace,
        "outcome": record.outcome.label,
        "status_code": record.status_code,
        "stream": record.stream,
        "duration_s": round(record.duration * 1e6) / 1e6,
        "server_address": info.server_address,
    }
    if record.time_to_first_token is not None:
        fields["time_to_first_token_s"] = round(record.time_to_first_token * 1e6) / 1e6
    if record.response_model:
        fields["response_model"] = record.response_model
    if record.response_id:
        fields["response_id"] = record.response_id
    if record.finish_reasons:
        fields["finish_reasons"] = list(record.finish_reasons)
    if record.error_type:
        fields["error_type"] = record.error_type
    usage = record.usage
    if usage is not None:
        fields["tokens"] = usage.as_partition()
        fields["prompt_tokens_total"] = usage.prompt_total
    cost = record.cost
    if cost is not None:
        fields["cost"] = round(cost.total * 1e9) / 1e9
        fields["cache_savings"] = round(cost.savings * 1e9) / 1e9
        fields["cache_write_premium"] = round(cost.write_premium * 1e9) / 1e9
        fields["currency"] = cost.currency
    fields.update(record.extra)  # the stage fields (breakpoints, miss verdict, advice...), flat
    return fields
