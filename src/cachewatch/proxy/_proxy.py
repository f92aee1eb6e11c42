"""``cachewatch proxy``: a loopback reverse proxy that gives non-Python clients the same behaviour.

curl, the TypeScript SDK, the ``dashscope`` SDK and coding agents point their base URL
at the proxy; it forwards to its one configured upstream through
:class:`AsyncCacheWatchTransport`, so breakpoints, accounting and telemetry are exactly
those of the in-process transport, and serves ``/metrics`` on the same port.

Safety rules (SPEC section 10):

- binds 127.0.0.1 unless told otherwise;
- forwards only to the configured upstream: absolute-URI request targets and requests
  whose ``Host`` is not the proxy itself are refused (it is never an open relay). The
  target is read from ``raw_path``, so the server must put the raw target there, as
  uvicorn's h11 protocol and :func:`server_options` do (stock httptools gives only the
  parsed path: the absolute form would go unseen, though such a request would still
  reach only the configured upstream);
- limits the request body size (413 beyond it);
- passes credentials through untouched and never logs them;
- streams responses through chunk by chunk and closes the upstream response as soon as
  the client goes away.

Latency (SPEC section 11: under 1 ms added at p50 on loopback). Most of a proxied
call's CPU went to pure-Python HTTP/1.1 on both sides (h11 under uvicorn, and
h11 + httpcore + anyio for the upstream hop), so both hops use C parsers:

- :func:`server_options` serves the app with uvicorn's httptools protocol (and uvloop
  where available), through :class:`TargetCheckingHttpToolsProtocol`, which puts the raw
  request target in ``raw_path`` as uvicorn's h11 protocol does (stock httptools gives
  only the parsed path), so that absolute-URI targets are still seen and refused;
- the upstream client is aiohttp (llhttp parser), plugged in as an httpx transport by
  ``httpx-aiohttp``, so :class:`AsyncCacheWatchTransport` observes exactly the same
  ``httpx.Request``/``httpx.Response`` exchange as with httpx's own transport. Its
  session keeps no cookies (one session serves every client), adds no headers of its
  own, and never decompresses or follows redirects.

The app is a bare ASGI callable rather than a routed framework app, and each request
goes straight to the transport's ``handle_async_request`` (no ``AsyncClient``: no
per-request URL merging, cookie jar or auth/redirect machinery; the upstream URL of a
path is parsed once and cached). A response that is not an event stream and declares a
small ``Content-Length`` (a JSON reply) is read whole and sent in one message; every
other response (SSE, chunked, large) is streamed chunk by chunk as it arrives, and the
upstream response is closed as soon as the client goes away.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.datastructures import State
from starlette.responses import StreamingResponse
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..sinks._server import exposition_registry
from ..transport._transport import AsyncCacheWatchTransport

__all__ = [
    "BUFFERED_RESPONSE_LIMIT",
    "DEFAULT_MAX_BODY",
    "ProxyApp",
    "TargetCheckingHttpToolsProtocol",
    "create_proxy_app",
    "server_options",
    "upstream_transport",
]

DEFAULT_MAX_BODY = 32 * 1024 * 1024

#: Non-streaming upstream responses up to this declared ``Content-Length`` are read whole
#: and sent in one piece; bigger ones, chunked ones and event streams are streamed.
BUFFERED_RESPONSE_LIMIT = 256 * 1024

#: RFC 9110 section 7.6.1 hop-by-hop headers, plus the ones the proxy recomputes, plus
#: ``Expect``: the proxy has the whole request body before it forwards anything (uvicorn
#: answered the client's ``100-continue``), so the upstream hop has nothing to wait for.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"expect",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"})
_ALLOW = b", ".join(sorted(m.encode() for m in _METHODS))
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})
_URL_CACHE_SIZE = 1024
#: Keep-alive connections to the one upstream.
_UPSTREAM_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=4.0)
#: Headers aiohttp would otherwise add to a request that lacks them: the proxy forwards
#: the client's headers as they are.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
#: Longest upstream response header line / field accepted (aiohttp's default is 8 KiB).
_MAX_HEADER_LINE = 64 * 1024

Scope = MutableMapping[str, Any]
Receive = Any
Send = Any


class _Disconnected(Exception):
    """The client went away while its request body was being read."""


def _error_body(message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": "cachewatch_proxy_error", "message": message}})


async def _respond(send: Send, status: int, body: bytes, content_type: bytes, extra: Any = ()) -> None:
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body)), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _error(send: Send, status: int, message: str) -> None:
    await _respond(send, status, _error_body(message), b"application/json")


async def _upstream_failed(send: Send, exc: BaseException) -> None:
    """Answer for an upstream that failed before the response started: 504 or 502."""
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientError):
        # httpx-aiohttp maps every aiohttp connection error to a timeout class; the
        # cause tells a real timeout from a refused or dropped connection.
        timed_out = isinstance(cause, asyncio.TimeoutError)
    else:
        timed_out = isinstance(exc, httpx.TimeoutException)
    if timed_out:
        await _error(send, 504, "upstream timed out")
    else:
        await _error(send, 502, "upstream unreachable")


def upstream_transport(limits: httpx.Limits = _UPSTREAM_LIMITS) -> httpx.AsyncBaseTransport:
    """The proxy's default upstream client: aiohttp as an httpx transport (``httpx-aiohttp``).

    The session is created on first use, on the serving event loop. It keeps no cookies
    (one session serves every client of the proxy), adds none of aiohttp's default
    headers, never decompresses, and trusts no proxy settings from the environment; TLS
    verification uses httpx's CA bundle.
    """
    transport = AiohttpTransport(limits=limits)
    ssl_context = transport.ssl_context  # httpx.create_ssl_context(), as httpx would verify

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=limits.max_connections or 0,
            keepalive_timeout=limits.keepalive_expiry,
            ssl=ssl_context,
        )
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_NO_AUTO_HEADERS,
            auto_decompress=False,
            trust_env=False,
            max_line_size=_MAX_HEADER_LINE,
            max_field_size=_MAX_HEADER_LINE,
        )

    transport.client = session
    return transport


class TargetCheckingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the raw request target in ``raw_path``.

    Stock httptools hands the app only the path it parsed out of the target, so a request
    line ``POST http://elsewhere/v1/messages`` would look like ``/v1/messages``. Here
    ``raw_path`` is the target up to ``?``, byte for byte, as uvicorn's h11 protocol gives
    it, and the app refuses every target that is not a plain path.
    """

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # The request's task has been created above but has not run yet: it sees this.
        scope: Any = self.scope
        if "raw_path" in scope:
            scope["raw_path"] = self.url.partition(b"?")[0]


def server_options() -> dict[str, Any]:
    """uvicorn settings for serving the proxy (``cachewatch proxy`` uses these).

    httptools (C) parses requests, through a protocol that still exposes the raw request
    target so that absolute-URI requests are refused; uvloop runs the event loop where
    it is installed. The upstream's own Date and Server headers are relayed, so uvicorn
    adds none; no access log (it would hold paths and client addresses for every call).
    """
    return {
        "http": TargetCheckingHttpToolsProtocol,
        "loop": "auto",
        "ws": "none",
        "lifespan": "on",
        "proxy_headers": False,
        "server_header": False,
        "date_header": False,
        "access_log": False,
        "log_level": "warning",
    }


class ProxyApp:
    """The proxy as a bare ASGI app (see :func:`create_proxy_app`).

    ``state.transport`` is the :class:`AsyncCacheWatchTransport` requests go through.
    """

    def __init__(
        self,
        upstream: str,
        *,
        allowed_hosts: Iterable[str] = (),
        max_body: int = DEFAULT_MAX_BODY,
        registry: CollectorRegistry | None = None,
        transport: Any | None = None,
        timeout: float = 600.0,
        **options: Any,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--upstream must be an http(s) URL with a host, not {upstream!r}")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._base_path = parts.path.rstrip("/")
        self._max_body = max_body
        self._too_big = f"request body over the {max_body}-byte limit"
        self._timeouts = httpx.Timeout(timeout).as_dict()
        self._extra_hosts = frozenset(h.lower() for h in allowed_hosts)
        self._urls: dict[tuple[str, bytes], httpx.URL] = {}
        self._host_header = httpx.Request("GET", self._url("/", b"")).headers["host"].encode("ascii")
        self._exposed = exposition_registry(registry)
        self.transport = AsyncCacheWatchTransport(
            transport or upstream_transport(), registry=registry, **options
        )
        self.state = State()
        self.state.transport = self.transport

    # -- ASGI ---------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1000})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.transport.aclose()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return

    # -- checks -------------------------------------------------------------------------------

    def _host_allowed(self, host_header: bytes) -> bool:
        host = host_header.decode("latin-1").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        extra = self._extra_hosts
        return name in _LOOPBACK_NAMES or host in extra or name in extra

    def _url(self, path: str, query: bytes) -> httpx.URL:
        key = (path, query)
        url = self._urls.get(key)
        if url is None:
            url = httpx.URL(
                scheme=self._scheme,
                host=self._host,
                port=self._port,
                path=self._base_path + path,
                query=query,
            )
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            self._urls[key] = url
        return url

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole request body, or None when it is over the limit."""
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        body: bytes | bytearray = message.get("body", b"")
        if not message.get("more_body", False):
            return bytes(body) if len(body) <= self._max_body else None
        buffer = bytearray(body)
        while True:
            if len(buffer) > self._max_body:
                return None
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            buffer += message.get("body", b"")
            if not message.get("more_body", False):
                return bytes(buffer) if len(buffer) <= self._max_body else None

    # -- requests -----------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        path: str = scope["path"]
        if path == "/metrics" and method in ("GET", "HEAD"):
            body = generate_latest(self._exposed)
            await _respond(send, 200, body, CONTENT_TYPE_LATEST.encode("latin-1"))
            return
        if method not in _METHODS:
            await _respond(
                send, 405, b"Method Not Allowed", b"text/plain; charset=utf-8", [(b"allow", _ALLOW)]
            )
            return
        raw_target: bytes = scope.get("raw_path") or b""
        if not raw_target.startswith(b"/") or raw_target.startswith(b"//"):
            await _error(
                send, 400, "absolute-URI requests are refused: this proxy only forwards to its upstream"
            )
            return
        host = b""
        declared: bytes | None = None
        headers: list[tuple[bytes, bytes]] = []
        for name, value in scope["headers"]:
            if name in _HOP_BY_HOP:
                if name == b"host":
                    if not host:
                        host = value
                elif name == b"content-length" and declared is None:
                    declared = value
            else:
                headers.append((name, value))
        if not self._host_allowed(host):
            await _error(send, 421, "unknown Host: this proxy only serves its own address")
            return
        if declared is not None and (not declared.isdigit() or int(declared) > self._max_body):
            await _error(send, 413, self._too_big)
            return
        try:
            content = await self._read_body(receive)
        except _Disconnected:
            return  # nobody to answer
        if content is None:
            await _error(send, 413, self._too_big)
            return
        try:
            url = self._url(path, scope.get("query_string", b""))
        except httpx.InvalidURL:
            await _error(send, 400, "invalid request target")
            return
        # Host and Content-Length as httpx would add them, given here so it need not look.
        if content:
            headers[:0] = [(b"host", self._host_header), (b"content-length", b"%d" % len(content))]
        else:
            headers.insert(0, (b"host", self._host_header))
        request = httpx.Request(
            method,
            url,
            headers=headers,
            stream=httpx.ByteStream(content),
            extensions={"timeout": self._timeouts},
        )
        request.read()
        try:
            response = await self.transport.handle_async_request(request)
        except (httpx.TransportError, aiohttp.ClientError) as exc:
            await _upstream_failed(send, exc)
            return
        await self._relay(response, scope, receive, send)

    async def _relay(self, response: httpx.Response, scope: Scope, receive: Receive, send: Send) -> None:
        stream: Any = response.stream
        relayed: list[tuple[bytes, bytes]] = []
        length: bytes | None = None
        event_stream = False
        for name, value in response.headers.raw:
            lower = name.lower()
            if lower in _HOP_BY_HOP:
                if lower == b"content-length":
                    length = value
                continue
            if lower == b"content-type" and value.lower().startswith(b"text/event-stream"):
                event_stream = True
            relayed.append((name, value))

        if (
            length is not None
            and not event_stream
            and length.isdigit()
            and int(length) <= BUFFERED_RESPONSE_LIMIT
            and scope["method"] != "HEAD"  # HEAD and 304 declare the length of a body they lack
            and response.status_code != 304
        ):
            # A JSON reply (or an error page): not a stream. Read it, answer in one piece,
            # and only then let the stream end, so the accounting, the log line and the
            # connection's return to the pool happen after the client has its answer.
            expected = int(length)
            chunks: list[bytes] = []
            iterator = stream.__aiter__()
            try:
                try:
                    received = 0
                    while received < expected:
                        chunk = await iterator.__anext__()
                        chunks.append(chunk)
                        received += len(chunk)
                except StopAsyncIteration:
                    pass
                except (httpx.TransportError, aiohttp.ClientError) as exc:
                    await _upstream_failed(send, exc)
                    return
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                relayed.append((b"content-length", b"%d" % len(body)))
                await send(
                    {"type": "http.response.start", "status": response.status_code, "headers": relayed}
                )
                await send({"type": "http.response.body", "body": body, "more_body": False})
                try:
                    async for _ in iterator:  # the end of the body: records the exchange
                        pass
                except (httpx.TransportError, aiohttp.ClientError):
                    pass  # already answered; the exchange recorded the error
            finally:
                await iterator.aclose()
                await stream.aclose()
            return

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in stream:
                    yield chunk
            finally:
                await stream.aclose()

        if length is not None:
            relayed.append((b"content-length", length))
        streaming = StreamingResponse(relay(), status_code=response.status_code)
        streaming.raw_headers = relayed
        await streaming(scope, receive, send)


def create_proxy_app(
    upstream: str,
    *,
    allowed_hosts: Iterable[str] = (),
    max_body: int = DEFAULT_MAX_BODY,
    registry: CollectorRegistry | None = None,
    transport: Any | None = None,
    timeout: float = 600.0,
    **options: Any,
) -> ProxyApp:
    """The proxy as an ASGI app.

    Args:
        upstream: base URL every request is forwarded to, e.g.
            ``https://dashscope.aliyuncs.com/apps/anthropic``; the client's path is appended.
        allowed_hosts: ``Host`` header values accepted besides loopback names.
        max_body: largest request body accepted, in bytes.
        registry: Prometheus registry for the metrics (and for ``/metrics``).
        transport: inner async transport (default: :func:`upstream_transport`, aiohttp).
        timeout: upstream timeout in seconds (connect, read, write and pool).
        **options: passed to :class:`AsyncCacheWatchTransport` (``breakpoints``, ``workspaces``...).
    """
    return ProxyApp(
        upstream,
        allowed_hosts=allowed_hosts,
        max_body=max_body,
        registry=registry,
        transport=transport,
        timeout=timeout,
        **options,
    )
