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

One deliberate extension: :meth:`SSEDecoder.flush` dispatches a final event that lacks
its trailing blank line (WHATWG would drop it), because some servers close the stream
right after the last ``data:`` line and that line often carries the usage.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SSEDecoder", "SSEEvent"]


class SSEEvent(NamedTuple):
    """One dispatched event: its ``event:`` name (None when absent) and its data."""

    event: str | None
    data: str


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
    """

    __slots__ = ("_buffer", "_data", "_event")

    def __init__(self) -> None:
        # Bytes of the current, not yet terminated line (may end with a held-back CR).
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk`` and return the events it completed (often none or one)."""
        buffer = self._buffer + chunk if self._buffer else chunk
        if not buffer:
            return []
        if buffer[-1] == 0x0D:  # b"\r": may be the first half of a CRLF
            body = buffer[:-1]
            held = b"\r"
        else:
            body = buffer
            held = b""
        if b"\r" in body:
            body = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        last = body.rfind(b"\n")
        if last < 0:
            self._buffer = buffer
            return []
        self._buffer = body[last + 1 :] + held if held or last + 1 < len(body) else b""
        # The per-line state machine is inlined here (this runs for every stream chunk);
        # _line() is the readable twin used by flush().
        events: list[SSEEvent] = []
        data = self._data
        new_event = tuple.__new__
        for line in body[:last].split(b"\n"):
            if not line:
                if data:
                    # tuple.__new__ builds the named tuple without its Python-level __new__.
                    events.append(
                        new_event(SSEEvent, (self._event, data[0] if len(data) == 1 else "\n".join(data)))
                    )
                    data = self._data = []
                self._event = None
            elif line.startswith(b"data:"):
                data.append((line[6:] if line[5:6] == b" " else line[5:]).decode("utf-8", "replace"))
            elif line.startswith(b"event:"):
                self._event = (line[7:] if line[6:7] == b" " else line[6:]).decode("utf-8", "replace") or None
            elif line[0] != 0x3A:  # not a ":" comment
                self._line(line, events)
        return events

    def flush(self) -> list[SSEEvent]:
        """End of stream: process an unterminated last line and dispatch a pending event."""
        events: list[SSEEvent] = []
        rest = self._buffer
        self._buffer = b""
        if rest:
            rest = rest.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            for line in rest.split(b"\n"):
                self._line(line, events)
        self._line(b"", events)
        return events

    @property
    def idle(self) -> bool:
        """Between events: no partial line is buffered and no event field is pending."""
        return not self._buffer and not self._data and self._event is None

    def pending(self) -> list[SSEEvent]:
        """What :meth:`flush` would return now, without changing any state."""
        clone = SSEDecoder()
        clone._buffer = self._buffer
        clone._event = self._event
        clone._data = list(self._data)
        return clone.flush()

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                events.append(SSEEvent(self._event, "\n".join(self._data)))
                self._data = []
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
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace") or None
        # "id", "retry" and unknown fields are ignored.
