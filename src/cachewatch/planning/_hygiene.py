"""Response-side request hygiene: hide the usage-only chunk cachewatch asked for.

When the planner adds ``stream_options.include_usage`` to an OpenAI-compatible stream
that did not ask for usage (``Planner(include_usage=True)``), the provider sends one
extra chunk, ``{"choices": [], "usage": {...}}``, before ``data: [DONE]``. cachewatch
reads the usage from it and this filter removes it, so the caller sees exactly the
stream it asked for.

Sans-IO: ``feed(chunk) -> bytes`` returns what the caller should get now. Complete SSE
events pass through at once; only a trailing partial event is held until its end (an
SSE consumer cannot act on half an event either). A compressed body is decoded, and the
shell drops ``Content-Encoding``/``Content-Length`` from the caller's headers; the shell
then uses ``pieces(chunk)``, which decodes and hands over the output in pieces of about
64 KiB, so that a compression bomb (a few hundred bytes that inflate to gigabytes) is
never inflated whole in memory.

Linear time, bounded memory: a partial event grows in one ``bytearray`` (no object per
piece, however small the chunks) and only the bytes around each new piece are searched
for its end; a partial event longer than ``max_pending`` is released as it is and the
filter steps aside for the rest of the body.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import orjson

from ..observing._decoding import ContentDecoder
from ..observing._sse import DEFAULT_MAX_EVENT_BYTES, joined

__all__ = ["UndecodableBody", "UsageChunkFilter"]

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class UndecodableBody(Exception):
    """The body does not decode as its ``Content-Encoding`` says.

    The shell has already dropped that header from the caller's response, so the caller's
    client cannot fail to decode it; the shell raises its family's ``DecodingError``
    instead, the error the caller would have had without the filter.
    """


class UsageChunkFilter:
    """Removes usage-only chat-completion chunks from an SSE body."""

    def __init__(
        self, content_encoding: str | None = None, max_pending: int = DEFAULT_MAX_EVENT_BYTES
    ) -> None:
        self._decoder = ContentDecoder(content_encoding) if content_encoding else None
        #: A partial event: bytes, or a bytearray once it grows past one chunk.
        self._rest: bytes | bytearray = b""
        #: The last 3 bytes of the partial event (an event end may straddle a boundary).
        self._tail = b""
        self._max = max_pending
        #: Past the cap: every byte passes through unfiltered.
        self._passthrough = False
        if self._decoder is not None and self._decoder.failed:
            # A coding it cannot decode (unknown, such as "utf-8", or its codec not
            # installed): the body and its Content-Encoding go to the caller as they came,
            # for the caller's client to decode or skip, as it would have.
            self._decoder = None
            self._passthrough = True

    @property
    def decodes(self) -> bool:
        """The filter outputs decoded bytes (the caller's Content-Encoding must go)."""
        return self._decoder is not None

    def feed(self, chunk: bytes) -> bytes:
        """What the caller gets now of ``chunk``, at once (see :meth:`pieces` for a decoded body).

        Raises:
            UndecodableBody: ``chunk`` does not decode (never swallowed: an empty body
                in its place would change the caller's traffic).
        """
        if self._decoder is not None:
            return b"".join(self.pieces(chunk))
        return self._filter(chunk)

    def pieces(self, chunk: bytes) -> Iterator[bytes]:
        """What the caller gets now of ``chunk``, decoded and filtered piece by piece.

        Each decoded piece (about 64 KiB) is filtered and handed over before the next is
        decoded: what is held at once is one piece and a partial event (``max_pending``),
        whatever the body inflates to.

        Raises:
            UndecodableBody: ``chunk`` does not decode.
        """
        decoder = self._decoder
        if decoder is None:
            shown = self._filter(chunk)
            if shown:
                yield shown
            return
        for piece in decoder.iter_decode(chunk):
            shown = self._filter(piece)
            if shown:
                yield shown
        if decoder.failed:
            raise UndecodableBody("the response body does not decode as its Content-Encoding says")

    def _filter(self, chunk: bytes) -> bytes:
        """What the caller gets now of decoded body bytes."""
        if self._passthrough or not chunk:
            return chunk
        rest = self._rest
        if rest:
            # An event end may straddle the boundary: look at the 3 bytes before it only.
            probe = self._tail + chunk
            if _last_event_end(probe) < 0:
                if type(rest) is bytes:
                    rest = self._rest = bytearray(rest)
                rest += chunk
                self._tail = probe[-3:]
                return self._give_up() if len(rest) > self._max else b""
            data = joined(rest, chunk)
            self._rest = b""
        else:
            data = chunk
        end = _last_event_end(data)
        if end < 0:
            self._rest = data
            self._tail = data[-3:]
            return self._give_up() if len(data) > self._max else b""
        complete = data[:end]
        if end < len(data):
            self._rest = data[end:]
            self._tail = data[-3:]
        if b'"usage"' not in complete:
            return complete
        return b"".join(event for event in _split_events(complete) if not _usage_only(event))

    def flush(self) -> bytes:
        rest = bytes(self._rest)
        self._rest = b""
        return b"" if _usage_only(rest) else rest

    def _give_up(self) -> bytes:
        """A partial event over the cap: release it and filter nothing more."""
        self._passthrough = True
        rest = bytes(self._rest)
        self._rest = b""
        return rest


def _last_event_end(data: bytes) -> int:
    """Index just past the last blank line (CRLF CRLF, LF LF or CR CR), or -1."""
    best = -1
    for sep in (b"\r\n\r\n", b"\n\n", b"\r\r"):
        i = data.rfind(sep)
        if i != -1:
            best = max(best, i + len(sep))
    return best


def _split_events(data: bytes) -> list[bytes]:
    events, start = [], 0
    for m in _EVENT_END.finditer(data):
        events.append(data[start : m.end()])
        start = m.end()
    if start < len(data):
        events.append(data[start:])
    return events


def _usage_only(event: bytes) -> bool:
    if b'"usage"' not in event:
        return False
    for line in event.splitlines():
        if line.startswith(b"data:"):
            try:
                obj = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                return False
            return isinstance(obj, dict) and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)
    return False
