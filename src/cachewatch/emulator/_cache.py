"""The emulator's prompt-cache model: :mod:`cachewatch.simulation._cache`, re-exported.

The cache model is sans-IO and needs nothing but the standard library, so it lives in
the core package, where the shadow estimate (``breakpoints="shadow"``) and ``cachewatch
replay`` use the very same implementation as the emulator.
"""

from __future__ import annotations

from ..simulation._cache import (
    TTL_SECONDS,
    Breakpoint,
    CacheControlError,
    CacheStore,
    CacheUsage,
    Position,
    Prompt,
    Reservation,
    Ttl,
    resolve_breakpoints,
)

__all__ = [
    "TTL_SECONDS",
    "Breakpoint",
    "CacheControlError",
    "CacheStore",
    "CacheUsage",
    "Position",
    "Prompt",
    "Reservation",
    "Ttl",
    "resolve_breakpoints",
]
