"""Sans-IO response observer: raw wire bytes in, a ParsedResponse out.

Place in the flow: ``_streams`` passes every body chunk through to the caller unchanged
and also calls :meth:`ResponseObserver.feed` with it; when the body ends or is closed,
the transport calls :meth:`ResponseObserver.result` and builds the ``UsageRecord``.

Pipeline: ``Content-Encoding`` decoding (``_decoding``) -> SSE or JSON ->
``_usage.UsageAccumulator``. SSE vs JSON comes from ``Content-Type``
(``text/event-stream`` / ``*json``); when it is missing or anything else, the first
non-whitespace decoded bytes decide (``{``/``[`` -> JSON, ``event:``/``data:``/``:`` ->
SSE, anything else -> unparsed). JSON bodies are buffered up to ``max_json_bytes`` and
parsed once, at the first :meth:`~ResponseObserver.result` call after new data; SSE events
are parsed as they arrive. Nothing here raises on bad input; it reports
``unparsed=True`` instead.

Linear time and bounded memory on any input. Three caps, each of which makes the
observer stop observing the response (the caller's bytes are untouched either way; the
result keeps the usage seen so far, marked ``unparsed``, and :attr:`ResponseObserver.truncated`
names the cap, which the engine counts in ``cachewatch_observation_truncated_total``):

- ``max_json_bytes``: a JSON body's decoded size (reason ``json_body``);
- ``max_event_bytes``: one SSE line, or one event's data (``sse_line``, ``sse_event``);
- ``max_decoded_bytes``: what content decoding may produce for one body (``decoded_bytes``:
  a compression bomb). Decoding runs in bounded pieces, so even one small wire chunk
  that inflates to gigabytes is stopped after the cap.
"""

from __future__ import annotations

from typing import Final

import orjson

from cachewatch.accounting._records import ParsedResponse
from cachewatch.observing._decoding import ContentDecoder
from cachewatch.observing._sse import DEFAULT_MAX_EVENT_BYTES, SSEDecoder, SSEEvent, SSEOverflow
from cachewatch.observing._usage import UsageAccumulator

__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_MAX_JSON_BYTES",
    "TRUNCATION_REASONS",
    "ResponseObserver",
]

DEFAULT_MAX_JSON_BYTES: Final = 8 * 1024 * 1024
#: Content-decoded bytes inspected per response (a long compressed stream stays far below).
DEFAULT_MAX_DECODED_BYTES: Final = 128 * 1024 * 1024
#: The ``reason`` label values of ``cachewatch_observation_truncated_total``.
TRUNCATION_REASONS: Final = ("json_body", "sse_line", "sse_event", "decoded_bytes")

_UNDECIDED, _JSON, _SSE, _OTHER = 0, 1, 2, 3
_WHITESPACE = b" \t\r\n\xef\xbb\xbf"  # and a UTF-8 byte-order mark
_SSE_STARTS = (b"event:", b"data:", b":", b"id:", b"retry:")
_SNIFF_LIMIT = 64

# Substrings at least one of which appears in every SSE payload that matters for usage,
# ids, completion or errors, per API. Payloads without any (text deltas, pings...) are
# the bulk of a stream and are not JSON-decoded at all. A false positive only costs a
# parse. None: parse every payload.
_NEEDLES: Final[dict[str, tuple[str, ...] | None]] = {
    "messages": ("message_", "usage", "error"),
    "responses": (
        "response.created",
        "response.in_progress",
        "response.queued",
        "response.completed",
        "response.incomplete",
        "response.failed",
        "usage",
        "error",
    ),
}


#: Per API with needles: byte strings at least one of which is in any chunk holding an
#: event that matters (a needle, an ``error`` event, ``[DONE]``). A chunk of whole events
#: with none of them is skipped without SSE decoding (see ``ResponseObserver.feed``).
_CHUNK_NEEDLES: Final[dict[str, tuple[bytes, ...]]] = {
    api: tuple(dict.fromkeys([n.encode() for n in needles] + [b"error", b"[DONE]"]))
    for api, needles in _NEEDLES.items()
    if needles is not None
}


class ResponseObserver:
    """Observes one response body and reports what it billed.

    Args:
        api: the SPEC section 3 ``api`` label (``messages``, ``chat_completions``,
            ``responses``, ``dashscope_generation``).
        content_type: the response ``Content-Type`` header, or None.
        content_encoding: the response ``Content-Encoding`` header, or None.
        max_json_bytes: decoded size cap for a JSON body; larger bodies are unparsed.
        max_event_bytes: cap on one SSE line and on one event's data.
        max_decoded_bytes: cap on the content-decoded bytes of the body.
        stream_requested: the request asked for a stream: a body labelled JSON is then
            sniffed (some relays label the event stream they send ``application/json``).

    Example::

        observer = ResponseObserver("messages", content_type="text/event-stream",
                                    content_encoding=None)
        for chunk in wire_chunks:
            observer.feed(chunk)
        parsed = observer.result()   # usage so far; callable at any time
    """

    __slots__ = (
        "_acc",
        "_api",
        "_chunk_needles",
        "_decoded",
        "_decoder",
        "_failed",
        "_json",
        "_json_overflow",
        "_max_decoded",
        "_max_json_bytes",
        "_mode",
        "_needles",
        "_result",
        "_sniff",
        "_sse",
        "truncated",
    )

    def __init__(
        self,
        api: str,
        *,
        content_type: str | None,
        content_encoding: str | None,
        max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
        stream_requested: bool = False,
    ) -> None:
        self._api = api
        ctype = content_type.lower() if content_type else ""
        if "text/event-stream" in ctype:
            self._mode = _SSE
        elif "json" in ctype and not stream_requested:
            # (A stream labelled JSON by a relay, when one was asked for, is sniffed: its
            # first bytes say whether it is a JSON error body or events.)
            self._mode = _JSON
        else:
            self._mode = _UNDECIDED
        if self._mode != _JSON:
            # A JSON body never becomes a stream: only the other modes fold events into
            # ``_acc`` through ``_sse`` (a JSON body is parsed whole, by ``_parse_json``),
            # so only they get them.
            self._acc = UsageAccumulator(api)
            self._sse = SSEDecoder(max_event_bytes)
            self._needles = _NEEDLES.get(api)
            self._chunk_needles = _CHUNK_NEEDLES.get(api)
        #: None when the body is not content-encoded (the common case: nothing to decode).
        self._decoder = ContentDecoder(content_encoding, skip_unknown=True) if content_encoding else None
        self._max_json_bytes = max_json_bytes
        self._decoded = 0
        self._max_decoded = max_decoded_bytes
        #: The cap observation stopped at (a TRUNCATION_REASONS value), or None.
        self.truncated: str | None = None
        #: The JSON body so far: the first chunk, then a bytearray grown in place (no
        #: object per chunk, so tiny chunks hold about the body's size).
        self._json: bytes | bytearray = b""
        self._json_overflow = False
        self._failed = self._decoder is not None and self._decoder.failed
        self._sniff = b""
        self._result: ParsedResponse | None = None

    def feed(self, chunk: bytes) -> None:
        """Observe the next raw (still content-encoded) body chunk. Never raises."""
        if self._failed or not chunk:
            return
        self._result = None
        decoder = self._decoder
        if decoder is not None:
            self._feed_encoded(decoder, chunk)
            return
        self._feed(chunk)

    def _feed_encoded(self, decoder: ContentDecoder, chunk: bytes) -> None:
        """Decode ``chunk`` piece by piece, observing each, until the decoded-bytes cap."""
        try:
            for piece in decoder.iter_decode(chunk):
                self._decoded += len(piece)
                if self._decoded > self._max_decoded:
                    self._truncate("decoded_bytes")
                    return
                self._feed(piece)
                if self._failed:
                    return
            if decoder.failed:
                self._failed = True
        except Exception:
            self._failed = True

    def _feed(self, chunk: bytes) -> None:
        """Observe decoded body bytes."""
        try:
            mode = self._mode
            if mode == _SSE:
                needles = self._chunk_needles
                if needles is not None and chunk.endswith(b"\n\n"):
                    # The bulk of a stream (text deltas, pings): a chunk of whole events
                    # none of which can matter. Skipping it is exact when the decoder is
                    # between events, since decoding it would leave the decoder there.
                    for needle in needles:
                        if chunk.find(needle) != -1:  # (find: cheaper than ``in`` on bytes)
                            break
                    else:
                        if self._sse.idle:
                            return
                events = self._sse.feed(chunk)
                if events:
                    self._events(events)
            elif mode == _JSON:
                self._buffer_json(chunk)
            elif mode == _UNDECIDED:
                self._sniff_feed(chunk)
        except SSEOverflow as exc:
            self._truncate(exc.reason)
        except Exception:
            # A bug here must never reach the caller's traffic.
            self._failed = True

    def result(self) -> ParsedResponse:
        """Everything learned so far; cheap, and cached until the next chunk. Never raises."""
        cached = self._result
        if cached is not None:
            return cached
        try:
            parsed = self._compute()
        except Exception:
            parsed = ParsedResponse(unparsed=True)
        self._result = parsed
        return parsed

    # -- internals ------------------------------------------------------------------

    def _truncate(self, reason: str) -> None:
        """Stop observing at a cap: keep what was learned, drop every buffer."""
        self.truncated = reason
        self._failed = True
        self._sse = SSEDecoder()
        self._json = b""
        self._sniff = b""
        self._decoder = None

    def _compute(self) -> ParsedResponse:
        mode = self._mode
        unparsed = self._failed
        if mode == _JSON:
            if self._json_overflow:
                return ParsedResponse(unparsed=True)
            if not self._json:
                return ParsedResponse(unparsed=unparsed)
            parsed = self._parse_json()
        elif mode == _SSE:
            parsed = self._acc.result()
            if not self._failed:
                pending = self._sse.pending()
                if pending:
                    # A final event without its blank line: fold it into a snapshot so
                    # that result() stays side-effect free while the stream may go on.
                    acc = self._acc.copy()
                    self._events(pending, acc)
                    parsed = acc.result()
        elif mode == _OTHER:
            return ParsedResponse(unparsed=True)
        else:
            # Undecided: nothing but whitespace, or a body that ended inside "event:".
            return ParsedResponse(unparsed=self._failed or bool(self._sniff.strip(_WHITESPACE)))
        if unparsed and not parsed.unparsed:
            parsed = _with_unparsed(parsed)
        return parsed

    def _events(self, events: list[SSEEvent], acc: UsageAccumulator | None = None) -> None:
        if not events:
            return
        if acc is None:
            acc = self._acc
        needles = self._needles
        chat = self._api == "chat_completions"
        loads = orjson.loads
        for event, data in events:
            if data == "[DONE]":
                acc.mark_complete()
                continue
            if needles is not None and event != "error":
                for needle in needles:
                    if needle in data:
                        break
                else:
                    continue  # text deltas, pings...: nothing for usage, ids or errors
            if chat and event is None and acc.has_ids and _chat_chunk_is_noise(data):
                continue
            try:
                obj = loads(data)
            except orjson.JSONDecodeError:
                continue  # non-JSON data lines are legal SSE
            acc.add_event(event, obj)

    def _buffer_json(self, chunk: bytes) -> None:
        if self._json_overflow:
            return
        body = self._json
        if len(body) + len(chunk) > self._max_json_bytes:
            self._json_overflow = True
            self._json = b""
            self.truncated = "json_body"
            return
        if not body:
            self._json = chunk
        elif type(body) is bytes:
            grown = bytearray(body)
            grown += chunk
            self._json = grown
        else:
            body += chunk

    def _parse_json(self) -> ParsedResponse:
        """Parse the whole buffered body (kept: result() may be called mid-body)."""
        try:
            obj = orjson.loads(self._json)
        except orjson.JSONDecodeError:
            return ParsedResponse(unparsed=True)
        acc = UsageAccumulator(self._api)
        acc.add_json(obj)
        return acc.result()

    def _sniff_feed(self, chunk: bytes) -> None:
        sniff = self._sniff + chunk
        head = sniff.lstrip(_WHITESPACE)
        if not head:
            self._sniff = sniff if len(sniff) <= _SNIFF_LIMIT else b""
            return
        if head[:1] in (b"{", b"["):
            self._mode = _JSON
        elif any(head.startswith(p) for p in _SSE_STARTS):
            self._mode = _SSE
        elif len(head) < 6 and any(p.startswith(head) for p in _SSE_STARTS):
            self._sniff = sniff  # could still become "event:"/"data:"
            return
        else:
            self._mode = _OTHER
        self._sniff = b""
        if self._mode == _JSON:
            self._buffer_json(sniff)
        elif self._mode == _SSE:
            self._events(self._sse.feed(sniff))


def _chat_chunk_is_noise(data: str) -> bool:
    """A content-only Chat Completions chunk: every ``finish_reason`` and ``usage`` is null.

    Decided on the raw text, which is safe because a quoted key such as ``"usage"``
    cannot occur inside a JSON string (its quotes would be escaped). Spacing variants
    of re-serialised bodies are both counted.
    """
    if "error" in data:
        return False
    n = data.count('"usage"')
    if n and n != data.count('"usage":null') + data.count('"usage": null'):
        return False
    n = data.count('"finish_reason"')
    return n == data.count('"finish_reason":null') + data.count('"finish_reason": null')


def _with_unparsed(parsed: ParsedResponse) -> ParsedResponse:
    return parsed._replace(unparsed=True)
