"""``cachewatch proxy``: a loopback reverse proxy running the same engine for any client."""
