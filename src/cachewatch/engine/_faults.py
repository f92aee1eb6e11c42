"""Fail-open bookkeeping: count every fault cachewatch survives, and log each kind once.

Nothing that goes wrong inside cachewatch may change the caller's traffic. Each stage
(planning, rebuilding the request, observing the body, each sink) catches its own
exceptions and reports them here. The log line names the stage, the exception class
and the code location, never the exception message, which could quote request data.
"""

from __future__ import annotations

import logging
import threading
import traceback
from typing import Any

__all__ = ["FaultRecorder"]

_log = logging.getLogger("cachewatch")


class FaultRecorder:
    """Counts faults in ``cachewatch_internal_errors_total{stage}`` and logs each (stage, type) once."""

    def __init__(self, counter: Any | None) -> None:
        self._counter = counter
        self._logged: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def __call__(self, stage: str, exc: BaseException | str) -> None:
        """Count a fault; ``exc`` is the exception, or the class name of one already handled."""
        try:
            if self._counter is not None:
                self._counter.labels(stage).inc()
            name = exc if isinstance(exc, str) else type(exc).__name__
            key = (stage, name)
            with self._lock:
                if key in self._logged:
                    return
                self._logged.add(key)
            where = "" if isinstance(exc, str) else "".join(traceback.format_tb(exc.__traceback__, limit=-3))
            _log.warning(
                "cachewatch survived an internal fault in stage %r (%s); traffic was not changed.\n%s",
                stage,
                name,
                where.rstrip(),
            )
        except Exception:  # pragma: no cover - the recorder itself must never raise
            pass
