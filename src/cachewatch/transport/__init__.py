"""The httpx / httpx2 shells: the transports, their response streams and ``wrap()``.

They only move bytes and call the engine at each step of an exchange.
"""
