"""Where usage records go: the Sink protocol and the bundled sinks.

A sink sees each exchange twice: ``start`` when the request goes out (OTel opens its
span there) and ``finish`` once the body has ended, with the final
:class:`~cachewatch.UsageRecord`. Sinks never see request or response bodies.
The engine isolates sinks from each other: one that raises is counted in
``cachewatch_internal_errors_total{stage="sink_<name>"}`` and the others still run.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..accounting._records import RequestInfo, UsageRecord

__all__ = ["Sink"]


@runtime_checkable
class Sink(Protocol):
    """Receives one exchange's start and its final record."""

    #: Short identifier used in the ``stage`` label when this sink fails.
    name: str

    def start(self, info: RequestInfo) -> object | None:
        """Called before the request is sent; the return value is handed back to ``finish``."""
        ...

    def finish(self, state: object | None, record: UsageRecord) -> None:
        """Called exactly once per started exchange, when its body has ended or was closed."""
        ...
