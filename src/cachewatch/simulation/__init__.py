"""The provider's prompt cache, simulated: what caching would do, without sending a byte.

* ``_cache`` / ``_profiles``: the cache model (prefix hashes, 20-position lookback,
  per-model minimums, TTLs refreshed on a hit, entries readable once the writing
  response has started, mixed-TTL billing) and the endpoint profiles it reads. The
  emulator serves HTTP around the same code.
"""

from __future__ import annotations

__all__: list[str] = []
