"""Request -> planner: where ``cache_control`` breakpoints go (``breakpoints="auto"``).

Endpoint capability profiles, local token estimates, the learning placement policy and
the request hygiene that asks a stream for its usage.

Its public types (:class:`~cachewatch.Profile`, :class:`~cachewatch.ProfileRegistry`) are
imported from :mod:`cachewatch`; nothing is public here.
"""

__all__: list[str] = []
