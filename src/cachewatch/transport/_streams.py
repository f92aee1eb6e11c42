"""Observed response streams: pass every chunk through untouched, and tell the Exchange.

The caller gets each chunk as soon as the inner transport yields it: nothing is
buffered and the first byte is never delayed. The Exchange is finished exactly once,
when the body ends (``end``), when it is closed before that (``aborted``), or when the
inner stream raises (``transport_error``, re-raised unchanged).

httpx and httpx2 clients assert that a response stream is an instance of *their*
``SyncByteStream`` / ``AsyncByteStream``, so the classes are built once per family.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from types import ModuleType
from typing import Any

from ..engine._engine import Exchange

__all__ = ["async_stream_class", "sync_stream_class"]

#: Raised by an inner stream iterated a second time (the openai SDK drains ``response.stream``
#: after ``[DONE]`` and ignores these). They are the caller's business, not a transport error:
#: the exchange is finished by ``close`` as usual.
_REUSE_ERRORS = frozenset({"StreamConsumed", "StreamClosed"})


@functools.cache
def sync_stream_class(family: ModuleType) -> Any:
    """``ObservedSyncStream`` subclassing ``family.SyncByteStream`` (family is httpx or httpx2)."""

    class ObservedSyncStream(family.SyncByteStream):  # type: ignore[name-defined,misc]
        __slots__ = ("_exchange", "_inner")

        def __init__(self, inner: Any, exchange: Exchange) -> None:
            self._inner = inner
            self._exchange = exchange

        def __iter__(self) -> Iterator[bytes]:
            exchange = self._exchange
            feed = exchange.feed
            hide = exchange.filter
            try:
                for chunk in self._inner:
                    feed(chunk)
                    if hide is None:
                        yield chunk
                    else:
                        shown = hide.feed(chunk)
                        if shown:
                            yield shown
                if hide is not None and (tail := hide.flush()):
                    yield tail
            except Exception as exc:
                if type(exc).__name__ not in _REUSE_ERRORS:
                    exchange.transport_error(exc)
                raise
            exchange.end()

        def close(self) -> None:
            try:
                self._inner.close()
            finally:
                self._exchange.close()

    ObservedSyncStream.__qualname__ = ObservedSyncStream.__name__
    return ObservedSyncStream


@functools.cache
def async_stream_class(family: ModuleType) -> Any:
    """``ObservedAsyncStream`` subclassing ``family.AsyncByteStream``."""

    class ObservedAsyncStream(family.AsyncByteStream):  # type: ignore[name-defined,misc]
        __slots__ = ("_exchange", "_inner")

        def __init__(self, inner: Any, exchange: Exchange) -> None:
            self._inner = inner
            self._exchange = exchange

        async def __aiter__(self) -> AsyncIterator[bytes]:
            exchange = self._exchange
            feed = exchange.feed
            hide = exchange.filter
            try:
                async for chunk in self._inner:
                    feed(chunk)
                    if hide is None:
                        yield chunk
                    else:
                        shown = hide.feed(chunk)
                        if shown:
                            yield shown
                if hide is not None and (tail := hide.flush()):
                    yield tail
            except Exception as exc:
                if type(exc).__name__ not in _REUSE_ERRORS:
                    exchange.transport_error(exc)
                raise
            exchange.end()

        async def aclose(self) -> None:
            try:
                await self._inner.aclose()
            finally:
                self._exchange.close()

    ObservedAsyncStream.__qualname__ = ObservedAsyncStream.__name__
    return ObservedAsyncStream
