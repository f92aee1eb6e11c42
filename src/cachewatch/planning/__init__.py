"""Request -> planner: where ``cache_control`` breakpoints go (``breakpoints="auto"``).

Endpoint capability profiles, local token estimates, the learning placement policy and
the request hygiene that asks a stream for its usage.
"""
