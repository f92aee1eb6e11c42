"""An own, instrumented HTTP client for one framework object, borrowing the pool it had.

Frameworks hide the HTTP client of their model objects and often share one between
instances (LangChain caches one per base URL). Wrapping that client in place would
instrument every instance that shares it, with the options of whichever was wrapped
first. :func:`own_client` instead builds a new client of the same family (``httpx`` or
``httpx2``) with the same settings (base URL, headers, timeout, auth, redirects, event
hooks), whose transport and mounted transports are cachewatch transports around the
*borrowed* transports of the old client: the connection pool, TLS, proxy and socket
settings stay exactly the framework's, and only this object goes through cachewatch.

A borrowed transport never closes what it borrowed, unless the object owned its old
client exclusively (``owner_closes``): then closing the new client closes the old one,
as closing the object did before.
"""

from __future__ import annotations

import importlib
from types import ModuleType, TracebackType
from typing import Any

from ..engine._engine import Engine
from ..transport._transport import AsyncCacheWatchTransport, CacheWatchTransport

__all__ = ["AlreadyInstrumentedError", "is_async_client", "is_instrumented", "own_client"]


class AlreadyInstrumentedError(ValueError):
    """The object's HTTP client already goes through cachewatch."""


def _family(client: Any) -> ModuleType:
    for cls in type(client).__mro__:
        root = cls.__module__.partition(".")[0]
        if cls.__name__ in ("Client", "AsyncClient") and root in ("httpx", "httpx2"):
            return importlib.import_module(root)
    raise TypeError(
        f"expected an httpx or httpx2 client, got {type(client).__module__}.{type(client).__qualname__}"
    )


def is_async_client(client: Any) -> bool:
    """Whether ``client`` is an ``httpx``/``httpx2`` ``AsyncClient``."""
    return isinstance(client, _family(client).AsyncClient)


def is_instrumented(client: Any) -> bool:
    """Whether ``client``'s transport or one of its mounts is a cachewatch transport."""
    transports = [getattr(client, "_transport", None), *(getattr(client, "_mounts", None) or {}).values()]
    return any(isinstance(t, (CacheWatchTransport, AsyncCacheWatchTransport)) for t in transports)


class _Borrowed:
    """A transport lent by another client: requests go through, closing is the owner's call.

    Duck-typed (no ``httpx`` base class) for the reason given in ``transport._transport``.
    """

    def __init__(self, transport: Any, owner: Any, owner_closes: bool) -> None:
        self._transport = transport
        #: Keeps the lending client alive (some close their pool when collected).
        self._owner = owner
        self._owner_closes = owner_closes

    def handle_request(self, request: Any) -> Any:
        return self._transport.handle_request(request)

    async def handle_async_request(self, request: Any) -> Any:
        return await self._transport.handle_async_request(request)

    def close(self) -> None:
        if self._owner_closes:
            self._owner.close()

    async def aclose(self) -> None:
        if self._owner_closes:
            await self._owner.aclose()

    def __enter__(self) -> _Borrowed:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> _Borrowed:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()


def own_client(old: Any, engine: Engine, *, owner_closes: bool = False) -> Any:
    """A new client like ``old`` whose requests go through ``engine`` over ``old``'s transports.

    Raises:
        AlreadyInstrumentedError: ``old`` already goes through cachewatch.
    """
    if is_instrumented(old):
        raise AlreadyInstrumentedError("the HTTP client already goes through cachewatch")
    family = _family(old)
    is_async = isinstance(old, family.AsyncClient)
    cls = family.AsyncClient if is_async else family.Client
    shell = AsyncCacheWatchTransport if is_async else CacheWatchTransport

    def lent(transport: Any, closes: bool) -> Any:
        return shell(_Borrowed(transport, old, closes), engine=engine)

    new = cls(
        base_url=old.base_url,
        headers=old.headers,
        cookies=old.cookies,
        params=old.params,
        auth=old.auth,
        timeout=old.timeout,
        follow_redirects=old.follow_redirects,
        max_redirects=old.max_redirects,
        event_hooks=old.event_hooks,
        trust_env=old.trust_env,
        transport=lent(old._transport, owner_closes),
    )
    # Proxy routes (explicit or from the environment) are mounts: the same patterns, lent too.
    new._mounts = {
        pattern: None if transport is None else lent(transport, False)
        for pattern, transport in (getattr(old, "_mounts", None) or {}).items()
    }
    return new
