"""Response-side request hygiene: hide the usage-only chunk cachewatch asked for.

When the planner adds ``stream_options.include_usage`` to an OpenAI-compatible stream
that did not ask for usage (``Planner(include_usage=True)``), the provider sends one
extra chunk, ``{"choices": [], "usage": {...}}``, before ``data: [DONE]``. cachewatch
reads the usage from it and this filter removes it, so the caller sees exactly the
stream it asked for.

Sans-IO: ``feed(chunk) -> bytes`` returns what the caller should get now. Complete SSE
events pass through at once; only a trailing partial event is held until its end (an
SSE consumer cannot act on half an event either). A compressed body is decoded, and the
shell drops ``Content-Encoding``/``Content-Length`` from the caller's headers.
"""

from __future__ import annotations

import re

import orjson

from ..observing._decoding import ContentDecoder

__all__ = ["UsageChunkFilter"]

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class UsageChunkFilter:
    """Removes usage-only chat-completion chunks from an SSE body."""

    def __init__(self, content_encoding: str | None = None) -> None:
        self._decoder = ContentDecoder(content_encoding) if content_encoding else None
        self._pending = b""

    @property
    def decodes(self) -> bool:
        """The filter outputs decoded bytes (the caller's Content-Encoding must go)."""
        return self._decoder is not None

    def feed(self, chunk: bytes) -> bytes:
        if self._decoder is not None:
            chunk = self._decoder.decode(chunk)
        data = self._pending + chunk
        end = _last_event_end(data)
        if end < 0:
            self._pending = data
            return b""
        complete, self._pending = data[:end], data[end:]
        if b'"usage"' not in complete:
            return complete
        return b"".join(event for event in _split_events(complete) if not _usage_only(event))

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return b"" if _usage_only(rest) else rest


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
