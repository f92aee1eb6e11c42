"""structlog sink: one ``cachewatch.request`` event per exchange.

The logger is injected, or fetched lazily with ``structlog.get_logger("cachewatch")``
at the first event, so that it follows whatever configuration the application set up.
cachewatch never calls ``structlog.configure()``. The event carries labels, counts,
timings and identifiers only: no prompt, completion, key or header.
"""

from __future__ import annotations

from typing import Any

from ..accounting._records import RequestInfo, UsageRecord

__all__ = ["StructlogSink", "log_fields"]


class StructlogSink:
    name = "log"

    def __init__(self, logger: Any | None = None) -> None:
        self._logger = logger

    @property
    def logger(self) -> Any:
        if self._logger is None:
            import structlog

            self._logger = structlog.get_logger("cachewatch")
        return self._logger

    def start(self, info: RequestInfo) -> None:
        return None

    def finish(self, state: object | None, record: UsageRecord) -> None:
        logger = self._logger if self._logger is not None else self.logger
        logger.info("cachewatch.request", **log_fields(record))


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
    if record.extra:
        fields.update(record.extra)
    return fields
