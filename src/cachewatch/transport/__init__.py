"""The httpx / httpx2 shells: the transports, their response streams and ``wrap()``.

They only move bytes and call the engine at each step of an exchange.

The transports and :func:`~cachewatch.wrap` are imported from :mod:`cachewatch`; nothing is
public here.
"""

__all__: list[str] = []
