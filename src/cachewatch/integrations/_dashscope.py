"""``instrument_dashscope()``: cachewatch for a dashscope 2.0 ``Client`` / ``AsyncClient``.

The 2.0 client keeps its httpx client inside its transport, and its public
``http_client=`` argument is a trap here: a client passed that way gets none of the
SDK's own settings, so requests go out without the ``Authorization`` header and with
httpx's 5-second timeouts. Clients derived with ``with_options()`` share the same httpx
client. So, as for LangChain, the dashscope client gets its own HTTP client with the
SDK's settings over the borrowed connection pool (see ``_clients``); ``close()`` still
closes the pool when the client owned it.

The 1.x module API (``dashscope.Generation.call``) sends with ``requests``, which no
transport can observe: use ``cachewatch proxy`` for it.
"""

from __future__ import annotations

from typing import Any, TypeVar

from ..engine._engine import Engine
from ._clients import AlreadyInstrumentedError, own_client

__all__ = ["instrument_dashscope"]

C = TypeVar("C")


def instrument_dashscope(client: C, **options: Any) -> C:
    """Instrument one dashscope 2.0 ``Client`` or ``AsyncClient`` with cachewatch and return it.

    Clients derived from it later with ``with_options()`` share its instrumented HTTP
    client (and so its options) when they share its connection pool; clients derived
    before are left alone.

    Args:
        client: ``dashscope.Client(...)`` or ``dashscope.AsyncClient(...)``.
        **options: the keyword arguments of :class:`~cachewatch.CacheWatchTransport`.

    Raises:
        TypeError: ``client`` is not a dashscope 2.0 client.
        ValueError: its HTTP client already goes through cachewatch.

    Example::

        client = cachewatch.instrument_dashscope(dashscope.Client(api_key=...))
        client.chat.completions.create(model="qwen-plus", messages=[...])
    """
    c: Any = client
    transport: Any = getattr(c, "_transport", None)
    if type(client).__module__.partition(".")[0] != "dashscope" or not hasattr(transport, "http_client"):
        raise TypeError(
            "cachewatch.instrument_dashscope() expects a dashscope 2.0 Client or AsyncClient; got "
            f"{type(client).__module__}.{type(client).__qualname__}"
        )
    owned = bool(getattr(transport, "_owns_client", False))
    try:
        http = own_client(transport.http_client, Engine(**options), owner_closes=owned)
    except AlreadyInstrumentedError:
        raise AlreadyInstrumentedError(
            "this dashscope client's HTTP client already goes through cachewatch (instrumented "
            "before, or derived with with_options() from an instrumented client)"
        ) from None
    transport._client = http
    return client
