# ruff: noqa: E402 (the extra check must run before the imports it guards)
"""``cachewatch proxy``: a loopback reverse proxy that gives non-Python clients the same behaviour.

curl, the TypeScript SDK, the ``dashscope`` SDK and coding agents point their base URL
at the proxy; it forwards to its one configured upstream through
:class:`AsyncCacheWatchTransport`, so breakpoints, accounting and telemetry are exactly
those of the in-process transport, and serves ``/metrics`` on the same port.

Safety rules (SPEC section 10), against hostile clients and broken upstreams alike:

- binds 127.0.0.1 unless told otherwise;
- forwards only to the configured upstream and only under its base path: absolute-URI
  request targets and requests whose ``Host`` is not the proxy itself are refused (it is
  never an open relay). The request target is forwarded **exactly as received** (never
  decoded and re-encoded: the raw bytes go out through the ``target`` request extension),
  and a target whose dot segments, in any encoding (``..``, ``%2e%2e``, ``%252e``,
  ``..%2f``, backslashes, overlong UTF-8...), would climb above the base path gets a 400;
- limits the request head (size and header count: 431) and body (413);
- times out a client that is slow to send its head or body (408), idle between
  requests or that leaves its response unread, and an upstream that is slow to connect,
  to answer (504) or to send its body;
- passes credentials through untouched and never logs them;
- releases the upstream connection as soon as the client goes away: the protocol cancels
  the request's task when its connection is lost before the response completed, wherever
  it waits (upstream headers, upstream body, a slow client), and the exchange is
  recorded as ``aborted``;
- an upstream that fails mid-body (closed early, idle past its timeout) leaves the
  client with a visibly incomplete response (its connection closed before the end),
  never a clean end; one that fails before its headers gets a 502/504 naming the cause.

Latency (SPEC section 11: under 1 ms added at p50 on loopback). Both hops use C
parsers: requests are served by uvicorn's httptools protocol (and uvloop where
available), through :class:`TargetCheckingHttpToolsProtocol`, which also enforces the
client limits above with one timer per connection; the upstream client is aiohttp
(llhttp parser) as an httpx transport (:class:`UpstreamTransport`, built on
``httpx-aiohttp``), so :class:`AsyncCacheWatchTransport` observes exactly the same
``httpx.Request``/``httpx.Response`` exchange as with httpx's own transport. Its
session keeps no cookies (one session serves every client), adds no headers of its own,
and never decompresses or follows redirects.

The app is a bare ASGI callable, and each request goes straight to the transport's
``handle_async_request`` (no ``AsyncClient``). A response that is not an event stream
and declares a small ``Content-Length`` (a JSON reply) is read whole and sent in one
message; every other response is relayed chunk by chunk as it arrives.

``cachewatch proxy --workers N`` runs N processes (uvicorn's supervisor) configured
through :data:`CONFIG_ENV` (:func:`app_from_environment`); their metrics are aggregated
through ``PROMETHEUS_MULTIPROC_DIR``. With ``--redis URL`` their engines (and those of any
other proxy or wrapped client on that Redis) share the planner's learned state and the
miss diagnosis's fingerprints through a :class:`~cachewatch.RedisStore`.

Modules, in the order a request meets them:

- ``_protocol``: the client side (uvicorn's httptools protocol, the client limits);
- ``_target``: confinement (methods, the request target, dot segments, ``Host``);
- ``_app``: the ASGI app (checks, the request to the transport, ``/metrics``);
- ``_upstream``: the upstream hop (aiohttp as an httpx transport, upstream timeouts);
- ``_relay``: the response back to the client, whole or streamed;
- ``_asgi``: what those share (scope keys, hop-by-hop headers, the proxy's error answers);
- ``_settings``: the limits and timeouts;
- ``_config``, ``_server``, ``_logging``: the CLI's configuration, uvicorn's settings and
  the ``--workers`` factory, the JSON request log.
"""

from .._extras import require

require("cachewatch.proxy", "proxy", "uvicorn", "starlette", "httptools", "aiohttp", "httpx_aiohttp")

from ._app import ProxyApp, create_proxy_app
from ._config import app_from_config
from ._protocol import TargetCheckingHttpToolsProtocol
from ._server import CONFIG_ENV, app_from_environment, server_options
from ._settings import BUFFERED_RESPONSE_LIMIT, DEFAULT_MAX_BODY, ClientLimits, UpstreamTimeouts
from ._upstream import UpstreamTransport, upstream_transport

__all__ = [
    "BUFFERED_RESPONSE_LIMIT",
    "CONFIG_ENV",
    "DEFAULT_MAX_BODY",
    "ClientLimits",
    "ProxyApp",
    "TargetCheckingHttpToolsProtocol",
    "UpstreamTimeouts",
    "UpstreamTransport",
    "app_from_config",
    "app_from_environment",
    "create_proxy_app",
    "server_options",
    "upstream_transport",
]
