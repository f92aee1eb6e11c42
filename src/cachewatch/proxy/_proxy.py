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
- times out a client that is slow to send its head or body (408) or idle between
  requests, and an upstream that is slow to connect, to answer (504) or to send its body;
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
through ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, TextIO
from urllib.parse import unquote_to_bytes, urlsplit

import aiohttp
import httptools
import httpx
import orjson
import yarl
from httpx_aiohttp import AiohttpTransport
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.datastructures import State
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..sinks._server import exposition_registry
from ..transport._transport import AsyncCacheWatchTransport

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

DEFAULT_MAX_BODY = 32 * 1024 * 1024

#: Non-streaming upstream responses up to this declared ``Content-Length`` are read whole
#: and sent in one piece; bigger ones, chunked ones and event streams are streamed.
BUFFERED_RESPONSE_LIMIT = 256 * 1024

#: The environment variable carrying the proxy's configuration to ``--workers`` processes.
CONFIG_ENV = "CACHEWATCH_PROXY_CONFIG"


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
        max_head_bytes: largest request head (request line and headers); over it, 431.
        max_headers: most header fields in one request; over it, 431.
    """

    head_timeout: float = 30.0
    body_timeout: float = 30.0
    request_timeout: float = 300.0
    keep_alive_timeout: float = 5.0
    max_head_bytes: int = 64 * 1024
    max_headers: int = 100


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

#: Scope keys shared by the protocol and the app: the request's task (cancelled when its
#: client goes away) and a callable that closes the client connection (to end a response
#: visibly incomplete).
_TASK_KEY = "cachewatch.task"
_ABORT_KEY = "cachewatch.abort"

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


def _failure(exc: BaseException) -> tuple[int, str]:
    """Status and message for an upstream that failed before the response could start."""
    cause = exc.__cause__
    if isinstance(exc, httpx.TimeoutException) or (
        # A foreign transport may map an aiohttp timeout to another class.
        isinstance(cause, aiohttp.ClientError) and isinstance(cause, asyncio.TimeoutError)
    ):
        return 504, "upstream timed out"
    if isinstance(exc, httpx.ConnectError):
        return 502, "upstream unreachable"
    if isinstance(exc, httpx.RemoteProtocolError):
        return 502, "upstream closed the connection before its response was complete"
    return 502, "upstream connection failed"


async def _upstream_failed(send: Send, exc: BaseException) -> None:
    await _error(send, *_failure(exc))


# -- the request target ------------------------------------------------------------------------

#: What the dot-segment check reads as a dot or a separator once percent-decoding is
#: undone: overlong UTF-8 and IIS ``%u`` forms, full-width dot and solidus, backslash.
_DOT_FORMS = (b"\xc0\xae", b"\xe0\x80\xae", b"\xef\xbc\x8e", b"%u002e")
_SLASH_FORMS = (b"\xc0\xaf", b"\xe0\x80\xaf", b"\xef\xbc\x8f", b"%u002f", b"%u005c", b"%u2215", b"\\")


def _leaves_base(raw_path: bytes) -> bool:
    """Whether ``raw_path``'s dot segments, in any encoding, climb above its first segment.

    Percent-encoding is undone up to three times (double and triple encoding), then the
    overlong, ``%u`` and full-width forms of ``.`` and ``/`` and the backslash are read as
    such; ``;params`` after a segment are ignored (``..;x`` is ``..`` to some servers), and
    empty segments do not count as depth (some servers merge slashes).
    """
    path = raw_path
    if b"%" not in path and b"." not in path and b"\\" not in path:
        return False  # the common case: no dot can be hidden in it
    lowered = path.lower()
    for _ in range(3):
        if b"%" not in lowered:
            break
        decoded = unquote_to_bytes(lowered).lower()
        if decoded == lowered:
            break
        lowered = decoded
    for form in _DOT_FORMS:
        lowered = lowered.replace(form, b".")
    for form in _SLASH_FORMS:
        lowered = lowered.replace(form, b"/")
    depth = 0
    for segment in lowered.split(b"/"):
        segment = segment.partition(b";")[0]
        if segment == b"..":
            depth -= 1
            if depth < 0:
                return True
        elif segment and segment != b".":
            depth += 1
    return False


def _bad_target_bytes(target: bytes) -> bool:
    """Bytes no origin-form request target may hold: controls, space, non-ASCII, ``#``."""
    return not target.isascii() or b"#" in target or any(b <= 0x20 or b == 0x7F for b in target)


# -- the upstream hop ----------------------------------------------------------------------------


class _Deadline:
    """Cancels the current task after ``delay`` seconds unless disarmed first.

    After a ``CancelledError``, :meth:`expired` says whether this deadline caused it
    (and, on Python 3.11+, that nobody else cancelled the task too).
    """

    __slots__ = ("_handle", "_task", "fired")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self._task = asyncio.current_task(loop)
        self.fired = False
        self._handle = loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self.fired = True
        if self._task is not None:
            self._task.cancel()

    def disarm(self) -> None:
        self._handle.cancel()

    def expired(self) -> bool:
        if not self.fired:
            return False
        uncancel = getattr(self._task, "uncancel", None)
        return uncancel is None or uncancel() == 0


def _request_error(exc: aiohttp.ClientError) -> httpx.TransportError:
    """The httpx exception for an aiohttp failure before the response headers."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout("upstream did not accept the connection in time")
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout("upstream timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError("upstream unreachable")
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError)):
        return httpx.RemoteProtocolError("upstream closed the connection or sent an invalid response")
    return httpx.ReadError("upstream connection failed")


class _UpstreamStream(httpx.AsyncByteStream):
    """An aiohttp response body as an httpx stream: pieces as they arrive, httpx errors."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> Any:
        content = self._response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except aiohttp.ClientPayloadError as exc:
            raise httpx.RemoteProtocolError(
                "upstream closed the connection before the end of its response body"
            ) from exc
        except aiohttp.ServerTimeoutError as exc:
            raise httpx.ReadTimeout("upstream went silent in the middle of its response body") from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError("upstream connection failed in the middle of its response body") from exc

    async def aclose(self) -> None:
        response = self._response
        if response.content.is_eof():
            response.release()  # back to the pool
        else:
            response.close()  # an unfinished body: the connection cannot be reused


class UpstreamTransport(AiohttpTransport):
    """``httpx-aiohttp``'s transport with the proxy's upstream rules.

    - the request target goes out exactly as the ``target`` request extension gives it
      (the client's raw bytes under the base path), or as ``request.url`` otherwise;
    - :class:`UpstreamTimeouts`: connect (aiohttp's ``sock_connect``), headers (a
      deadline around the whole request), idle (aiohttp's read timeout, armed once the
      headers are in, so that it never cuts a long wait for the headers);
    - aiohttp errors become the httpx errors they mean (a body cut short is a
      ``RemoteProtocolError``, not a connect timeout).
    """

    def __init__(
        self, limits: httpx.Limits = _UPSTREAM_LIMITS, timeouts: UpstreamTimeouts | None = None
    ) -> None:
        super().__init__(limits=limits)
        self.timeouts = timeouts or UpstreamTimeouts()
        ssl_context = self.ssl_context  # httpx.create_ssl_context(), as httpx would verify

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

        self.client = session
        self._client_timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=self.timeouts.connect or None, sock_read=None
        )
        self._urls: dict[tuple[str, str | None, int | None, bytes], yarl.URL] = {}

    def _yarl(self, request: httpx.Request) -> yarl.URL:
        url = request.url
        target = request.extensions.get("target") or url.raw_path
        key = (url.scheme, url.host, url.port, target)
        found = self._urls.get(key)
        if found is None:
            path, _, query = target.decode("ascii").partition("?")
            found = yarl.URL.build(
                scheme=url.scheme, host=url.host, port=url.port, path=path, query_string=query, encoded=True
            )
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            self._urls[key] = found
        return found

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        client = self.client
        if not isinstance(client, aiohttp.ClientSession):
            client = self.client = self.get_client()
        data: Any
        try:
            data = request.content or None
        except httpx.RequestNotRead:
            data = request.stream
        timeouts = self.timeouts
        deadline = _Deadline(asyncio.get_running_loop(), timeouts.headers) if timeouts.headers else None
        try:
            response = await client.request(
                request.method,
                self._yarl(request),
                headers=request.headers.multi_items(),
                data=data,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=self._client_timeout,
            )
        except asyncio.CancelledError:
            if deadline is not None and deadline.expired():
                raise httpx.ReadTimeout("upstream sent no response headers in time") from None
            raise
        except aiohttp.ClientError as exc:
            raise _request_error(exc) from exc
        finally:
            if deadline is not None:
                deadline.disarm()
        connection = response.connection
        if timeouts.idle and connection is not None and not response.content.is_eof():
            protocol = connection.protocol
            if protocol is not None:
                protocol.read_timeout = timeouts.idle
                protocol.start_timeout()
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("latin-1", "replace")
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_UpstreamStream(response),
            request=request,
            extensions=extensions,
        )


def upstream_transport(
    limits: httpx.Limits = _UPSTREAM_LIMITS, timeouts: UpstreamTimeouts | None = None
) -> httpx.AsyncBaseTransport:
    """The proxy's default upstream client: aiohttp as an httpx transport (:class:`UpstreamTransport`).

    The session is created on first use, on the serving event loop. It keeps no cookies
    (one session serves every client of the proxy), adds none of aiohttp's default
    headers, never decompresses, and trusts no proxy settings from the environment; TLS
    verification uses httpx's CA bundle.
    """
    return UpstreamTransport(limits, timeouts)


# -- the client side ----------------------------------------------------------------------------

_HEAD, _BODY, _APP = 0, 1, 2
#: uvicorn's keep-alive timeout when it is turned off (0): a year.
_FOREVER = 365 * 24 * 3600
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that breaks a limit."""


class _OneTickWriter:
    """A cycle's transport that sends the response head with whatever follows in the same tick.

    uvicorn writes a response head and its body in two ``transport.write`` calls, which
    are two ``send`` system calls and two segments for the client to wake up for. A JSON
    reply's head and body are sent back to back, in one event-loop step: held until
    the end of that step (``call_soon``), they leave together. A streamed response's head
    leaves at the end of the step too, so its first byte is not delayed.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 100 "):
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


class TargetCheckingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the raw request target and the client limits.

    - ``raw_path`` is the target up to ``?``, byte for byte, as uvicorn's h11 protocol
      gives it (stock httptools gives only the parsed path, so ``POST
      http://elsewhere/v1/messages`` would look like ``/v1/messages``);
    - :class:`ClientLimits` (the class attribute ``client_limits``): head size and header
      count (431, counted on the bytes received, before httptools buffers them), head,
      body and whole-request timeouts (408), with one timer per connection;
    - when the connection is lost before the response completed, the request's task
      (registered by the app under ``scope["cachewatch.task"]``) is cancelled, so that
      whatever it waits for upstream is released at once;
    - ``scope["cachewatch.abort"]`` closes the connection, to end a response that cannot
      be completed (the client sees it incomplete).
    """

    client_limits: ClientLimits = ClientLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _HEAD
        #: The bytes received belong to a request head not yet complete.
        self._counting_head = True
        self._head_bytes = 0
        self._head_tail = b""
        self._header_count = 0
        self._expect_body = False
        self._refusal: tuple[int, str] | None = None
        self._deadline = 0.0
        self._request_deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # -- timers (one per connection; a later deadline is picked up when the timer fires)

    def _after(self, seconds: float) -> float:
        """The deadline ``seconds`` from now (a timeout of 0 is off: never)."""
        return self.loop.time() + seconds if seconds else math.inf

    def _arm(self, deadline: float) -> None:
        self._deadline = deadline
        timer = self._timer
        if deadline == math.inf:
            return  # no deadline: a pending timer re-arms itself to nothing when it fires
        if timer is None or deadline < self._timer_at:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(deadline, self._on_deadline)
            self._timer_at = deadline

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_deadline(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        limits = self.client_limits
        now = self.loop.time()
        if now < self._deadline:
            self._arm(self._deadline)
            return
        cycle = self.cycle
        if self._phase == _HEAD:
            if cycle is not None and not cycle.response_complete:
                # A pipelined head while a response is still going out: not the client's wait.
                self._arm(self._after(limits.head_timeout))
            elif self._head_bytes:
                self._refuse(408, f"request head not received within {limits.head_timeout:g} s")
            else:
                transport.close()  # an idle new connection: nothing to answer
        elif self._phase == _BODY:
            if self.flow is not None and self.flow.read_paused:
                self._arm(self._after(limits.body_timeout))  # the app is not reading: our wait
            else:
                self._refuse(408, "request body not received in time")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` when no response is under way, and close the connection."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete or (self._phase == _BODY and not cycle.response_started):
            body = _error_body(message)
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, _REASONS.get(status, b""), len(body), body)
            )
        self.transport.close()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._request_deadline = self._after(self.client_limits.request_timeout)
        self._arm(self._after(self.client_limits.head_timeout))

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        self._disarm()
        if cycle is not None and not cycle.response_complete:
            task: asyncio.Task[Any] | None = cycle.scope.get(_TASK_KEY)  # type: ignore[assignment]
            if task is not None and not task.done():
                task.cancel()  # the client is gone: stop waiting on its behalf

    def data_received(self, data: bytes) -> None:
        if self._counting_head:
            self._head_bytes += len(data)
            limit = self.client_limits.max_head_bytes
            if self._head_bytes > limit and not self._head_ends_within(data, limit):
                self._refuse(431, f"request head over the {limit}-byte limit")
                return
            self._head_tail = data[-3:]
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if self._refusal is not None:
                self._refuse(*self._refusal)
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")

    def _head_ends_within(self, data: bytes, limit: int) -> bool:
        """Whether the head being counted ends in ``data`` (or just before) within ``limit`` bytes."""
        probe = self._head_tail + data
        before = self._head_bytes - len(probe)
        ends = [i + 4 for i in (probe.find(b"\r\n\r\n"),) if i != -1]
        ends += [i + 2 for i in (probe.find(b"\n\n"),) if i != -1]
        return bool(ends) and before + min(ends) <= limit

    # -- parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0
        self._expect_body = False
        self._phase = _HEAD
        if self._timer is None:  # on a kept-alive connection: the head starts now
            self._request_deadline = self._after(self.client_limits.request_timeout)
            self._arm(self._after(self.client_limits.head_timeout))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.client_limits.max_headers:
            self._refusal = (431, f"more than {self.client_limits.max_headers} request header fields")
            raise _Refused
        super().on_header(name, value)
        lower = name.lower()
        if lower == b"transfer-encoding" or (lower == b"content-length" and value.strip(b" \t0")):
            self._expect_body = True

    def on_headers_complete(self) -> None:
        self._counting_head = False
        super().on_headers_complete()
        # The request's task has been created above but has not run yet: it sees this.
        scope: Any = self.scope
        if "raw_path" in scope:
            scope["raw_path"] = self.url.partition(b"?")[0]
        cycle: Any = self.cycle
        if cycle is not None and cycle.scope is scope:
            cycle.transport = writer = _OneTickWriter(self.transport, self.loop)
            scope[_ABORT_KEY] = writer.close
        else:
            scope[_ABORT_KEY] = self.transport.close
        if self._expect_body:
            self._phase = _BODY
            self._arm(min(self._after(self.client_limits.body_timeout), self._request_deadline))
        else:
            self._phase = _APP
            self._disarm()

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        if self._phase == _BODY:
            # Pushed back lazily: the timer re-arms itself when it fires early.
            self._deadline = min(self._after(self.client_limits.body_timeout), self._request_deadline)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._phase = _APP
        self._disarm()
        self._counting_head = True  # what follows is the next request's head
        self._head_bytes = 0
        self._head_tail = b""


def server_options(limits: ClientLimits | None = None, *, importable: bool = False) -> dict[str, Any]:
    """uvicorn settings for serving the proxy (``cachewatch proxy`` uses these).

    httptools (C) parses requests, through :class:`TargetCheckingHttpToolsProtocol`
    (the raw request target, and ``limits``); uvloop runs the event loop where it is
    installed. The upstream's own Date and Server headers are relayed, so uvicorn adds
    none; no access log (it would hold paths and client addresses for every call).

    ``importable``: name the protocol by import string (for ``--workers``, whose
    processes get ``limits`` from :data:`CONFIG_ENV` instead).
    """
    limits = limits or ClientLimits()
    protocol: Any
    if importable:
        protocol = f"{__name__}:TargetCheckingHttpToolsProtocol"
    elif limits == TargetCheckingHttpToolsProtocol.client_limits:
        protocol = TargetCheckingHttpToolsProtocol
    else:
        protocol = type(
            "TargetCheckingHttpToolsProtocol", (TargetCheckingHttpToolsProtocol,), {"client_limits": limits}
        )
    return {
        "http": protocol,
        "loop": "auto",
        "ws": "none",
        "lifespan": "on",
        "proxy_headers": False,
        "server_header": False,
        "date_header": False,
        "access_log": False,
        "log_level": "warning",
        "timeout_keep_alive": limits.keep_alive_timeout or _FOREVER,
    }


# -- the app -----------------------------------------------------------------------------------


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
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--upstream must be an http(s) URL with a host, not {upstream!r}")
        if parts.query or parts.fragment or not parts.path.isascii():
            raise ValueError(f"--upstream must be a base URL without query or fragment, not {upstream!r}")
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
            scope[_TASK_KEY] = asyncio.current_task()
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

    def _host_allowed(self, host_header: bytes) -> bool:
        host = host_header.decode("latin-1").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        extra = self._extra_hosts
        return name in _LOOPBACK_NAMES or host in extra or name in extra

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
        if scope["path"] == "/metrics" and method in ("GET", "HEAD"):
            body = generate_latest(self._exposed)
            await _respond(send, 200, body, CONTENT_TYPE_LATEST.encode("latin-1"))
            return
        if method not in _METHODS:
            await _respond(
                send, 405, b"Method Not Allowed", b"text/plain; charset=utf-8", [(b"allow", _ALLOW)]
            )
            return
        raw_path: bytes = scope.get("raw_path") or b""
        if not raw_path.startswith(b"/") or raw_path.startswith(b"//"):
            await _error(
                send, 400, "absolute-URI requests are refused: this proxy only forwards to its upstream"
            )
            return
        query: bytes = scope.get("query_string", b"")
        if _bad_target_bytes(raw_path) or _bad_target_bytes(query):
            await _error(send, 400, "invalid request target")
            return
        if _leaves_base(raw_path):
            await _error(
                send, 400, "the request path climbs above the upstream base path (dot segments are refused)"
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
        # HTTP/1.0 has no Host header: a request without one was sent to this address.
        if not self._host_allowed(host) and (host or scope.get("http_version") != "1.0"):
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
            url = self._url(raw_path, query)
        except httpx.InvalidURL:
            await _error(send, 400, "invalid request target")
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
            await _upstream_failed(send, exc)
            return
        await self._relay(response, scope, send)

    async def _relay(self, response: httpx.Response, scope: Scope, send: Send) -> None:
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

        iterator = stream.__aiter__()
        try:
            if (
                length is not None
                and not event_stream
                and length.isdigit()
                and int(length) <= BUFFERED_RESPONSE_LIMIT
                and scope["method"] != "HEAD"  # HEAD and 304 declare the length of a body they lack
                and response.status_code != 304
            ):
                await self._relay_whole(response, int(length), relayed, iterator, send)
                return
            if length is not None:
                relayed.append((b"content-length", length))
            await send({"type": "http.response.start", "status": response.status_code, "headers": relayed})
            try:
                async for chunk in iterator:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (httpx.TransportError, aiohttp.ClientError):
                # The upstream failed mid-body (closed early, went silent past its idle
                # timeout...); the exchange recorded it. The client must see an incomplete
                # response, not a clean end: its connection is closed without one.
                abort = scope.get(_ABORT_KEY)
                if abort is None:
                    raise  # another server: it closes the connection of a failed app
                abort()
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
            await stream.aclose()

    async def _relay_whole(
        self,
        response: httpx.Response,
        expected: int,
        relayed: list[tuple[bytes, bytes]],
        iterator: Any,
        send: Send,
    ) -> None:
        """A JSON reply (or an error page): read it, answer in one piece, then end the stream.

        Only then does the stream end, so the accounting, the log line and the
        connection's return to the pool happen after the client has its answer.
        """
        chunks: list[bytes] = []
        try:
            received = 0
            while received < expected:
                chunk = await iterator.__anext__()
                chunks.append(chunk)
                received += len(chunk)
        except StopAsyncIteration:
            pass
        except (httpx.TransportError, aiohttp.ClientError) as exc:
            # Nothing was sent yet: a clean 502/504 naming the cause (a body cut short
            # is not "unreachable").
            await _upstream_failed(send, exc)
            return
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        relayed.append((b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": response.status_code, "headers": relayed})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        try:
            async for _ in iterator:  # the end of the body: records the exchange
                pass
        except (httpx.TransportError, aiohttp.ClientError):
            pass  # already answered; the exchange recorded the error


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


# -- configuration for the CLI and its --workers processes ---------------------------------------


class _JsonLines(logging.Formatter):
    """One JSON object per record: the ``cachewatch.request`` fields, or the message."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
        }
        fields = getattr(record, "cachewatch", None)
        if isinstance(fields, dict):
            line["event"] = "cachewatch.request"
            line.update(fields)
        else:
            line["event"] = record.getMessage()
        return orjson.dumps(line, default=str).decode()


def log_json_lines(stream: TextIO | None = None) -> None:
    """One JSON line per proxied request on ``stream`` (default stdout).

    The proxy is an application, so it configures the library's stdlib logger
    ``cachewatch`` (once per process); the events carry no credentials.
    """
    log = logging.getLogger("cachewatch")
    if any(isinstance(h.formatter, _JsonLines) for h in log.handlers):
        return
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(_JsonLines())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def proxy_config(
    upstream: str,
    *,
    allowed_hosts: Iterable[str] = (),
    max_body: int = DEFAULT_MAX_BODY,
    breakpoints: str = "auto",
    provider: str | None = None,
    prices: str | None = None,
    timeouts: UpstreamTimeouts | None = None,
    limits: ClientLimits | None = None,
    max_event_bytes: int | None = None,
    max_decoded_bytes: int | None = None,
    include_usage: bool = False,
    record: str | None = None,
) -> dict[str, Any]:
    """The proxy's settings as a JSON-able dict (what :func:`app_from_config` takes).

    ``max_event_bytes`` / ``max_decoded_bytes``: the observation caps (None: the engine's).
    ``record``: a file to append every request's traffic shape to (``cachewatch replay``).
    """
    return {
        "max_event_bytes": max_event_bytes,
        "max_decoded_bytes": max_decoded_bytes,
        "upstream": upstream,
        "allowed_hosts": list(allowed_hosts),
        "max_body": max_body,
        "breakpoints": breakpoints,
        "provider": provider,
        "prices": prices,
        "timeouts": asdict(timeouts or UpstreamTimeouts()),
        "limits": asdict(limits or ClientLimits()),
        "include_usage": include_usage,
        "record": record,
    }


def app_from_config(config: Mapping[str, Any], *, logger: Any | None = None) -> ProxyApp:
    """The proxy app of a :func:`proxy_config` dict.

    Without a ``logger``, each request is one JSON line on stdout (:func:`log_json_lines`).
    """
    options: dict[str, Any] = {"breakpoints": config.get("breakpoints", "auto")}
    if logger is not None:
        options["logger"] = logger
    else:
        log_json_lines()
    if config.get("include_usage"):
        options["include_usage"] = True
    if config.get("record"):
        options["record"] = config["record"]
    upstream: str = config["upstream"]
    if config.get("provider"):
        options["providers"] = {urlsplit(upstream).hostname or "": config["provider"]}
    if config.get("prices"):
        options["prices"] = config["prices"]
    for cap in ("max_event_bytes", "max_decoded_bytes"):
        if config.get(cap):
            options[cap] = config[cap]
    return create_proxy_app(
        upstream,
        allowed_hosts=config.get("allowed_hosts", ()),
        max_body=config.get("max_body", DEFAULT_MAX_BODY),
        timeouts=UpstreamTimeouts(**config.get("timeouts", {})),
        **options,
    )


def app_from_environment() -> ProxyApp:
    """App factory of each ``--workers`` process: the configuration comes from :data:`CONFIG_ENV`.

    Also sets this process's :class:`ClientLimits` on :class:`TargetCheckingHttpToolsProtocol`.
    """
    config = orjson.loads(os.environ[CONFIG_ENV])
    TargetCheckingHttpToolsProtocol.client_limits = ClientLimits(**config.get("limits", {}))
    return app_from_config(config)
