"""The proxy's ASGI app: check a request, hand it to the transport, relay the answer.

Each request goes straight to :class:`AsyncCacheWatchTransport`'s
``handle_async_request`` (no ``AsyncClient``), with the client's raw target in the
``target`` extension and the hop-by-hop headers dropped; ``/metrics`` is served on the
same port. The app registers its task in the scope so that the protocol can cancel it
when the client goes away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.datastructures import State

from ..sinks._server import exposition_registry
from ..transport._transport import AsyncCacheWatchTransport
from ._asgi import (
    HOP_BY_HOP,
    TASK_KEY,
    Receive,
    Scope,
    Send,
    connection_options,
    send_error,
    send_response,
    send_upstream_failure,
)
from ._relay import relay
from ._settings import DEFAULT_MAX_BODY, URL_CACHE_MAX_TARGET, URL_CACHE_SIZE, UpstreamTimeouts
from ._target import ALLOW, METHODS, bad_target_bytes, host_allowed, leaves_base
from ._upstream import upstream_transport

__all__ = ["ProxyApp", "create_proxy_app"]


class _Disconnected(Exception):
    """The client went away while its request body was being read."""


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
        timeout: float | None = None,
        timeouts: UpstreamTimeouts | None = None,
        **options: Any,
    ) -> None:
        parts = urlsplit(upstream)
        if "@" in parts.netloc:
            # Neither URL built for the upstream keeps a user:password, and the URL is
            # echoed at start-up and in errors: refused, without repeating it.
            raise ValueError(
                "--upstream must not carry credentials (user:password@host): "
                "the client's own Authorization or API-key header is passed through"
            )
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--upstream must be an http(s) URL with a host, not {upstream!r}")
        if parts.query or parts.fragment:
            # Not repeated whole: a query can carry a key (``?key=...``).
            shown = parts._replace(query="", fragment="").geturl()
            raise ValueError(
                f"--upstream must be a base URL without query or fragment, not {shown!r} with one "
                "(the client's own query is passed through)"
            )
        if not parts.path.isascii():
            raise ValueError(f"--upstream must be a base URL with an ASCII path, not {upstream!r}")
        if timeouts is None:
            timeouts = UpstreamTimeouts() if timeout is None else UpstreamTimeouts(timeout, timeout, timeout)
        self.timeouts = timeouts
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._base_path = parts.path.rstrip("/")
        self._base_raw = self._base_path.encode("ascii")
        self._max_body = max_body
        self._too_big = f"request body over the {max_body}-byte limit"
        # For a foreign inner transport (httpx's own...): the closest httpx timeouts.
        longest = max(timeouts.headers, timeouts.idle) or None
        self._timeouts = {
            "connect": timeouts.connect or None,
            "read": longest,
            "write": timeouts.headers or None,
            "pool": timeouts.headers or None,
        }
        self._extra_hosts = frozenset(h.lower() for h in allowed_hosts)
        self._urls: dict[tuple[bytes, bytes], httpx.URL] = {}
        self._host_header = httpx.Request("GET", self._url(b"/", b"")).headers["host"].encode("ascii")
        self._exposed = exposition_registry(registry)
        self.transport = AsyncCacheWatchTransport(
            transport or upstream_transport(timeouts=timeouts), registry=registry, **options
        )
        self.state = State()
        self.state.transport = self.transport

    # -- ASGI ---------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            scope[TASK_KEY] = asyncio.current_task()
            try:
                await self._http(scope, receive, send)
            except asyncio.CancelledError:
                # The protocol cancels a request whose client went away: nobody to answer.
                # Every stage below released what it held on the way out.
                return
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

    def _url(self, raw_path: bytes, query: bytes) -> httpx.URL:
        """The upstream URL as the engine sees it (the target itself goes out raw)."""
        key = (raw_path, query)
        url = self._urls.get(key)
        if url is None:
            url = httpx.URL(
                scheme=self._scheme,
                host=self._host,
                port=self._port,
                path=self._base_path + raw_path.decode("ascii"),
                query=query,
            )
            if len(raw_path) + len(query) <= URL_CACHE_MAX_TARGET:
                if len(self._urls) >= URL_CACHE_SIZE:
                    self._urls.clear()
                self._urls[key] = url
        return url

    def _host_allowed(self, host: bytes, scope: Scope) -> bool:
        """Whether a request's ``Host`` names the proxy itself (or is absent from HTTP/1.0)."""
        # HTTP/1.0 has no Host header: a request without one was sent to this address.
        return host_allowed(host, self._extra_hosts) or (not host and scope.get("http_version") == "1.0")

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
        if scope["path"] == "/metrics" and method in ("GET", "HEAD"):
            # The same Host rule as for forwarding (no DNS-rebound page reads the metrics).
            host = next((value for name, value in scope["headers"] if name == b"host"), b"")
            if not self._host_allowed(host, scope):
                await send_error(send, 421, "unknown Host: this proxy only serves its own address")
                return
            body = generate_latest(self._exposed)
            await send_response(send, 200, body, CONTENT_TYPE_LATEST.encode("latin-1"))
            return
        if method not in METHODS:
            await send_response(
                send, 405, b"Method Not Allowed", b"text/plain; charset=utf-8", [(b"allow", ALLOW)]
            )
            return
        raw_path: bytes = scope.get("raw_path") or b""
        if not raw_path.startswith(b"/") or raw_path.startswith(b"//"):
            await send_error(
                send, 400, "absolute-URI requests are refused: this proxy only forwards to its upstream"
            )
            return
        query: bytes = scope.get("query_string", b"")
        if bad_target_bytes(raw_path) or bad_target_bytes(query):
            await send_error(send, 400, "invalid request target")
            return
        if leaves_base(raw_path):
            await send_error(
                send, 400, "the request path climbs above the upstream base path (dot segments are refused)"
            )
            return
        host = b""
        hosts = 0
        declared: bytes | None = None
        listed: frozenset[bytes] = frozenset()
        codings: list[bytes] = []
        headers: list[tuple[bytes, bytes]] = []
        for name, value in scope["headers"]:
            if name in HOP_BY_HOP:
                if name == b"host":
                    hosts += 1
                    if not host:
                        host = value
                elif name == b"content-length" and declared is None:
                    declared = value
                elif name == b"connection":
                    listed = connection_options(value, listed)
                elif name == b"transfer-encoding":
                    codings += (c.strip().lower() for c in value.split(b","))
            else:
                headers.append((name, value))
        if listed:  # the fields the client's Connection header names are for this hop only
            headers = [(name, value) for name, value in headers if name not in listed]
        if hosts > 1:
            # RFC 9112, 3.2: a request with more than one Host field is answered with 400.
            await send_error(send, 400, "more than one Host header")
            return
        if not self._host_allowed(host, scope):
            await send_error(send, 421, "unknown Host: this proxy only serves its own address")
            return
        if codings and [c for c in codings if c] != [b"chunked"]:
            # llhttp removes the chunked coding only: a body under another coding (gzip,
            # chunked) would go upstream still coded, as if it were the content.
            await send_error(send, 501, "unsupported transfer coding: only chunked is accepted")
            return
        if declared is not None and (not declared.isdigit() or int(declared) > self._max_body):
            await send_error(send, 413, self._too_big)
            return
        try:
            content = await self._read_body(receive)
        except _Disconnected:
            return  # nobody to answer
        if content is None:
            await send_error(send, 413, self._too_big)
            return
        try:
            url = self._url(raw_path, query)
        except httpx.InvalidURL:
            await send_error(send, 400, "invalid request target")
            return
        # Host and Content-Length as httpx would add them, given here so it need not look.
        if content:
            headers[:0] = [(b"host", self._host_header), (b"content-length", b"%d" % len(content))]
        else:
            headers.insert(0, (b"host", self._host_header))
        target = self._base_raw + raw_path + (b"?" + query if query else b"")
        request = httpx.Request(
            method,
            url,
            headers=headers,
            stream=httpx.ByteStream(content),
            extensions={"timeout": self._timeouts, "target": target},
        )
        request.read()
        try:
            response = await self.transport.handle_async_request(request)
        except (httpx.TransportError, aiohttp.ClientError) as exc:
            await send_upstream_failure(send, exc)
            return
        await relay(response, scope, send)


def create_proxy_app(
    upstream: str,
    *,
    allowed_hosts: Iterable[str] = (),
    max_body: int = DEFAULT_MAX_BODY,
    registry: CollectorRegistry | None = None,
    transport: Any | None = None,
    timeout: float | None = None,
    timeouts: UpstreamTimeouts | None = None,
    **options: Any,
) -> ProxyApp:
    """The proxy as an ASGI app.

    Args:
        upstream: base URL every request is forwarded to, e.g.
            ``https://dashscope.aliyuncs.com/apps/anthropic``; the client's path is appended.
        allowed_hosts: ``Host`` header values accepted besides loopback names.
        max_body: largest request body accepted, in bytes.
        registry: Prometheus registry for the metrics (and for ``/metrics``).
        transport: inner async transport (default: :class:`UpstreamTransport`, aiohttp).
        timeouts: upstream timeouts (default :class:`UpstreamTimeouts`).
        timeout: one value for every upstream timeout (shorthand for ``timeouts``).
        **options: passed to :class:`AsyncCacheWatchTransport` (``breakpoints``, ``workspaces``...).

    The client-side limits are the server's: :func:`server_options` with :class:`ClientLimits`.
    """
    return ProxyApp(
        upstream,
        allowed_hosts=allowed_hosts,
        max_body=max_body,
        registry=registry,
        transport=transport,
        timeout=timeout,
        timeouts=timeouts,
        **options,
    )
