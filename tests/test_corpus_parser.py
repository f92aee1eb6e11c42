"""Conformance of the response parser with the SPEC section 4 partition on the recorded corpus.

Every one of the 1,557 exchanges is replayed through ``ResponseObserver`` and compared
with the independent oracle in ``corpus_oracle`` (which never imports cachewatch):

(a) ``whole``: the decoded body in one chunk;
(b) ``gzip``: the body gzip-compressed, announced with ``content-encoding: gzip``;
(c) ``one_byte`` / ``gzip_one_byte``: every body (SSE and JSON alike, no size limit:
    the corpus is 8.4 MB decoded, about 15 s in all) in 1-byte chunks, plain and
    gzip-compressed;
(d) ``random`` / ``random_gzip``: random chunk sizes from a seeded generator.

The corpus ``content-encoding`` header is ignored: the stored body is already
decompressed (corpus README), so the plain modes announce no encoding.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Iterator
from typing import Any

import pytest

from cachewatch.observing._observer import ResponseObserver
from corpus import EXPECTED_COUNT, api_label, load_corpus
from corpus_oracle import expected_partition, final_usage, provider_prompt_total


def _cases() -> list[tuple[dict[str, Any], str, bytes, bool, dict[str, int] | None, int | None]]:
    cases = []
    for exchange in load_corpus():
        api = api_label(exchange["path"])
        ctype = exchange["response"]["headers"].get("content-type")
        text = exchange["response"]["body"]
        is_sse = "text/event-stream" in (ctype or "")
        usage = final_usage(api, text, is_sse)
        total = provider_prompt_total(api, usage) if usage is not None else None
        cases.append((exchange, api, text.encode(), is_sse, expected_partition(api, text, is_sse), total))
    return cases


@pytest.fixture(scope="module")
def cases() -> list[tuple[dict[str, Any], str, bytes, bool, dict[str, int] | None, int | None]]:
    loaded = _cases()
    assert len(loaded) == EXPECTED_COUNT, f"corpus holds {len(loaded)} exchanges, expected {EXPECTED_COUNT}"
    return loaded


def _one_byte(body: bytes) -> Iterator[bytes]:
    for i in range(len(body)):
        yield body[i : i + 1]


def _random_chunks(body: bytes, rng: random.Random) -> Iterator[bytes]:
    i = 0
    while i < len(body):
        n = rng.choice((1, 2, 3, 7, 16, 61, 256, 1000, 4096))
        yield body[i : i + n]
        i += n


def _replay(mode: str, exchange: dict[str, Any], api: str, body: bytes, is_sse: bool, rng: random.Random):
    ctype = exchange["response"]["headers"].get("content-type")
    encoding = None
    if mode.startswith("gzip") or mode.endswith("gzip"):
        body, encoding = gzip.compress(body), "gzip"
    chunks: Any
    if mode in ("whole", "gzip"):
        chunks = [body]
    elif mode.endswith("one_byte"):
        chunks = _one_byte(body)
    else:
        chunks = _random_chunks(body, rng)
    observer = ResponseObserver(api, content_type=ctype, content_encoding=encoding)
    for chunk in chunks:
        observer.feed(chunk)
    return observer.result()


@pytest.mark.parametrize("mode", ["whole", "gzip", "one_byte", "gzip_one_byte", "random", "random_gzip"])
def test_corpus_partition(mode: str, cases, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(1557)
    agree = 0
    failures: list[str] = []
    for exchange, api, body, is_sse, expected, total in cases:
        parsed = _replay(mode, exchange, api, body, is_sse, rng)
        got = parsed.usage.as_partition() if parsed.usage is not None else None
        ok = got == expected
        if mode != "whole":
            # Chunking and compression change nothing at all, not only the usage.
            ok = ok and parsed == _replay("whole", exchange, api, body, is_sse, rng)
        if parsed.usage is not None and total is not None:
            # SPEC section 4 invariant against the provider's own prompt total.
            ok = ok and parsed.usage.prompt_total == total
            ok = ok and min(got.values()) >= 0  # type: ignore[union-attr]
        if ok:
            agree += 1
        else:
            failures.append(f"{exchange['source']}: expected {expected}, got {got}")
    with capsys.disabled():
        print(f"\n[corpus {mode}] {agree}/{len(cases)} exchanges agree with the oracle")
    assert not failures, "\n".join(failures[:20])


def test_corpus_well_formed_bodies_parse(cases) -> None:
    """Only bodies that are not JSON/SSE at all may come back unparsed."""
    unparsed = []
    for exchange, api, body, is_sse, _expected, _total in cases:
        parsed = _replay("whole", exchange, api, body, is_sse, random.Random(0))
        if parsed.unparsed:
            unparsed.append(exchange["source"])
            assert not body.lstrip().startswith((b"{", b"data:", b"event:")), exchange["source"]
    assert len(unparsed) <= 1, unparsed  # the demo endpoint's text/plain echo


def test_corpus_usage_is_found_for_every_success_with_usage(cases) -> None:
    """Every 200 whose body carries a usage object yields a TokenUsage (no silent misses)."""
    for exchange, api, body, is_sse, expected, _total in cases:
        if expected is not None:
            parsed = _replay("whole", exchange, api, body, is_sse, random.Random(0))
            assert parsed.usage is not None, exchange["source"]
