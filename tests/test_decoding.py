"""ContentDecoder: gzip, x-gzip, deflate (zlib and raw), br, zstd, identity, stacks, failures."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
import zstandard

from cachewatch.observing._decoding import ContentDecoder

PLAIN = b'{"usage": {"input_tokens": 12}}' * 50


def raw_deflate(data: bytes) -> bytes:
    obj = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return obj.compress(data) + obj.flush()


ENCODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda d: zstandard.ZstdCompressor().compress(d),
    "identity": lambda d: d,
}


def run(decoder: ContentDecoder, data: bytes, size: int) -> bytes:
    return b"".join(decoder.decode(data[i : i + size]) for i in range(0, len(data), size))


@pytest.mark.parametrize("coding", sorted(ENCODERS))
@pytest.mark.parametrize("size", [1, 7, 1 << 20])
def test_roundtrip_any_chunk_size(coding: str, size: int) -> None:
    decoder = ContentDecoder(coding.upper() if coding == "gzip" else coding)
    assert run(decoder, ENCODERS[coding](PLAIN), size) == PLAIN
    assert decoder.finished
    assert not decoder.failed


@pytest.mark.parametrize("size", [1, 2, 1000])
def test_raw_deflate_is_sniffed(size: int) -> None:
    decoder = ContentDecoder("deflate")
    assert run(decoder, raw_deflate(PLAIN), size) == PLAIN
    assert not decoder.failed


def test_stacked_encodings_decoded_in_reverse() -> None:
    wire = brotli.compress(gzip.compress(PLAIN))
    decoder = ContentDecoder("gzip, br")
    assert run(decoder, wire, 5) == PLAIN
    assert decoder.finished


def test_none_and_identity_pass_through() -> None:
    for value in (None, "", "identity"):
        decoder = ContentDecoder(value)
        assert decoder.decode(b"abc") == b"abc"


def test_concatenated_gzip_members_and_zstd_frames() -> None:
    assert run(ContentDecoder("gzip"), gzip.compress(b"ab") + gzip.compress(b"cd"), 3) == b"abcd"
    z = zstandard.ZstdCompressor()
    assert run(ContentDecoder("zstd"), z.compress(b"ab") + z.compress(b"cd"), 3) == b"abcd"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_corrupt_input_marks_failed_without_raising(coding: str) -> None:
    decoder = ContentDecoder(coding)
    out = decoder.decode(b"\x00garbage that is not compressed at all" * 4)
    assert decoder.failed
    assert out == b""
    assert decoder.decode(ENCODERS[coding](PLAIN)) == b""  # stays failed


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_truncated_input_is_not_finished(coding: str) -> None:
    decoder = ContentDecoder(coding)
    wire = ENCODERS[coding](PLAIN)
    decoder.decode(wire[: len(wire) // 2])
    assert not decoder.finished


def test_unknown_coding_fails() -> None:
    decoder = ContentDecoder("compress")
    assert decoder.failed
    assert decoder.decode(b"x") == b""


def test_unknown_codings_can_be_skipped_as_the_clients_do() -> None:
    decoder = ContentDecoder("utf-8, gzip", skip_unknown=True)
    assert not decoder.failed
    assert decoder.decode(gzip.compress(b"x")) == b"x"
    assert ContentDecoder("compress", skip_unknown=True).decode(b"x") == b"x"
