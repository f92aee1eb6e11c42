"""What the app, the relay and the client protocol share: ASGI types, scope keys, the proxy's own answers.

Besides ``/metrics``, the proxy answers on its own account only when it refuses a request
or the upstream failed before its response could start; those answers are JSON errors of
one shape (:func:`error_body`; a 405 is plain text), and an upstream failure maps to 502
or 504 naming its cause (:func:`send_upstream_failure`).
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import aiohttp
import httpx
import orjson

__all__ = [
    "ABORT_KEY",
    "HOP_BY_HOP",
    "TASK_KEY",
    "Receive",
    "Scope",
    "Send",
    "connection_options",
    "error_body",
    "send_error",
    "send_response",
    "send_upstream_failure",
]

#: RFC 9110 section 7.6.1 hop-by-hop headers (and whatever ``Connection`` names:
#: :func:`connection_options`), plus the ones the proxy recomputes, plus
#: ``Expect``: the proxy has the whole request body before it forwards anything (uvicorn
#: answered the client's ``100-continue``), so the upstream hop has nothing to wait for.
HOP_BY_HOP = frozenset(
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


def connection_options(value: bytes, listed: frozenset[bytes] = frozenset()) -> frozenset[bytes]:
    """``listed`` and the field names a ``Connection`` value lists that are not in :data:`HOP_BY_HOP`.

    RFC 9110 section 7.6.1: a proxy removes the fields a ``Connection`` header names
    (``Connection: HTTP2-Settings`` from ``curl --http2``) before it forwards a message.
    """
    names = {name.strip().lower() for name in value.split(b",")}
    names -= HOP_BY_HOP
    names.discard(b"")
    names.discard(b"close")
    return listed | names if names else listed


#: Scope keys shared by the protocol and the app: the request's task (cancelled when its
#: client goes away) and a callable that closes the client connection (to end a response
#: visibly incomplete).
TASK_KEY = "cachewatch.task"
ABORT_KEY = "cachewatch.abort"

Scope = MutableMapping[str, Any]
Receive = Any
Send = Any


def error_body(message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": "cachewatch_proxy_error", "message": message}})


async def send_response(send: Send, status: int, body: bytes, content_type: bytes, extra: Any = ()) -> None:
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body)), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Send, status: int, message: str) -> None:
    await send_response(send, status, error_body(message), b"application/json")


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


async def send_upstream_failure(send: Send, exc: BaseException) -> None:
    await send_error(send, *_failure(exc))
