"""Incremental ``Content-Encoding`` decoders for the response observer.

Place in the flow: the transport sees response bytes still content-encoded (httpx only
decodes in ``Response.iter_bytes``), so ``_observer`` runs them through a
:class:`ContentDecoder` before SSE/JSON parsing. The caller's bytes are never touched.

Supported: ``identity``, ``gzip``/``x-gzip``, ``deflate`` (zlib-wrapped or raw, sniffed
from the first two bytes as browsers and httpx do), ``br`` (package ``brotli``), ``zstd``
(package ``zstandard``), and stacked encodings such as ``"gzip, br"`` (RFC 9110
section 8.4: listed in the order applied, so decoded in reverse).

Nothing here raises on bad input: corrupt data or an unknown coding marks the decoder
:attr:`~ContentDecoder.failed`, and the observer then reports ``unparsed=True``.
"""

from __future__ import annotations

import importlib
import logging
import zlib
from typing import Any, Protocol

__all__ = ["ContentDecoder", "make_decoder"]


class _Stage(Protocol):
    def decode(self, data: bytes) -> bytes: ...

    @property
    def finished(self) -> bool: ...


class _Identity:
    finished = True

    def decode(self, data: bytes) -> bytes:
        return data


class _Gzip:
    """gzip, with support for several concatenated members (RFC 1952 section 2.2)."""

    def __init__(self) -> None:
        self._obj = zlib.decompressobj(zlib.MAX_WBITS | 16)

    @property
    def finished(self) -> bool:
        return self._obj.eof

    def decode(self, data: bytes) -> bytes:
        out = self._obj.decompress(data)
        while self._obj.eof and self._obj.unused_data:
            rest = self._obj.unused_data
            if rest.strip(b"\x00") == b"":
                break  # zero padding after the last member is common and harmless
            self._obj = zlib.decompressobj(zlib.MAX_WBITS | 16)
            out += self._obj.decompress(rest)
        return out


class _Deflate:
    """HTTP "deflate" is meant to be zlib-wrapped, but raw deflate is common in the wild."""

    def __init__(self) -> None:
        self._head = b""
        self._obj: zlib._Decompress | None = None

    @property
    def finished(self) -> bool:
        return self._obj is not None and self._obj.eof

    def decode(self, data: bytes) -> bytes:
        if self._obj is None:
            self._head += data
            if len(self._head) < 2:
                return b""
            data, self._head = self._head, b""
            cmf, flg = data[0], data[1]
            zlib_wrapped = cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0
            self._obj = zlib.decompressobj(zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS)
        return self._obj.decompress(data)


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

    def decode(self, data: bytes) -> bytes:
        if not data:
            return b""
        out: bytes = self._obj.process(data)
        return out


class _Zstd:
    """zstd, with support for several concatenated frames."""

    def __init__(self) -> None:
        zstandard = _import_codec("zstandard", "zstd")

        self._factory = zstandard.ZstdDecompressor()
        self._obj = self._factory.decompressobj()

    @property
    def finished(self) -> bool:
        return bool(self._obj.eof)

    def decode(self, data: bytes) -> bytes:
        out: bytes = self._obj.decompress(data)
        while self._obj.eof and self._obj.unused_data:
            rest: bytes = self._obj.unused_data
            self._obj = self._factory.decompressobj()
            out += self._obj.decompress(rest)
        return out


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

    Example::

        decoder = ContentDecoder("gzip")
        for chunk in wire_chunks:
            plain = decoder.decode(chunk)   # b"" after a failure
        decoder.failed, decoder.finished
    """

    __slots__ = ("_stages", "failed")

    def __init__(self, content_encoding: str | None) -> None:
        self.failed = False
        self._stages: list[_Stage] = []
        if not content_encoding:
            return
        try:
            codings = [c.strip().lower() for c in content_encoding.split(",")]
            # Applied left to right by the server, so undone right to left.
            for coding in reversed(codings):
                stage = _stage(coding)
                if stage is not None:
                    self._stages.append(stage)
        except Exception:
            self.failed = True
            self._stages = []

    @property
    def passthrough(self) -> bool:
        """True when there is nothing to decode (identity or no header)."""
        return not self._stages and not self.failed

    @property
    def finished(self) -> bool:
        """Every compressed stream reached its end marker (False means truncated so far)."""
        return not self.failed and all(stage.finished for stage in self._stages)

    def decode(self, data: bytes) -> bytes:
        if self.failed:
            return b""
        try:
            for stage in self._stages:
                data = stage.decode(data)
        except Exception:
            # zlib.error, brotli.error, zstandard.ZstdError... and anything unexpected.
            self.failed = True
            return b""
        return data


def make_decoder(content_encoding: str | None) -> ContentDecoder:
    """Build the decoder for a ``Content-Encoding`` header value."""
    return ContentDecoder(content_encoding)
