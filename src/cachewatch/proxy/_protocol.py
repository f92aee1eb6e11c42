"""The client side: uvicorn's httptools protocol with the raw request target and the client limits.

:class:`TargetCheckingHttpToolsProtocol` hands the app the request target byte for byte,
enforces :class:`ClientLimits` (head size and header count: 431; slow heads and bodies:
408) with one timer per connection, cancels a request's task when its client goes away,
and sends a response head together with a body that follows in the same event-loop step.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ._asgi import ABORT_KEY, TASK_KEY, error_body
from ._settings import ClientLimits

__all__ = ["TargetCheckingHttpToolsProtocol"]

_HEAD, _BODY, _APP = 0, 1, 2
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
        if self._transport.is_closing():
            # The protocol closed the connection (a refusal, a client timeout) before
            # uvicorn learnt it was lost: dropped, as asyncio's own transports do (uvloop's
            # raise, and the response's task died with a traceback).
            self._held = None
            return
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
            if not self._transport.is_closing():
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
      count (431, counted on the bytes received, before httptools buffers them; a chunked
      body's trailer fields count as header fields and are bounded like a head), head,
      body and whole-request timeouts (408), with one timer per connection, and the send
      timeout (a client leaving its response unread is dropped);
    - when the connection is lost before the response completed, the request's task
      (registered by the app under ``scope["cachewatch.task"]``) is cancelled, so that
      whatever it waits for upstream is released at once;
    - ``scope["cachewatch.abort"]`` closes the connection, to end a response that cannot
      be completed (the client sees it incomplete);
    - a request asking for a protocol upgrade (``Upgrade: h2c`` from ``curl --http2``) is
      read as plain HTTP/1.1, body included (:meth:`_ignore_upgrade`).
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
        #: The parser is being fed a request's framing only (see :meth:`_ignore_upgrade`).
        self._priming = False
        #: Body bytes (or the start of a next request) were parsed in the current
        #: ``data_received``; bytes received inside a body since its last data (chunk
        #: framing, trailer fields).
        self._body_seen = False
        self._beyond_body = 0
        self._deadline = 0.0
        self._request_deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        #: Armed while the client leaves the response unread (``ClientLimits.send_timeout``).
        self._send_timer: asyncio.TimerHandle | None = None

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
            body = error_body(message)
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
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        if cycle is not None and not cycle.response_complete:
            task: asyncio.Task[Any] | None = cycle.scope.get(TASK_KEY)  # type: ignore[assignment]
            if task is not None and not task.done():
                task.cancel()  # the client is gone: stop waiting on its behalf

    def pause_writing(self) -> None:
        """The client is not reading (its buffers are full): it has ``send_timeout`` to resume."""
        super().pause_writing()
        seconds = self.client_limits.send_timeout
        if seconds and self._send_timer is None:
            self._send_timer = self.loop.call_later(seconds, self._on_send_timeout)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _on_send_timeout(self) -> None:
        """Drop a client that left its response unread too long (close would wait for it)."""
        self._send_timer = None
        if self.transport is not None:
            self.transport.abort()  # connection_lost follows: the request's task is cancelled

    def data_received(self, data: bytes) -> None:
        if self._counting_head:
            if self._timer is None:
                # The first bytes after a request, on a kept-alive connection: its head
                # starts now. Not left to on_message_begin: llhttp skips empty lines
                # between requests without starting one, and each would otherwise only
                # push back the keep-alive timeout (a connection held forever).
                self._phase = _HEAD
                self._request_deadline = self._after(self.client_limits.request_timeout)
                self._arm(self._after(self.client_limits.head_timeout))
            self._head_bytes += len(data)
            limit = self.client_limits.max_head_bytes
            if self._head_bytes > limit and not self._head_ends_within(data, limit):
                self._refuse(431, f"request head over the {limit}-byte limit")
                return
            self._head_tail = data[-3:]
        self._unset_keepalive_if_required()
        in_body = self._phase == _BODY
        self._body_seen = False  # set again by on_body and on_message_begin
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if self._refusal is not None:
                self._refuse(*self._refusal)
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade as upgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._ignore_upgrade(data[upgrade.args[0] :])
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
        else:
            if in_body and not self._body_seen and self._phase == _BODY:
                # No body data in these bytes: chunk framing or trailer fields, which
                # httptools holds whole until each field ends. Bounded like a head.
                self._beyond_body += len(data)
                limit = self.client_limits.max_head_bytes
                if self._beyond_body > limit:
                    self._refuse(431, f"request trailer fields over the {limit}-byte limit")

    def _ignore_upgrade(self, rest: bytes) -> None:
        """Read on as HTTP/1.1 after a request that asked for a protocol upgrade.

        llhttp stops at the end of the head of a request carrying ``Connection: Upgrade``
        and ``Upgrade`` (``curl --http2`` sends ``Upgrade: h2c``), as if its body were in
        the new protocol, and uvicorn drops what followed: the request went upstream with
        an empty body, and a body arriving later was parsed as further requests. The proxy
        switches to no protocol (RFC 9110 section 7.8 lets a server ignore ``Upgrade``),
        so the request keeps its body: a new parser is primed with the request's own
        framing (its ``Content-Length`` or ``Transfer-Encoding``, and ``Connection: close``
        if it asked for it; callbacks muted) and fed the rest. After a ``CONNECT`` what
        follows is a tunnel, not HTTP: the connection closes after the answer.
        """
        cycle = self.cycle
        if cycle is None or cycle.scope is not self.scope:
            return
        if self.scope["method"] == "CONNECT":
            cycle.keep_alive = False
            self.flow.pause_reading()
            return
        if self._expect_body:
            framing = b"".join(
                b"%s: %s\r\n" % (name, value)
                for name, value in self.headers
                if name in (b"content-length", b"transfer-encoding")
            )
            cycle.more_body = True  # llhttp ended the message at its head
            cycle.message_event.clear()
            self._phase = _BODY
            self._counting_head = False
            self._arm(min(self._after(self.client_limits.body_timeout), self._request_deadline))
            if not cycle.keep_alive:
                framing += b"connection: close\r\n"
            # A new parser: the old one may refuse data after ``Connection: close``.
            self.parser = httptools.HttpRequestParser(self)
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn's
            self._priming = True
            try:
                self.parser.feed_data(b"POST / HTTP/1.1\r\n" + framing + b"\r\n")
            except httptools.HttpParserError:
                self.send_400_response("Invalid HTTP request received.")
                return
            finally:
                self._priming = False
        if rest:
            self.data_received(rest)

    def _head_ends_within(self, data: bytes, limit: int) -> bool:
        """Whether the head being counted ends in ``data`` (or just before) within ``limit`` bytes."""
        probe = self._head_tail + data
        before = self._head_bytes - len(probe)
        ends = [i + 4 for i in (probe.find(b"\r\n\r\n"),) if i != -1]
        ends += [i + 2 for i in (probe.find(b"\n\n"),) if i != -1]
        return bool(ends) and before + min(ends) <= limit

    # -- parser callbacks

    def on_message_begin(self) -> None:
        if self._priming:
            return
        self._body_seen = True  # these bytes did not all belong to one body
        super().on_message_begin()
        self._header_count = 0
        self._expect_body = False
        self._phase = _HEAD
        if self._timer is None:  # on a kept-alive connection: the head starts now
            self._request_deadline = self._after(self.client_limits.request_timeout)
            self._arm(self._after(self.client_limits.head_timeout))

    def on_url(self, url: bytes) -> None:
        if not self._priming:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._priming:
            return
        self._header_count += 1
        if self._header_count > self.client_limits.max_headers:
            self._refusal = (431, f"more than {self.client_limits.max_headers} request header fields")
            raise _Refused
        if not self._counting_head:
            # A trailer field of a chunked body: not merged into the headers (RFC 9110
            # section 6.5.1), which may already have gone upstream (the body is re-framed
            # with a Content-Length, so trailers are not forwarded).
            return
        super().on_header(name, value)
        lower = name.lower()
        if lower == b"transfer-encoding" or (lower == b"content-length" and value.strip(b" \t0")):
            self._expect_body = True

    def on_headers_complete(self) -> None:
        if self._priming:
            return
        self._counting_head = False
        super().on_headers_complete()
        # The request's task has been created above but has not run yet: it sees this.
        scope: Any = self.scope
        if "raw_path" in scope:
            scope["raw_path"] = self.url.partition(b"?")[0]
        cycle: Any = self.cycle
        if cycle is not None and cycle.scope is scope:
            cycle.transport = writer = _OneTickWriter(self.transport, self.loop)

            def abort() -> None:
                # Cut on purpose: to uvicorn the client is gone (it sends nothing more, and
                # logs no "ASGI callable returned without completing response").
                cycle.disconnected = True
                writer.close()

            scope[ABORT_KEY] = abort
        else:
            scope[ABORT_KEY] = self.transport.close
        if self._expect_body:
            self._phase = _BODY
            self._beyond_body = 0
            self._arm(min(self._after(self.client_limits.body_timeout), self._request_deadline))
        else:
            self._phase = _APP
            self._disarm()

    def on_body(self, body: bytes) -> None:
        self._body_seen = True
        self._beyond_body = 0
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
