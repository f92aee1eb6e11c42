"""The response relay: upstream response -> client, whole or chunk by chunk as it arrives.

A response that is not an event stream and declares a small ``Content-Length`` (a JSON
reply) is read whole and sent in one message, before the stream ends (so the accounting
happens after the client has its answer); every other response is relayed chunk by
chunk. An upstream that fails mid-body leaves the client a visibly incomplete response.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import httpx

from ._asgi import ABORT_KEY, HOP_BY_HOP, Scope, Send, connection_options, send_error, send_upstream_failure
from ._settings import BUFFERED_RESPONSE_LIMIT

__all__ = ["relay"]

#: What an HTTP/1.1 response head may not carry (RFC 9110 field names are tokens; values
#: no control bytes but tab), as the server that writes it (uvicorn) checks it.
_BAD_NAME = re.compile(b'[\x00-\x1f\x7f()<>@,;:\\[\\]={} \t\\\\"]')
_BAD_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")


def _invalid_head(status: int, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the upstream's head cannot be written to the client as it is: a status
    outside 100-599, a field name that is no token or a value with control bytes (aiohttp
    takes them; the server writing the head raises, and the client would get nothing)."""
    if not 100 <= status <= 599:
        return True
    return any(not name or _BAD_NAME.search(name) or _BAD_VALUE.search(value) for name, value in headers)


async def relay(response: httpx.Response, scope: Scope, send: Send) -> None:
    """Send ``response`` to the client, then end its stream (which records the exchange)."""
    stream: Any = response.stream
    relayed: list[tuple[bytes, bytes]] = []
    length: bytes | None = None
    event_stream = False
    listed: frozenset[bytes] = frozenset()
    coded = False  # a transfer coding other than chunked, which nothing here undoes
    for name, value in response.headers.raw:
        lower = name.lower()
        if lower in HOP_BY_HOP:
            if lower == b"content-length":
                length = value
            elif lower == b"connection":
                listed = connection_options(value, listed)
            elif lower == b"transfer-encoding":
                coded = coded or any(
                    coding.strip().lower() not in (b"chunked", b"") for coding in value.split(b",")
                )
            continue
        if lower == b"content-type" and value.lower().startswith(b"text/event-stream"):
            event_stream = True
        relayed.append((name, value))
    if listed:  # the fields the upstream's Connection header names are for that hop only
        relayed = [(name, value) for name, value in relayed if name.lower() not in listed]

    iterator = stream.__aiter__()
    try:
        if _invalid_head(response.status_code, relayed):
            # Relayed as is it would be a traceback and a dropped connection: a 502 that
            # names the cause instead (nothing reached the client yet).
            await send_error(send, 502, "upstream sent a response head that HTTP/1.1 does not allow")
            return
        if coded:
            # Only chunked is undone on the way in (llhttp); a gzip transfer coding would
            # reach the client as content it has no header to decode (as for requests: 501).
            await send_error(send, 502, "upstream used a transfer coding other than chunked")
            return
        if (
            length is not None
            and not event_stream
            and length.isdigit()
            and int(length) <= BUFFERED_RESPONSE_LIMIT
            and scope["method"] != "HEAD"  # HEAD and 304 declare the length of a body they lack
            and response.status_code != 304
        ):
            await _relay_whole(response, int(length), relayed, iterator, send)
            return
        if length is not None:
            relayed.append((b"content-length", length))
        await send({"type": "http.response.start", "status": response.status_code, "headers": relayed})
        try:
            async for chunk in iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (httpx.TransportError, httpx.DecodingError, aiohttp.ClientError):
            # The upstream failed mid-body (closed early, went silent past its idle
            # timeout, sent a compressed body that does not decode where the usage-chunk
            # filter decodes it for the client...); the exchange recorded it. The client
            # must see an incomplete response, not a clean end: its connection is closed
            # without one.
            abort = scope.get(ABORT_KEY)
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
        await send_upstream_failure(send, exc)
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
