"""The provider's prompt cache, simulated: what caching would do, without sending a byte.

* ``_cache`` / ``_profiles``: the cache model (prefix hashes, 20-position lookback,
  per-model minimums, TTLs refreshed on a hit, entries readable once the writing
  response has started, mixed-TTL billing) and the endpoint profiles it reads. The
  emulator serves HTTP around the same code.
* ``_shadow``: the shadow estimate (``breakpoints="shadow"``): what ``auto`` would have
  placed, simulated on that cache model and calibrated with the billed totals.
* ``_shape`` / ``_replay``: traffic shapes (``record=FILE``, ``cachewatch proxy --record``)
  and ``cachewatch replay``, every strategy on a recorded shape.
* ``_stage``: the shadow estimate and the shape recorder as fail-open stages of the engine.
"""

from __future__ import annotations

__all__: list[str] = []
