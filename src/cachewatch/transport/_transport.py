"""The public transports: thin sync and async shells over the sans-IO Engine.

The same two classes serve ``httpx`` and ``httpx2`` clients: the family is read from
the request object's module, and every object handed back (rebuilt request, response,
stream) is built from that family. The classes deliberately do not inherit from
``httpx.BaseTransport``: the anthropic and openai SDKs (httpx2-based) reject objects
whose class hierarchy comes from the ``httpx`` package. Clients only duck-type
transports, so none is needed.
"""

from __future__ import annotations

import contextvars
import importlib
import threading
from contextvars import ContextVar
from types import ModuleType, TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from ..engine._engine import Engine, Exchange
from ._streams import async_stream_class, sync_stream_class

__all__ = ["AsyncCacheWatchTransport", "CacheWatchTransport"]

#: Set while an outer cachewatch transport is sending, so that a nested one stands aside
#: (wrapping twice must not double-count).
_ACTIVE: ContextVar[bool] = ContextVar("cachewatch_active", default=False)

_FAMILIES: dict[type, ModuleType] = {}
#: Cancellation of the caller's task (asyncio, and trio's under anyio): recorded as ``aborted``.
_CANCELLED = frozenset({"CancelledError", "Cancelled"})
_DEFAULT_PORTS = {"https": 443, "http": 80}


def _family(obj: object) -> ModuleType:
    """The httpx-like package (``httpx`` or ``httpx2``) a request or response belongs to."""
    cls = type(obj)
    family = _FAMILIES.get(cls)
    if family is None:
        family = importlib.import_module(cls.__module__.partition(".")[0])
        _FAMILIES[cls] = family
    return family


def _request_body(request: Any) -> bytes | None:
    try:
        body = request.content
    except Exception:
        # Streaming (unread) request bodies are never touched, but for the family's own
        # in-memory ByteStream, which can be read again and again: a redirect's request
        # carries the original's body so (httpx's ``_redirect_stream``).
        stream: Any = getattr(request, "stream", None)
        kind = type(stream)
        if kind.__name__ == "ByteStream" and kind.__module__.partition(".")[0] in ("httpx", "httpx2"):
            try:
                return b"".join(stream)
            except Exception:
                return None
        return None
    return body if isinstance(body, bytes) else None


#: The request headers the engine reads (credential, body encoding, the Anthropic beta
#: list), by their lower-case raw names.
_ENGINE_HEADERS = {
    b"authorization": "authorization",
    b"x-api-key": "x-api-key",
    b"api-key": "api-key",
    b"content-encoding": "content-encoding",
    b"anthropic-beta": "anthropic-beta",
    b"x-dashscope-sse": "x-dashscope-sse",
}


#: Raw header name (as sent, any case) -> its key in ``_ENGINE_HEADERS`` or None: a client
#: sends the same few dozen names on every request, so each is lower-cased once.
_NAME_KEYS: dict[bytes, str | None] = {}
_UNSEEN: Any = object()

#: ``Headers`` class -> whether its instances keep their fields as httpx's and httpx2's do:
#: ``_list``, a list of ``(raw name, lower-case name, value)`` byte triples.
_TRIPLES: dict[type, bool] = {}


def _triples(headers: Any) -> list[tuple[bytes, bytes, bytes]] | None:
    """The fields of an httpx(2) ``Headers`` with their lower-case names, or None.

    ``Headers.raw`` builds a new list of pairs on every call, and each name must then be
    lower-cased; httpx and httpx2 keep the lower-case name of every field next to it. The
    layout is private, so it is checked once per class on a probe (its ``raw`` must be the
    list's pairs and the middle item the lower-case name); any other class gets None and
    is read through ``raw``.
    """
    cls = type(headers)
    known = _TRIPLES.get(cls)
    if known is None:
        try:
            probe = cls([(b"X-Probe", b"v"), (b"host", b"h")])
            known = probe._list == [
                (b"X-Probe", b"x-probe", b"v"),
                (b"host", b"host", b"h"),
            ] and probe.raw == [
                (b"X-Probe", b"v"),
                (b"host", b"h"),
            ]
        except Exception:
            known = False
        _TRIPLES[cls] = known
    if known:
        fields = getattr(headers, "_list", None)
        if type(fields) is list:
            return fields
    return None


def _engine_headers(headers: Any) -> Any:
    """The request headers the engine reads, in one pass over the raw headers.

    Each ``Headers.get`` (and ``in``) scans every header and decodes: the engine would
    make four or five such lookups per request. Repeated fields are joined with ``", "``,
    as ``Headers.get`` does. A non-ASCII value is decoded by the ``Headers`` object itself
    (its encoding depends on every value), so then the object itself is returned.
    """
    found: dict[str, str] = {}
    fields = _triples(headers)
    if fields is not None:
        wanted = _ENGINE_HEADERS
        for _, lower, value in fields:
            key = wanted.get(lower)
            if key is not None:
                if not value.isascii():
                    return headers
                text = value.decode("ascii")
                found[key] = f"{found[key]}, {text}" if key in found else text
        return found
    names = _NAME_KEYS
    for name, value in headers.raw:
        key = names.get(name, _UNSEEN)
        if key is _UNSEEN:
            key = _ENGINE_HEADERS.get(name.lower())
            if len(names) < 4096:
                names[name] = key
        if key is not None:
            if not value.isascii():
                return headers
            text = value.decode("ascii")
            found[key] = f"{found[key]}, {text}" if key in found else text
    return found


#: A request body over this many bytes is planned in a worker thread by the async
#: transport (the thread costs ~0.1 ms; planning this much takes a few ms and more).
_THREAD_BEGIN_BYTES = 256 * 1024


async def _begin_in_thread(engine: Engine, request: Any) -> Exchange | None:
    """``_begin`` in a worker thread (anyio's, under asyncio or trio), the context copied."""
    import anyio.to_thread

    context = contextvars.copy_context()
    return await anyio.to_thread.run_sync(context.run, _begin, engine, request)


def _begin(engine: Engine, request: Any) -> Exchange | None:
    if _ACTIVE.get():
        return None
    try:
        url = request.url
        return engine.begin(
            method=request.method,
            host=url.host,
            port=url.port or _DEFAULT_PORTS.get(url.scheme),
            path=url.path,
            headers=_engine_headers(request.headers),
            body=_request_body(request),
        )
    except Exception as exc:
        engine.fault("begin", exc)
        return None


def _outgoing(exchange: Exchange, request: Any) -> Any:
    """The request to send: rebuilt with the planned body, or the original one."""
    body = exchange.new_body
    if body is None:
        return request
    try:
        family = _family(request)
        if exchange.new_headers is None and _has_host(request.headers):
            # ``request.headers.copy()`` first works out the headers' encoding (a decode
            # of every name and value); the request's own copy of the same list, given
            # the one new length, holds the very same fields (an ASCII name and number
            # encode alike in every encoding), and its encoding is worked out when asked.
            rebuilt = family.Request(
                request.method,
                request.url,
                headers=request.headers,
                stream=family.ByteStream(body),
                extensions=request.extensions,
            )
            rebuilt.headers["Content-Length"] = str(len(body))
            rebuilt.read()
            return rebuilt
        headers = request.headers.copy()
        headers["Content-Length"] = str(len(body))
        for name, value in (exchange.new_headers or {}).items():
            headers[name] = value
        if not _has_host(headers):
            return family.Request(
                request.method,
                request.url,
                headers=headers,
                content=body,
                extensions=request.extensions,
            )
        # The same request as ``Request(..., content=body)``, which adds only the Host and
        # Content-Length headers, both set here already; but that path also looks each of
        # them up and normalises every header again (~14 us of ~18 with 19 headers). Given
        # the body's stream instead, the headers are taken as they are, and ``read()``
        # loads the content as the ``content=`` path does.
        rebuilt = family.Request(
            request.method,
            request.url,
            headers=headers,
            stream=family.ByteStream(body),
            extensions=request.extensions,
        )
        rebuilt.read()
        return rebuilt
    except Exception as exc:
        exchange.engine.fault("request_rebuild", exc)
        exchange.drop_plan()
        return request


def _has_host(headers: Any) -> bool:
    """Whether ``headers`` (an httpx ``Headers``) has a Host field (first, as httpx's clients put it)."""
    fields = _triples(headers)
    if fields is not None:
        for field in fields:  # noqa: SIM110 (a loop: any() over a generator costs a frame per field)
            if field[1] == b"host":
                return True
        return False
    return any(name.lower() == b"host" for name, _ in headers.raw)


def _activate(exchange: Exchange) -> Any:
    try:
        span = exchange.span()
        if span is None or span is trace.get_current_span():
            return None  # nothing to do: the no-op tracer hands back the current span
        return otel_context.attach(trace.set_span_in_context(span))
    except Exception as exc:
        exchange.engine.fault("span_context", exc)
        return None


def _deactivate(exchange: Exchange, token: Any) -> None:
    if token is not None:
        try:
            otel_context.detach(token)
        except Exception as exc:
            exchange.engine.fault("span_context", exc)


#: The response headers the body observer reads, by their lower-case raw names.
_BODY_HEADERS = {b"content-type": "content-type", b"content-encoding": "content-encoding"}
#: Raw response header name -> its key in ``_BODY_HEADERS`` or None (as ``_NAME_KEYS``).
_BODY_NAME_KEYS: dict[bytes, str | None] = {}


def _body_headers(headers: Any) -> dict[str, str]:
    """``content-type`` and ``content-encoding`` of a response, in one pass over its raw headers.

    Repeated fields are joined with ``", "``, as ``Headers.get`` does (two ``get`` calls
    cost several times this single pass).
    """
    found: dict[str, str] = {}
    fields = _triples(headers)
    if fields is not None:
        wanted = _BODY_HEADERS
        for _, lower, value in fields:
            key = wanted.get(lower)
            if key is not None:
                text = value.decode("latin-1")
                found[key] = f"{found[key]}, {text}" if key in found else text
        return found
    names = _BODY_NAME_KEYS
    for name, value in headers.raw:
        key = names.get(name, _UNSEEN)
        if key is _UNSEEN:
            key = _BODY_HEADERS.get(name.lower())
            if len(names) < 4096:
                names[name] = key
        if key is not None:
            text = value.decode("latin-1")
            found[key] = f"{found[key]}, {text}" if key in found else text
    return found


def _observed_response(exchange: Exchange, response: Any, sync: bool) -> Any:
    """``response`` with a body stream that reports to the exchange.

    The stream is swapped in place (as the httpx client itself does with its
    ``BoundSyncStream``); a new response is built only when its headers must change or
    when its body was already read into memory (a client would not iterate it again).
    """
    try:
        family = _family(response)
        body = response.stream
        headers = response.headers
        if response.is_stream_consumed and not isinstance(body, family.ByteStream):
            # Read already (by an inner transport that looks at bodies): its stream is spent,
            # and the body is in memory, decoded. Relayed from there, as the client would
            # have, without the headers of the encoded body. (An in-memory ByteStream, as a
            # mock transport's, is iterated again: its bytes are the raw ones.)
            body = family.ByteStream(response.content)
            headers = headers.copy()
            for name in ("content-encoding", "content-length"):
                if name in headers:
                    del headers[name]
        exchange.response(response.status_code, _body_headers(headers))
        stream_cls = sync_stream_class(family) if sync else async_stream_class(family)
        stream = stream_cls(body, exchange)
        hide = exchange.filter
        if hide is not None and (hide.decodes or "content-length" in headers):
            # The filtered body may be shorter (the usage chunk hidden), and a decoded one
            # is no longer encoded: those headers no longer apply.
            headers = headers.copy()
            for name in ("content-encoding", "content-length") if hide.decodes else ("content-length",):
                if name in headers:
                    del headers[name]
        elif not (response.is_stream_consumed or response.is_closed):
            response.stream = stream
            return response
        return family.Response(
            status_code=response.status_code,
            headers=headers,
            stream=stream,
            extensions=response.extensions,
        )
    except Exception as exc:
        exchange.engine.fault("response_wrap", exc)
        exchange.close()
        return response


class _Base:
    def __init__(
        self,
        transport: Any | None = None,
        *,
        breakpoints: str = "auto",
        registry: Any | None = None,
        tracer_provider: Any | None = None,
        meter_provider: Any | None = None,
        logger: Any | None = None,
        prices: Any | None = None,
        engine: Engine | None = None,
        **options: Any,
    ) -> None:
        self._inner = transport
        self._defaults: dict[ModuleType, Any] = {}
        self._defaults_lock = threading.Lock()
        self.engine = engine or Engine(
            breakpoints=breakpoints,
            registry=registry,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            logger=logger,
            prices=prices,
            **options,
        )

    @property
    def transport(self) -> Any | None:
        """The wrapped inner transport (None until a default one is created)."""
        return self._inner

    def _inner_for(self, request: Any, default_name: str) -> Any:
        if self._inner is not None:
            return self._inner
        family = _family(request)
        inner = self._defaults.get(family)
        if inner is None:
            # Threads may send their first requests at once: one default per family, or
            # the others would be lost to ``close()``, their connections with them.
            with self._defaults_lock:
                inner = self._defaults.get(family)
                if inner is None:
                    inner = self._defaults[family] = getattr(family, default_name)()
        return inner


class CacheWatchTransport(_Base):
    """Sync transport for ``httpx.Client`` and ``httpx2.Client``.

    Args:
        transport: the inner transport; None creates the default HTTP transport of the
            request's family (httpx or httpx2) on first use.
        breakpoints: ``"auto"`` (default) inserts ``cache_control`` breakpoints where
            they pay off; ``"off"`` only observes: request bodies go out byte-identical;
            ``"shadow"`` sends them byte-identical too and estimates what ``"auto"`` would
            have been billed (``cachewatch_shadow_cost_total``, ``cachewatch_shadow_tokens_total``).
        registry: ``prometheus_client.CollectorRegistry`` (default: the global registry).
        tracer_provider / meter_provider: OpenTelemetry providers (default: global tracer; no metrics).
        logger: where the per-request event goes: a stdlib or structlog logger (default: the
            stdlib logger ``cachewatch``, silent until logging is configured, or structlog's
            once the application configured structlog).
        prices: price table for cost and savings.
        **options: ``record`` (a file to append the traffic shape to, for ``cachewatch
            replay``), ``providers``, ``workspaces``, ``max_models``, ``clock``, ``sinks``,
            ``otel_token_counters`` (the draft ``gen_ai.client.inference.usage.*`` counters
            on ``meter_provider``) and planner options.

    Example::

        http = httpx2.Client(transport=cachewatch.CacheWatchTransport())
        client = anthropic.Anthropic(http_client=http)
    """

    def handle_request(self, request: Any) -> Any:
        inner = self._inner_for(request, "HTTPTransport")
        exchange = _begin(self.engine, request)
        if exchange is None:
            return inner.handle_request(request)
        outgoing = _outgoing(exchange, request)
        exchange.sent()
        token = _activate(exchange)
        nested = _ACTIVE.set(True)
        try:
            response = inner.handle_request(outgoing)
        except Exception as exc:
            exchange.transport_error(exc)
            raise
        except BaseException:
            # Not a failure of the transport: the caller gave up waiting (Ctrl-C, a
            # gevent.Timeout, SystemExit), as a cancelled task does in async code: aborted.
            exchange.close()
            raise
        finally:
            _ACTIVE.reset(nested)
            _deactivate(exchange, token)
        return _observed_response(exchange, response, sync=True)

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
        for inner in self._defaults.values():
            inner.close()

    def __enter__(self) -> CacheWatchTransport:
        if self._inner is not None:
            self._inner.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        if self._inner is not None:
            self._inner.__exit__(exc_type, exc_value, traceback)
        for inner in self._defaults.values():
            inner.close()


class AsyncCacheWatchTransport(_Base):
    """Async transport for ``httpx.AsyncClient`` and ``httpx2.AsyncClient``; arguments as :class:`CacheWatchTransport`."""

    async def handle_async_request(self, request: Any) -> Any:
        inner = self._inner_for(request, "AsyncHTTPTransport")
        body = _request_body(request)
        if body is not None and len(body) > _THREAD_BEGIN_BYTES:
            # Planning is linear in the body but runs on the caller's event loop: on a
            # body of many megabytes (800,000 short messages: seconds), every other
            # request and stream of that loop (a proxy's clients) would wait for it.
            # A worker thread plans it while the loop goes on.
            exchange = await _begin_in_thread(self.engine, request)
        else:
            exchange = _begin(self.engine, request)
        if exchange is None:
            return await inner.handle_async_request(request)
        outgoing = _outgoing(exchange, request)
        exchange.sent()
        token = _activate(exchange)
        nested = _ACTIVE.set(True)
        try:
            response = await inner.handle_async_request(outgoing)
        except BaseException as exc:
            if type(exc).__name__ in _CANCELLED:
                exchange.close()  # the caller gave up waiting: aborted, not a transport error
            else:
                exchange.transport_error(exc)
            raise
        finally:
            _ACTIVE.reset(nested)
            _deactivate(exchange, token)
        return _observed_response(exchange, response, sync=False)

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()
        for inner in self._defaults.values():
            await inner.aclose()

    async def __aenter__(self) -> AsyncCacheWatchTransport:
        if self._inner is not None:
            await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        if self._inner is not None:
            await self._inner.__aexit__(exc_type, exc_value, traceback)
        for inner in self._defaults.values():
            await inner.aclose()
