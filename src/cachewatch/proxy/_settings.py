"""The proxy's limits and timeouts: what a client may send, how long the upstream (and Redis) may take.

:class:`ClientLimits` is enforced on the client side by
:class:`~cachewatch.proxy._protocol.TargetCheckingHttpToolsProtocol`;
:class:`UpstreamTimeouts` on the upstream hop by
:class:`~cachewatch.proxy._upstream.UpstreamTransport`. Plain data, no dependencies, so
that every other module of the proxy can read it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BUFFERED_RESPONSE_LIMIT",
    "DEFAULT_MAX_BODY",
    "DEFAULT_REDIS_TIMEOUT",
    "URL_CACHE_MAX_TARGET",
    "URL_CACHE_SIZE",
    "ClientLimits",
    "UpstreamTimeouts",
]

DEFAULT_MAX_BODY = 32 * 1024 * 1024

#: ``--redis``: seconds each call to the shared Redis may take (RedisStore's default).
DEFAULT_REDIS_TIMEOUT = 0.05

#: Non-streaming upstream responses up to this declared ``Content-Length`` are read whole
#: and sent in one piece; bigger ones, chunked ones and event streams are streamed.
BUFFERED_RESPONSE_LIMIT = 256 * 1024


@dataclass(frozen=True)
class UpstreamTimeouts:
    """Upstream timeouts in seconds (0 turns one off).

    Attributes:
        connect: to establish the TCP (and TLS) connection; past it, 504.
        headers: from sending the request to the end of the response headers; past it,
            504. Generous by default: a non-streamed completion can take minutes.
        idle: longest silence between two pieces of the response body; past it the
            upstream is dropped and the client sees an incomplete response.
    """

    connect: float = 10.0
    headers: float = 600.0
    idle: float = 300.0


@dataclass(frozen=True)
class ClientLimits:
    """What a client may take, enforced by :class:`TargetCheckingHttpToolsProtocol`.

    Attributes:
        head_timeout: seconds to send a request head, from the connection (or the first
            byte of a request on a kept-alive connection); past it, 408 and close (an
            idle new connection is closed silently).
        body_timeout: longest silence while sending a request body; past it, 408.
        request_timeout: the whole request, head and body, must arrive within it (a
            client trickling one byte a second); past it, 408.
        keep_alive_timeout: an idle connection between requests is closed after it.
        send_timeout: longest a client may leave its response unread (the proxy's send
            buffer full); past it the connection is dropped, and with it the upstream
            connection (a client that stops reading a stream held it forever).
        max_head_bytes: largest request head (request line and headers); over it, 431.
        max_headers: most header fields in one request; over it, 431.
    """

    head_timeout: float = 30.0
    body_timeout: float = 30.0
    request_timeout: float = 300.0
    keep_alive_timeout: float = 5.0
    send_timeout: float = 30.0
    max_head_bytes: int = 64 * 1024
    max_headers: int = 100


#: Most URLs remembered by the app and the upstream transport (cleared when full).
URL_CACHE_SIZE = 1024
#: Longest request target (path and query) whose URLs are remembered: API paths are
#: short, and a client sending long unique paths (up to the 64 KiB head limit) would
#: otherwise make those caches hold a few hundred megabytes.
URL_CACHE_MAX_TARGET = 1024
