"""The clock the emulator measures TTLs on, and a manual one for tests."""

from __future__ import annotations

import threading
from typing import Protocol

__all__ = ["Clock", "ManualClock"]


class Clock(Protocol):
    """Anything called with no arguments that returns seconds (``time.monotonic`` fits)."""

    def __call__(self) -> float: ...


class ManualClock:
    """A clock that only moves when told to.

    Example::

        clock = ManualClock()
        app = create_app(clock=clock)
        ...
        clock.advance(301)  # every 5-minute entry written so far has expired
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds``; returns the new time."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += seconds
            return self._now
