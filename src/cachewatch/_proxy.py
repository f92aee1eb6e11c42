"""``cachewatch proxy``: a loopback reverse proxy that gives non-Python clients the same behaviour.

curl, the TypeScript SDK, the ``dashscope`` SDK and coding agents point their base URL
at the proxy; it forwards to its one configured upstream through
:class:`AsyncCacheWatchTransport`, so breakpoints, accounting and telemetry are exactly
those of the in-process transport, and serves ``/metrics`` on the same port.

Safety rules (SPEC section 10):

- binds 127.0.0.1 unless told otherwise;
- forwards only to the configured upstream: absolute-URI request targets and requests
  whose ``Host`` is not the proxy itself are refused (it is never an open relay);
- limits the request body size (413 beyond it);
- passes credentials through untouched and never logs them;
- streams responses through chunk by chunk and closes the upstream response as soon as
  the client goes away.

Latency (SPEC section 11: under 1 ms added at p50 on loopback). The app is a bare ASGI
callable rather than a routed framework app, and each request goes straight to the
transport's ``handle_async_request`` (no ``AsyncClient``: no per-request URL merging,
cookie jar or auth/redirect machinery; the upstream URL of a path is parsed once and
cached). A response that is not an event stream and declares a small
``Content-Length`` (a JSON reply) is read whole and sent in one message; every other
response (SSE, chunked, large) is streamed chunk by chunk as before, with a disconnect
listener that closes the upstream as soon as the client goes away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.datastructures import State
from starlette.responses import StreamingResponse

from ._server import exposition_registry
from ._transport import AsyncCacheWatchTransport

__all__ = ["BUFFERED_RESPONSE_LIMIT", "DEFAULT_MAX_BODY", "ProxyApp", "create_proxy_app"]

DEFAULT_MAX_BODY = 32 * 1024 * 1024

#: Non-streaming upstream responses up to this declared ``Content-Length`` are read whole
#: and sent in one piece; bigger ones, chunked ones and event streams are streamed.
BUFFERED_RESPONSE_LIMIT = 256 * 1024

#: RFC 9110 section 7.6.1 hop-by-hop headers, plus the ones the proxy recomputes.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
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
            transport or httpx.AsyncHTTPTransport(limits=_UPSTREAM_LIMITS), registry=registry, **options
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
        except httpx.TimeoutException:
            await _error(send, 504, "upstream timed out")
            return
        except httpx.TransportError:
            await _error(send, 502, "upstream unreachable")
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
                except httpx.TimeoutException:
                    await _error(send, 504, "upstream timed out")
                    return
                except httpx.TransportError:
                    await _error(send, 502, "upstream unreachable")
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
                except httpx.TransportError:
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
        transport: inner async transport (default: httpx's).
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
