"""Incremental ``Content-Encoding`` decoders for the response observer.

Place in the flow: the transport sees response bytes still content-encoded (httpx only
decodes in ``Response.iter_bytes``), so ``_observer`` runs them through a
:class:`ContentDecoder` before SSE/JSON parsing. The caller's bytes are never touched.

Supported: ``identity``, ``gzip``/``x-gzip``, ``deflate`` (zlib-wrapped or raw, sniffed
from the first two bytes as browsers and httpx do), ``br`` (package ``brotli``), ``zstd``
(package ``zstandard``), and stacked encodings such as ``"gzip, br"`` (RFC 9110
section 8.4: listed in the order applied, so decoded in reverse).

Bounded memory on any input (decompression bombs): :meth:`ContentDecoder.iter_decode`
yields the output in pieces of about :data:`PIECE_BYTES` (zlib's ``max_length``,
brotli's ``output_buffer_limit``; zstd input is fed in slices small enough that one
slice cannot inflate past a few MiB, and its window is capped at 8 MiB as RFC 9659
asks), so a consumer that stops iterating never holds more than one piece.

Nothing here raises on bad input: corrupt data or an unknown coding marks the decoder
:attr:`~ContentDecoder.failed`, and the observer then reports ``unparsed=True``. The
observer asks for unknown codings to be skipped instead (``skip_unknown``), as the
clients do: their body is what the caller's client reads.
"""

from __future__ import annotations

import importlib
import logging
import zlib
from collections.abc import Iterator
from typing import Any, Protocol

__all__ = ["KNOWN_CODINGS", "PIECE_BYTES", "ContentDecoder"]

#: Output of one decoding step (the most one step holds in memory, give or take 2x).
PIECE_BYTES = 64 * 1024

#: zstd input slice: one block header (3 bytes) plus one byte can stand for 128 KiB of
#: output, so 64 bytes of input are at most about 2 MiB.
_ZSTD_SLICE = 64

#: RFC 9659 section 3: HTTP zstd decoders need not accept windows over 8 MiB.
_ZSTD_MAX_WINDOW = 8 * 1024 * 1024


class _Stage(Protocol):
    def pieces(self, data: bytes) -> Iterator[bytes]: ...

    @property
    def finished(self) -> bool: ...


def _zlib_pieces(obj: zlib._Decompress, data: bytes) -> Iterator[bytes]:
    """Decompress ``data`` with ``obj`` in pieces of at most PIECE_BYTES."""
    while True:
        out = obj.decompress(data, PIECE_BYTES)
        if out:
            yield out
        data = obj.unconsumed_tail
        if obj.eof or (not data and len(out) < PIECE_BYTES):
            return


class _Gzip:
    """gzip, with support for several concatenated members (RFC 1952 section 2.2)."""

    def __init__(self) -> None:
        self._obj = zlib.decompressobj(zlib.MAX_WBITS | 16)

    @property
    def finished(self) -> bool:
        return self._obj.eof

    def pieces(self, data: bytes) -> Iterator[bytes]:
        while True:
            yield from _zlib_pieces(self._obj, data)
            rest = self._obj.unused_data
            if not (self._obj.eof and rest) or rest.strip(b"\x00") == b"":
                return  # zero padding after the last member is common and harmless
            self._obj = zlib.decompressobj(zlib.MAX_WBITS | 16)
            data = rest


class _Deflate:
    """HTTP "deflate" is meant to be zlib-wrapped, but raw deflate is common in the wild."""

    def __init__(self) -> None:
        self._head = b""
        self._obj: zlib._Decompress | None = None

    @property
    def finished(self) -> bool:
        return self._obj is not None and self._obj.eof

    def pieces(self, data: bytes) -> Iterator[bytes]:
        if self._obj is None:
            self._head += data
            if len(self._head) < 2:
                return
            data, self._head = self._head, b""
            cmf, flg = data[0], data[1]
            zlib_wrapped = cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0
            self._obj = zlib.decompressobj(zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS)
        yield from _zlib_pieces(self._obj, data)


def _import_codec(module: str, extra: str) -> Any:
    """Import a codec package; a missing one is logged once, naming the extra that adds it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if extra not in _MISSING_LOGGED:
            _MISSING_LOGGED.add(extra)
            logging.getLogger("cachewatch").warning(
                "a response is %s-encoded and cachewatch cannot decode it to read its usage; "
                "pip install 'cachewatch[%s]' (the response itself is passed on unchanged)",
                extra,
                extra,
            )
        raise


_MISSING_LOGGED: set[str] = set()


class _Brotli:
    def __init__(self) -> None:
        brotli = _import_codec("brotli", "brotli")

        self._obj = brotli.Decompressor()

    @property
    def finished(self) -> bool:
        return bool(self._obj.is_finished())

    def pieces(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        obj = self._obj
        out: bytes = obj.process(data, output_buffer_limit=PIECE_BYTES)
        if out:
            yield out
        # At the limit, more output may be pending: drain it with empty input.
        while (len(out) >= PIECE_BYTES or not obj.can_accept_more_data()) and not obj.is_finished():
            out = obj.process(b"", output_buffer_limit=PIECE_BYTES)
            if not out:
                return
            yield out


class _Zstd:
    """zstd, with support for several concatenated frames."""

    def __init__(self) -> None:
        zstandard = _import_codec("zstandard", "zstd")

        self._factory = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW)
        self._obj = self._factory.decompressobj()

    @property
    def finished(self) -> bool:
        return bool(self._obj.eof)

    def pieces(self, data: bytes) -> Iterator[bytes]:
        # zstandard's decompressobj has no output limit: bound it through the input.
        for start in range(0, len(data), _ZSTD_SLICE):
            piece = data[start : start + _ZSTD_SLICE] if len(data) > _ZSTD_SLICE else data
            while True:
                out: bytes = self._obj.decompress(piece)
                if out:
                    yield out
                if not (self._obj.eof and self._obj.unused_data):
                    break
                piece = self._obj.unused_data
                self._obj = self._factory.decompressobj()


#: The codings this module decodes (whether or not their optional codec is installed).
KNOWN_CODINGS = frozenset({"identity", "", "gzip", "x-gzip", "deflate", "br", "zstd"})


def _stage(coding: str) -> _Stage | None:
    if coding in ("identity", ""):
        return None
    if coding in ("gzip", "x-gzip"):
        return _Gzip()
    if coding == "deflate":
        return _Deflate()
    if coding == "br":
        return _Brotli()
    if coding == "zstd":
        return _Zstd()
    raise ValueError(f"unsupported content-coding {coding!r}")


class ContentDecoder:
    """Decodes one response body incrementally; never raises.

    Args:
        content_encoding: the ``Content-Encoding`` header value, or None.
        skip_unknown: pass a coding this module does not know (``utf-8``, ``none``) through
            as identity, as httpx and httpx2 do, instead of failing. (A known coding whose
            codec is not installed still fails: its bytes are compressed.)

    Example::

        decoder = ContentDecoder("gzip")
        for chunk in wire_chunks:
            for piece in decoder.iter_decode(chunk):   # bounded pieces; none after a failure
                ...
        decoder.failed, decoder.finished

    :meth:`decode` returns the whole output of a chunk at once (unbounded: for callers
    that relay it anyway).
    """

    __slots__ = ("_stages", "failed")

    def __init__(self, content_encoding: str | None, *, skip_unknown: bool = False) -> None:
        self.failed = False
        self._stages: list[_Stage] = []
        if not content_encoding:
            return
        try:
            codings = [c.strip().lower() for c in content_encoding.split(",")]
            if skip_unknown:
                codings = [c for c in codings if c in KNOWN_CODINGS]
            # Applied left to right by the server, so undone right to left.
            for coding in reversed(codings):
                stage = _stage(coding)
                if stage is not None:
                    self._stages.append(stage)
        except Exception:
            self.failed = True
            self._stages = []

    @property
    def finished(self) -> bool:
        """Every compressed stream reached its end marker (False means truncated so far)."""
        return not self.failed and all(stage.finished for stage in self._stages)

    def iter_decode(self, data: bytes) -> Iterator[bytes]:
        """The decoded output of ``data``, in pieces of about :data:`PIECE_BYTES`.

        A consumer may stop early; the rest of ``data`` is then never decoded.
        """
        if self.failed:
            return
        if not self._stages:
            if data:
                yield data
            return
        try:
            yield from self._run(0, data)
        except Exception:
            # zlib.error, brotli.error, zstandard.ZstdError... and anything unexpected.
            self.failed = True

    def _run(self, index: int, data: bytes) -> Iterator[bytes]:
        stages = self._stages
        last = index == len(stages) - 1
        for piece in stages[index].pieces(data):
            if last:
                yield piece
            else:
                yield from self._run(index + 1, piece)

    def decode(self, data: bytes) -> bytes:
        pieces = list(self.iter_decode(data))
        if self.failed:
            return b""
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)
