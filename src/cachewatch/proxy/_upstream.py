"""The upstream hop: aiohttp (llhttp, a C parser) as an httpx transport, with the proxy's rules.

:class:`AsyncCacheWatchTransport` wraps :class:`UpstreamTransport`, so the engine sees
the same ``httpx.Request``/``httpx.Response`` exchange as with httpx's own transport.
The request target goes out as the client sent it; :class:`UpstreamTimeouts` bound the
connect, the wait for the headers and the silences in the body; aiohttp's errors come
back as the httpx errors they mean.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import httpx
import yarl
from httpx_aiohttp import AiohttpTransport

from ._settings import URL_CACHE_MAX_TARGET, URL_CACHE_SIZE, UpstreamTimeouts

__all__ = ["UpstreamTransport", "upstream_transport"]

#: Keep-alive connections to the one upstream.
_UPSTREAM_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=4.0)
#: Headers aiohttp would otherwise add to a request that lacks them: the proxy forwards
#: the client's headers as they are.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
#: Longest upstream response header line / field accepted (aiohttp's default is 8 KiB).
_MAX_HEADER_LINE = 64 * 1024


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


def _text_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """The request's header fields as aiohttp takes them (text, written out as UTF-8).

    Each value is decoded on its own: UTF-8 bytes go out exactly as received. (httpx's
    ``multi_items`` decodes every value with one encoding guessed from all of them, so a
    single Latin-1 value turned every UTF-8 value into mojibake on the way out.) A value
    that is not UTF-8 is read as Latin-1 and so goes out re-encoded: aiohttp writes
    headers as UTF-8 text only.
    """
    out = []
    for name, value in raw:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = value.decode("latin-1")
        out.append((name.decode("latin-1"), text))
    return out


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
      ``RemoteProtocolError``, not a connect timeout), and so does a ``101`` (the proxy
      asks for no upgrade).
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
            if len(target) <= URL_CACHE_MAX_TARGET:
                if len(self._urls) >= URL_CACHE_SIZE:
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
                headers=_text_headers(request.headers.raw),
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
        if response.status < 200:
            # aiohttp passes over 1xx answers but 101: the proxy forwards no Upgrade, so a
            # 101 is an invalid answer (relayed, it would be a 101 with a body).
            response.close()
            raise httpx.RemoteProtocolError("upstream switched protocols, which was not asked for")
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
