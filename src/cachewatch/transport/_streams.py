"""Observed response streams: pass every chunk through untouched, and tell the Exchange.

The caller gets each chunk as soon as the inner transport yields it: nothing is
buffered and the first byte is never delayed. The Exchange is finished exactly once,
when the body ends (``end``), when it is closed before that (``aborted``), or when the
inner stream raises (``transport_error``, re-raised unchanged). The one body that is not
passed through as it comes is the one the usage-chunk filter decodes (see
``planning/_hygiene``): if it does not decode, the family's ``DecodingError`` is raised,
as the caller's client would have raised it.

A stream dropped without being closed (a response read partly, then forgotten) is
finished too, as ``aborted`` with the usage seen so far: when the stream object is
collected, its exchange goes on a queue (``queue.SimpleQueue.put`` is safe in a
finaliser) and a daemon thread finishes it. The sinks never run inside the garbage
collector, which could fire while this very thread holds one of their locks. At
interpreter exit the thread is told to finish what is queued and stop, and is waited for
up to ``EXIT_TIMEOUT`` seconds, so those records are not lost with it.

httpx and httpx2 clients assert that a response stream is an instance of *their*
``SyncByteStream`` / ``AsyncByteStream``, so the classes are built once per family.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from types import ModuleType
from typing import Any

from ..engine._engine import Exchange
from ..engine._exchange import OPEN
from ..planning._hygiene import UndecodableBody

__all__ = ["async_stream_class", "sync_stream_class"]

#: Raised by an inner stream iterated a second time (the openai SDK drains ``response.stream``
#: after ``[DONE]`` and ignores these). They are the caller's business, not a transport error:
#: the exchange is finished by ``close`` as usual.
_REUSE_ERRORS = frozenset({"StreamConsumed", "StreamClosed"})

#: Exchanges of streams collected before they were finished (see the module docstring);
#: None tells the finisher to stop.
_ORPHANS: queue.SimpleQueue[Exchange | None] = queue.SimpleQueue()
_finisher_started = False
_finisher_lock = threading.Lock()
_finisher: threading.Thread | None = None
#: Longest wait at interpreter exit for the orphans still queued (seconds).
EXIT_TIMEOUT = 2.0


def _finish_orphans(orphans: queue.SimpleQueue[Exchange | None]) -> None:
    while True:
        exchange = orphans.get()
        if exchange is None:
            return
        with contextlib.suppress(Exception):  # close() is fail-open; this keeps the thread alive
            exchange.close()


def _start_finisher() -> None:
    global _finisher_started, _finisher
    with _finisher_lock:
        if not _finisher_started:
            _finisher = threading.Thread(
                target=_finish_orphans, args=(_ORPHANS,), name="cachewatch-finisher", daemon=True
            )
            _finisher.start()
            _finisher_started = True


@atexit.register
def _finish_queued_at_exit() -> None:
    """Close the exchanges still open (as ``aborted``), let the finisher close what is
    queued, then stop (bounded: ``EXIT_TIMEOUT``).

    A stream still referenced when the interpreter exits (a module global, one a daemon
    thread is reading) is never collected before the process ends: without this, its
    request would never be recorded.
    """
    for exchange in list(OPEN):
        with contextlib.suppress(Exception):  # close() is fail-open
            exchange.close()
    thread = _finisher
    if thread is not None and thread.is_alive():
        _ORPHANS.put(None)
        thread.join(EXIT_TIMEOUT)


def _after_fork() -> None:
    global _ORPHANS, _finisher_started, _finisher_lock, _finisher
    # Threads do not survive a fork; the parent's orphans are the parent's.
    _ORPHANS = queue.SimpleQueue()
    OPEN.clear()
    _finisher_started = False
    _finisher_lock = threading.Lock()
    _finisher = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _orphaned(stream: Any) -> None:
    """``__del__`` of an observed stream: hand an unfinished exchange to the finisher thread."""
    exchange = getattr(stream, "_exchange", None)
    if exchange is not None and not exchange.done:
        _ORPHANS.put(exchange)


@functools.cache
def sync_stream_class(family: ModuleType) -> Any:
    """``ObservedSyncStream`` subclassing ``family.SyncByteStream`` (family is httpx or httpx2)."""

    class ObservedSyncStream(family.SyncByteStream):  # type: ignore[name-defined,misc]
        __slots__ = ("_exchange", "_inner")

        def __init__(self, inner: Any, exchange: Exchange) -> None:
            self._inner = inner
            self._exchange = exchange
            if not _finisher_started:
                _start_finisher()

        __del__ = _orphaned

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
                        # Piece by piece: a compressed body is decoded for the caller in
                        # bounded pieces, never inflated whole (a compression bomb).
                        yield from hide.pieces(chunk)
                if hide is not None and (tail := hide.flush()):
                    yield tail
            except UndecodableBody as exc:
                # The filter decodes for the caller: raise what the caller's client would have.
                error = family.DecodingError(str(exc))
                exchange.transport_error(error)
                raise error from None
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
            if not _finisher_started:
                _start_finisher()

        __del__ = _orphaned

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
                        # Piece by piece: a compressed body is decoded for the caller in
                        # bounded pieces, never inflated whole (a compression bomb).
                        for shown in hide.pieces(chunk):
                            yield shown
                if hide is not None and (tail := hide.flush()):
                    yield tail
            except UndecodableBody as exc:
                # The filter decodes for the caller: raise what the caller's client would have.
                error = family.DecodingError(str(exc))
                exchange.transport_error(error)
                raise error from None
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
