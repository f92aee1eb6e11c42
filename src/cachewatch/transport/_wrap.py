"""``wrap()``: instrument an existing client in place, keeping all of its settings.

Works on ``httpx``/``httpx2`` ``Client``/``AsyncClient`` and on the anthropic and
openai SDK clients (whose ``_client`` is an httpx2 client). The client's transport and
each of its mounted transports are wrapped; base URL, timeouts, headers, auth and
limits are untouched because the client object itself is kept. Wrapping twice is a
no-op: a transport that is already a cachewatch transport is left alone.
"""

from __future__ import annotations

from typing import Any, TypeVar

from ..engine._engine import Engine
from ._transport import AsyncCacheWatchTransport, CacheWatchTransport

__all__ = ["wrap"]

T = TypeVar("T")


def _http_client(client: Any) -> Any:
    """The httpx-like client inside ``client`` (or ``client`` itself)."""
    if _is_http_client(client):
        return client
    inner = getattr(client, "_client", None)
    if inner is not None and _is_http_client(inner):
        return inner
    raise TypeError(
        "cachewatch.wrap() expects an httpx/httpx2 Client or AsyncClient, or an anthropic/openai "
        f"SDK client; got {type(client).__module__}.{type(client).__qualname__}"
    )


def _is_http_client(obj: Any) -> bool:
    for cls in type(obj).__mro__:
        if cls.__name__ in ("Client", "AsyncClient") and cls.__module__.partition(".")[0] in (
            "httpx",
            "httpx2",
        ):
            return True
    return False


def wrap(client: T, **options: Any) -> T:
    """Instrument ``client`` with cachewatch and return it.

    Args:
        client: an ``httpx``/``httpx2`` ``Client``/``AsyncClient``, ``anthropic.(Async)Anthropic``
            or ``openai.(Async)OpenAI``.
        **options: the keyword arguments of :class:`CacheWatchTransport`
            (``breakpoints``, ``registry``, ``tracer_provider``, ``logger``, ...).

    Example::

        client = cachewatch.wrap(anthropic.Anthropic())
        client.messages.create(...)
    """
    http = _http_client(client)
    is_async = type(http).__name__ == "AsyncClient" or any(
        c.__name__ == "AsyncClient" for c in type(http).__mro__
    )
    cls: type[CacheWatchTransport] | type[AsyncCacheWatchTransport] = (
        AsyncCacheWatchTransport if is_async else CacheWatchTransport
    )
    engine: Engine | None = None

    def wrapped(transport: Any) -> Any:
        nonlocal engine
        if isinstance(transport, (CacheWatchTransport, AsyncCacheWatchTransport)):
            first = transport.engine.wrap_options
            if options and options != first:
                # Wrapping again changes nothing (it never counts twice): other options given
                # now (breakpoints="off", another registry) would be ignored without a word.
                raise ValueError(
                    "this client is already wrapped by cachewatch, with the options of the first "
                    f"wrap(); these are not applied: {', '.join(sorted(options))}. Wrap a new client "
                    "to use other options."
                )
            return transport
        if engine is None:
            engine = Engine(**options)
            engine.wrap_options = dict(options)
        return cls(transport, engine=engine)

    http._transport = wrapped(http._transport)
    mounts = getattr(http, "_mounts", None)
    if mounts:
        for pattern, transport in list(mounts.items()):
            if transport is not None:
                mounts[pattern] = wrapped(transport)
    return client
