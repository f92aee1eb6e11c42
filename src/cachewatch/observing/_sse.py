"""Incremental Server-Sent-Events decoder: raw body bytes in, events out.

Place in the flow: ``_observer`` feeds it the content-decoded stream bytes and hands
each event to ``_usage``. It is sans-IO: no httpx, no sync/async split.

Follows the WHATWG "event stream interpretation" rules
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

* lines end with CR, LF or CRLF, and nothing else (``str.splitlines`` would also split
  on U+2028, VT, FF... which the spec forbids);
* lines are split as *bytes*, before UTF-8 decoding, so a multi-byte character cut by a
  chunk boundary is never mangled (the same approach as anthropic-sdk-python
  ``_streaming.py`` and httpx-sse);
* a CR at the very end of a chunk is held back until the next chunk shows whether an
  LF follows (httpx ``LineDecoder``), so a CRLF split across chunks is one line end;
* ``:`` starts a comment, ``data`` lines are joined with ``\\n``, an empty line
  dispatches the event, and an event with no ``data`` line is not dispatched.

One leading U+FEFF byte-order mark is ignored, as WHATWG says (it may be split across
chunks: its first bytes are held until the rest shows whether it is one).

One deliberate extension: :meth:`SSEDecoder.flush` dispatches a final event that lacks
its trailing blank line (WHATWG would drop it), because some servers close the stream
right after the last ``data:`` line and that line often carries the usage.

Linear time and bounded memory on any input: an unterminated line grows in one
``bytearray`` (amortised linear, never re-copied chunk after chunk, and no object per
piece however small the chunks), and one line, or the data of one event, longer than
``max_event_bytes`` raises :class:`SSEOverflow`: the observer then stops observing that
response. An event's data lines after its first are each charged their size plus the
memory of the string that holds them (:data:`DATA_LINE_COST`), so that an event of many
short lines holds about the cap, not several times it.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "SSEDecoder", "SSEEvent", "SSEOverflow", "joined"]

#: Longest SSE line, and largest data of one event, the decoder holds (8 MiB).
DEFAULT_MAX_EVENT_BYTES = 8 * 1024 * 1024

#: What one more data line of an event costs besides its bytes: the ``str`` holding it
#: and its slot in the event's list (CPython: about 50 + 8 bytes).
DATA_LINE_COST = 64


def joined(rest: bytes | bytearray, chunk: bytes) -> bytes:
    """A held partial line or event (bytes, or a bytearray grown in place) and the chunk
    that follows it, as one ``bytes`` (the bytearray is consumed: reset it after)."""
    if type(rest) is bytes:
        return rest + chunk
    rest += chunk
    return bytes(rest)


#: U+FEFF in UTF-8: ignored once at the start of a stream (WHATWG).
_BOM = b"\xef\xbb\xbf"


class SSEEvent(NamedTuple):
    """One dispatched event: its ``event:`` name (None when absent) and its data."""

    event: str | None
    data: str


class SSEOverflow(Exception):
    """One line (``reason="sse_line"``) or one event's data (``"sse_event"``) went over the cap."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SSEDecoder:
    """Push-style SSE decoder.

    Example::

        decoder = SSEDecoder()
        for chunk in chunks:
            for event in decoder.feed(chunk):
                ...
        for event in decoder.flush():
            ...

    ``id`` and ``retry`` fields are accepted and ignored: cachewatch only observes.

    Args:
        max_event_bytes: longest line, and largest data of one event, held; beyond it
            :meth:`feed` raises :class:`SSEOverflow` and the decoder is reset.
    """

    __slots__ = ("_data", "_data_size", "_event", "_head", "_max", "_rest", "_started")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        # The current, not yet terminated line (it may end with a held-back CR): bytes,
        # or a bytearray once it grows past one chunk.
        self._rest: bytes | bytearray = b""
        self._event: str | None = None
        self._data: list[str] = []
        #: Bytes of the current event's data lines after its first one.
        self._data_size = 0
        self._max = max_event_bytes
        #: Past the stream's first bytes (a leading byte-order mark is dropped there), and
        #: the start of a possible mark held until it is known.
        self._started = False
        self._head = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk`` and return the events it completed (often none or one).

        Raises:
            SSEOverflow: a line or an event went over ``max_event_bytes``.
        """
        if not chunk:
            return []
        if not self._started:
            chunk = self._start(chunk)
            if not chunk:
                return []
        rest = self._rest
        if rest:
            if rest[-1] != 0x0D and chunk.find(b"\n") == -1 and chunk.find(b"\r") == -1:
                # Still inside the same line: grown in place.
                if type(rest) is bytes:
                    rest = self._rest = bytearray(rest)
                rest += chunk
                if len(rest) > self._max:
                    self._overflow("sse_line")
                return []
            buffer = joined(rest, chunk)
            self._rest = b""
        else:
            buffer = chunk
        if buffer[-1] == 0x0D:  # b"\r": may be the first half of a CRLF
            body = buffer[:-1]
            held = b"\r"
        else:
            body = buffer
            held = b""
        if 0x0D in body:  # an int needle: `bytes in bytes` builds and clears a TypeError first
            body = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        last = body.rfind(b"\n")
        if last < 0:
            self._keep(buffer)
            return []
        if held or last + 1 < len(body):
            self._keep(body[last + 1 :] + held)
        # The per-line state machine is inlined here (this runs for every stream chunk);
        # _line() is the readable twin used by flush().
        lines = body[:last].split(b"\n")
        if last > self._max:
            # A chunk can hold a whole line over the cap (one huge ``data:`` line, then
            # its LF): it is never decoded nor parsed, as if it had come in pieces.
            for line in lines:
                if len(line) > self._max:
                    self._overflow("sse_line")
        events: list[SSEEvent] = []
        data = self._data
        new_event = tuple.__new__
        for line in lines:
            if not line:
                if data:
                    # tuple.__new__ builds the named tuple without its Python-level __new__.
                    events.append(
                        new_event(SSEEvent, (self._event, data[0] if len(data) == 1 else "\n".join(data)))
                    )
                    data = self._data = []
                    self._data_size = 0
                self._event = None
            elif line.startswith(b"data:"):
                if data:  # a multi-line event: its size is bounded too
                    self._data_size += len(line) + DATA_LINE_COST
                    if self._data_size > self._max:
                        self._overflow("sse_event")
                data.append((line[6:] if line[5:6] == b" " else line[5:]).decode("utf-8", "replace"))
            elif line.startswith(b"event:"):
                self._event = (line[7:] if line[6:7] == b" " else line[6:]).decode("utf-8", "replace") or None
            elif line[0] != 0x3A:  # not a ":" comment
                self._line(line, events)
        return events

    def flush(self) -> list[SSEEvent]:
        """End of stream: process an unterminated last line and dispatch a pending event."""
        events: list[SSEEvent] = []
        rest = self._head + self._rest
        self._head = b""
        self._rest = b""
        if rest:
            rest = rest.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            for line in rest.split(b"\n"):
                self._line(line, events)
        self._line(b"", events)
        return events

    @property
    def idle(self) -> bool:
        """Between events: no partial line is buffered and no event field is pending."""
        return not self._rest and not self._data and self._event is None and not self._head

    def pending(self) -> list[SSEEvent]:
        """What :meth:`flush` would return now, without changing any state."""
        clone = SSEDecoder(self._max)
        clone._started = self._started
        clone._head = self._head
        clone._rest = bytes(self._rest)
        clone._event = self._event
        clone._data = list(self._data)
        return clone.flush()

    def _start(self, chunk: bytes) -> bytes:
        """The stream's first bytes, without a leading byte-order mark (b"" while undecided)."""
        head = self._head + chunk if self._head else chunk
        if len(head) < 3 and _BOM.startswith(head):
            self._head = head  # the start of a mark, or of nothing
            return b""
        self._started = True
        self._head = b""
        return head[3:] if head.startswith(_BOM) else head

    def _keep(self, rest: bytes) -> None:
        """Hold the start of an unterminated line."""
        self._rest = rest
        if len(rest) > self._max:
            self._overflow("sse_line")

    def _overflow(self, reason: str) -> None:
        self._rest = b""
        self._data = []
        self._data_size = 0
        self._event = None
        raise SSEOverflow(reason)

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                events.append(SSEEvent(self._event, "\n".join(self._data)))
                self._data = []
                self._data_size = 0
            # WHATWG: the event type buffer is reset on every blank line, dispatched or not.
            self._event = None
            return
        colon = line.find(b":")
        if colon == 0:
            return  # comment
        if colon < 0:
            name = line
            value = b""
        else:
            name = line[:colon]
            # One space after the colon is part of the syntax, not of the value.
            value = line[colon + 2 :] if line[colon + 1 : colon + 2] == b" " else line[colon + 1 :]
        if name == b"data":
            if self._data:
                self._data_size += len(value) + DATA_LINE_COST
                if self._data_size > self._max:
                    self._overflow("sse_event")
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace") or None
        # "id", "retry" and unknown fields are ignored.
