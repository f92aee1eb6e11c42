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
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ._server import exposition_registry
from ._transport import AsyncCacheWatchTransport

__all__ = ["DEFAULT_MAX_BODY", "create_proxy_app"]

DEFAULT_MAX_BODY = 32 * 1024 * 1024

#: RFC 9110 section 7.6.1 hop-by-hop headers, plus the ones the proxy recomputes.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"type": "error", "error": {"type": "cachewatch_proxy_error", "message": message}}, status
    )


def create_proxy_app(
    upstream: str,
    *,
    allowed_hosts: Iterable[str] = (),
    max_body: int = DEFAULT_MAX_BODY,
    registry: CollectorRegistry | None = None,
    transport: Any | None = None,
    timeout: float = 600.0,
    **options: Any,
) -> Starlette:
    """The proxy as an ASGI app.

    Args:
        upstream: base URL every request is forwarded to, e.g.
            ``https://dashscope.aliyuncs.com/apps/anthropic``; the client's path is appended.
        allowed_hosts: ``Host`` header values accepted besides loopback names.
        max_body: largest request body accepted, in bytes.
        registry: Prometheus registry for the metrics (and for ``/metrics``).
        transport: inner async transport (default: httpx's).
        **options: passed to :class:`AsyncCacheWatchTransport` (``breakpoints``, ``workspaces``...).
    """
    parts = urlsplit(upstream)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--upstream must be an http(s) URL with a host, not {upstream!r}")
    base_path = parts.path.rstrip("/")
    cw = AsyncCacheWatchTransport(transport or httpx.AsyncHTTPTransport(), registry=registry, **options)
    client = httpx.AsyncClient(transport=cast(Any, cw), timeout=timeout, follow_redirects=False)
    exposed = exposition_registry(registry)
    extra_hosts = {h.lower() for h in allowed_hosts}

    def host_allowed(host_header: str) -> bool:
        host = host_header.lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in ("127.0.0.1", "localhost", "[::1]") or host in extra_hosts or name in extra_hosts

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(exposed), media_type=CONTENT_TYPE_LATEST)

    async def forward(request: Request) -> Response:
        raw_target = request.scope.get("raw_path") or b""
        if not raw_target.startswith(b"/") or raw_target.startswith(b"//"):
            return _error(400, "absolute-URI requests are refused: this proxy only forwards to its upstream")
        if not host_allowed(request.headers.get("host", "")):
            return _error(421, "unknown Host: this proxy only serves its own address")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_body):
            return _error(413, f"request body over the {max_body}-byte limit")
        body = bytearray()
        try:
            async for piece in request.stream():
                body += piece
                if len(body) > max_body:
                    return _error(413, f"request body over the {max_body}-byte limit")
        except ClientDisconnect:
            return Response(status_code=499)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        url = httpx.URL(
            scheme=parts.scheme,
            host=parts.hostname or "",
            port=parts.port,
            path=base_path + request.url.path,
            query=request.url.query.encode("ascii"),
        )
        upstream_request = client.build_request(request.method, url, headers=headers, content=bytes(body))
        try:
            upstream_response = await client.send(upstream_request, stream=True)
        except httpx.TimeoutException:
            return _error(504, "upstream timed out")
        except httpx.TransportError:
            return _error(502, "upstream unreachable")
        response_headers = [
            (k, v) for k, v in upstream_response.headers.multi_items() if k.lower() not in _HOP_BY_HOP
        ]

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream_response.aiter_raw():
                    yield chunk
            finally:
                await upstream_response.aclose()

        response = StreamingResponse(relay(), status_code=upstream_response.status_code)
        response.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response_headers]
        if "content-length" in upstream_response.headers:
            response.raw_headers.append(
                (b"content-length", upstream_response.headers["content-length"].encode())
            )
        return response

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.aclose()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
    app = Starlette(
        routes=[
            Route("/metrics", metrics, methods=["GET"]),
            Route("/{path:path}", forward, methods=methods),
        ],
        lifespan=lifespan,
    )
    app.state.transport = cw
    return app
