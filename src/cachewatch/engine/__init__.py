"""The sans-IO core: one :class:`Engine` per transport, one :class:`Exchange` per request.

The engine classifies a request (API, provider, workspace), asks the planner for a body,
registers the request with the miss diagnosis, feeds the response bytes to the observer,
builds the usage record and hands it to the sinks. It never does I/O itself: the
transport shells and the proxy move the bytes and call into it.

Internal: nothing here is public API.
"""

__all__: list[str] = []
