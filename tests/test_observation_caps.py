"""Observation caps (SPEC 10): bounded memory and linear work on any response body.

Past a cap (one SSE line or event, the content-decoded bytes of a body, a JSON body) the
observer stops observing that response: the result keeps the usage seen so far, marked
``unparsed``; the transports still relay every byte unchanged; the engine counts it in
``cachewatch_observation_truncated_total{reason}`` and logs it once per reason. The same
caps hold in process (here) and in the proxy (``test_proxy_hostile.py``).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import logging
import tracemalloc
import zlib
from collections.abc import Callable

import brotli
import pytest
import zstandard

from _helpers import (
    ANTHROPIC_URL,
    COMBOS,
    SSE_HEADERS,
    CallSpec,
    anthropic_request,
    anthropic_sse,
    fam,
    make_telemetry,
    response,
    send,
    wrapped,
)
from cachewatch.accounting._records import TokenUsage
from cachewatch.observing._decoding import PIECE_BYTES, ContentDecoder
from cachewatch.observing._observer import ResponseObserver
from cachewatch.observing._sse import SSEDecoder, SSEEvent, SSEOverflow

START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","model":"claude-x",'
    b'"usage":{"input_tokens":11,"output_tokens":1}}}\n\n'
)
STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def observer(**caps: int) -> ResponseObserver:
    return ResponseObserver("messages", content_type="text/event-stream", content_encoding=None, **caps)


# -- the SSE decoder --------------------------------------------------------------------------


def test_a_line_over_the_cap_raises_and_resets_the_decoder() -> None:
    decoder = SSEDecoder(max_event_bytes=1_000)
    assert decoder.feed(b"data: ") == []
    for _ in range(9):
        assert decoder.feed(b"x" * 100) == []  # 906 bytes held, in pieces
    with pytest.raises(SSEOverflow) as raised:
        decoder.feed(b"x" * 100)
    assert raised.value.reason == "sse_line"
    assert decoder.idle  # nothing held any more


def test_a_line_over_the_cap_in_one_chunk_raises() -> None:
    with pytest.raises(SSEOverflow, match="sse_line"):
        SSEDecoder(max_event_bytes=100).feed(b"data: ok\n\ndata: " + b"y" * 200)


def test_a_whole_line_over_the_cap_in_one_chunk_raises() -> None:
    # The line and its end in one chunk: before, it was decoded and parsed whatever its size.
    decoder = SSEDecoder(max_event_bytes=100)
    with pytest.raises(SSEOverflow, match="sse_line"):
        decoder.feed(b'data: {"type":"message_delta","junk":"' + b"y" * 200 + b'"}\n\n')
    assert decoder.idle
    assert decoder.feed(b"data: ok\n\n") == [SSEEvent(None, "ok")]


def test_a_huge_line_in_one_chunk_truncates_the_observation() -> None:
    obs = observer(max_event_bytes=4_096)
    obs.feed(START)
    obs.feed(
        b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":7},"x":"'
        + b"y" * 10_000
        + b'"}\n\n'
    )
    assert obs.truncated == "sse_line"
    parsed = obs.result()
    assert parsed.unparsed
    assert parsed.usage is not None
    assert parsed.usage.input == 11


def test_an_event_over_the_cap_raises() -> None:
    decoder = SSEDecoder(max_event_bytes=1_000)
    line = b"data: " + b"z" * 50 + b"\n"  # short lines, one event
    # The first line, then 8 more of 56 bytes each charged DATA_LINE_COST besides (960).
    for _ in range(9):
        assert decoder.feed(line) == []
    with pytest.raises(SSEOverflow) as raised:
        decoder.feed(line)
    assert raised.value.reason == "sse_event"


def test_events_under_the_cap_are_unchanged_by_it() -> None:
    body = b"data: " + b"a" * 900 + b"\n\n" + b"data: b\ndata: c\n\n"
    decoder = SSEDecoder(max_event_bytes=1_000)
    events = [e for i in range(0, len(body), 7) for e in decoder.feed(body[i : i + 7])]
    assert events == [SSEEvent(None, "a" * 900), SSEEvent(None, "b\nc")]


# -- what a cap bounds is memory, whatever the chunk sizes -------------------------------------

CAP = 256 * 1024


def held_after(feed: Callable[[bytes], object], pieces: int, size: int = 2) -> int:
    """Bytes still allocated after ``feed`` got ``pieces`` distinct chunks of ``size`` bytes."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(pieces):
            feed(bytes([97 + i % 26]) * size)  # each its own object
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_a_line_trickled_in_tiny_chunks_holds_about_its_size() -> None:
    # An endless line sent two bytes at a time: the decoder held one bytes object per
    # piece (about 40 bytes of memory per 2 bytes of line), 20 times the cap.
    decoder = SSEDecoder(max_event_bytes=CAP)
    decoder.feed(b"data: ")
    held = held_after(decoder.feed, (CAP - 1024) // 2)
    assert held < 2 * CAP, held


def test_a_json_body_trickled_in_tiny_chunks_holds_about_its_size() -> None:
    obs = ResponseObserver(
        "messages", content_type="application/json", content_encoding=None, max_json_bytes=CAP
    )
    obs.feed(b'{"id": "')
    held = held_after(obs.feed, (CAP - 1024) // 2)
    assert obs.truncated is None
    assert held < 2 * CAP, held


def test_a_partial_event_trickled_to_the_usage_filter_holds_about_its_size() -> None:
    from cachewatch.planning._hygiene import UsageChunkFilter

    hide = UsageChunkFilter(max_pending=CAP)
    hide.feed(b"data: ")
    held = held_after(hide.feed, (CAP - 1024) // 2)
    assert held < 2 * CAP, held


def test_message_deltas_that_each_bring_new_usage_keys_hold_no_more_than_one_event() -> None:
    # Each message_delta's usage had keys no earlier one had: the stream's merged usage
    # kept every one of them, growing with the stream (4 MB events: 1.5 GB after 40).
    obs = observer()
    obs.feed(START)
    events = [
        b'event: message_delta\ndata: {"type":"message_delta","delta":{},"usage":{"output_tokens":'
        + str(e + 2).encode()
        + b","
        + b",".join(b'"e%dk%d":1' % (e, i) for i in range(2_000))
        + b"}}\n\n"
        for e in range(40)
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for event in events:
            obs.feed(event)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # One parsed event (its dict) at most, not 40 events of keys (about 280x one event).
    assert held < 10 * len(events[0]), held
    obs.feed(STOP)
    assert obs.result().usage == TokenUsage(input=11, output=41)


def test_many_short_data_lines_of_one_event_hold_about_the_cap() -> None:
    # One event of many two-byte data lines: each line became its own str (about 60 bytes
    # for 8 bytes of stream), so an event under the cap held 8 times the cap.
    decoder = SSEDecoder(max_event_bytes=CAP)
    lines = [b"data:%c%c\n" % (97 + i % 26, 97 + i // 26 % 26) for i in range(CAP // 8)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        with contextlib.suppress(SSEOverflow):
            for line in lines:
                decoder.feed(line)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < 2 * CAP, peak


# -- content decoding in bounded pieces -------------------------------------------------------

BOMB_PLAIN = 64 * 1024 * 1024  # 64 MiB of zeros


@functools.cache
def bomb(coding: str) -> bytes:
    zeros = b"\0" * BOMB_PLAIN
    if coding == "gzip":
        z = zlib.compressobj(9, zlib.DEFLATED, 31)
        return z.compress(zeros) + z.flush()
    if coding == "br":
        return bytes(brotli.compress(zeros, quality=5))
    return bytes(zstandard.ZstdCompressor(level=19).compress(zeros))


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_a_bomb_decodes_in_bounded_pieces(coding: str) -> None:
    wire = bomb(coding)
    assert len(wire) < 100_000
    decoder = ContentDecoder(coding)
    total = largest = 0
    for piece in decoder.iter_decode(wire):  # the whole bomb as one wire chunk
        total += len(piece)
        largest = max(largest, len(piece))
    assert total == BOMB_PLAIN
    assert largest <= 2 * 1024 * 1024  # zstd's slice bound; zlib and brotli stay near PIECE_BYTES
    if coding != "zstd":
        assert largest <= 2 * PIECE_BYTES
    assert decoder.finished


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_a_compression_bomb_stops_observation_in_bounded_memory(coding: str) -> None:
    wire = bomb(coding)
    obs = ResponseObserver(
        "messages",
        content_type="text/event-stream",
        content_encoding=coding,
        max_decoded_bytes=4 * 1024 * 1024,
    )
    tracemalloc.start()
    try:
        for i in range(0, len(wire), 4096):
            obs.feed(wire[i : i + 4096])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert obs.truncated == "decoded_bytes"
    assert obs.result().unparsed
    assert peak < 16 * 1024 * 1024, peak  # a 64 MiB inflation never happened in memory


def test_a_gzip_stream_under_the_cap_is_observed() -> None:
    body = gzip.compress(anthropic_sse())
    obs = ResponseObserver(
        "messages", content_type="text/event-stream", content_encoding="gzip", max_decoded_bytes=1 << 20
    )
    for i in range(0, len(body), 3):
        obs.feed(body[i : i + 3])
    assert obs.truncated is None
    assert obs.result().usage is not None
    assert not obs.result().unparsed


# -- the observer keeps what it saw --------------------------------------------------------------


def test_a_long_line_stops_observation_and_keeps_the_usage_seen() -> None:
    obs = observer(max_event_bytes=4_096)
    obs.feed(START)
    obs.feed(b"data: ")
    for _ in range(100):
        obs.feed(b"q" * 100)
    obs.feed(b"\n\n" + STOP)  # ignored: no longer observing
    assert obs.truncated == "sse_line"
    parsed = obs.result()
    assert parsed.unparsed
    assert parsed.usage == TokenUsage(input=11, output=1)
    assert not parsed.complete


def test_a_json_body_over_its_cap_is_counted_as_truncated() -> None:
    obs = ResponseObserver(
        "messages", content_type="application/json", content_encoding=None, max_json_bytes=10
    )
    obs.feed(b'{"usage": {"input_tokens": 1, "output_tokens": 2}}')
    assert obs.truncated == "json_body"
    assert obs.result().unparsed


# -- through the transports: bytes unchanged, counted, logged once ---------------------------


@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_transport_relays_every_byte_and_counts_the_cap(
    family: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    module = fam(family)
    long_line = b"data: " + b"L" * 20_000 + b"\n\n"
    body = START + long_line + STOP
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    telemetry = make_telemetry()
    transport = wrapped(
        mode,
        module.MockTransport(lambda request: response(module, 200, chunks, SSE_HEADERS)),
        breakpoints="off",
        max_event_bytes=8_192,
        **telemetry.kwargs,
    )
    caplog.set_level(logging.WARNING, logger="cachewatch")
    spec = CallSpec(ANTHROPIC_URL, content=anthropic_request(stream=True))
    for _ in range(2):
        seen = send(family, mode, transport, spec)
        assert seen.error is None
        assert b"".join(seen.raw_chunks) == body  # relayed unchanged
    assert telemetry.value("cachewatch_observation_truncated_total", reason="sse_line") == 2
    assert telemetry.requests(outcome="ok") == 2
    assert telemetry.tokens()["input"] == 2 * 11  # the usage seen before the cap
    assert telemetry.faults() == 0
    events = telemetry.events()
    assert [e.get("observation_truncated") for e in events] == ["sse_line", "sse_line"]
    assert all(e.get("unparsed") is True for e in events)
    warnings = [r for r in caplog.records if "sse_line" in r.getMessage()]
    assert len(warnings) == 1  # logged once per reason
