"""ResponseObserver: mode detection, decoding, chunking invariance, caps, never raising."""

from __future__ import annotations

import gzip
import json
import zlib

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from cachewatch.accounting._records import ParsedResponse, TokenUsage
from cachewatch.observing._observer import ResponseObserver


def sse(*events: tuple[str | None, object]) -> bytes:
    out = b""
    for name, data in events:
        if name:
            out += f"event: {name}\n".encode()
        out += b"data: " + (data.encode() if isinstance(data, str) else json.dumps(data).encode()) + b"\n\n"
    return out


ANTHROPIC_STREAM = sse(
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "model": "claude-x",
                "usage": {"input_tokens": 8834, "output_tokens": 0},
            },
        },
    ),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    ("ping", {"type": "ping"}),
    *[
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": f"wörd {i} "},
            },
        )
        for i in range(20)
    ],
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {
                "input_tokens": 18,
                "cache_read_input_tokens": 8831,
                "cache_creation_input_tokens": 0,
                "output_tokens": 42,
            },
        },
    ),
    ("message_stop", {"type": "message_stop"}),
)
ANTHROPIC_EXPECTED = TokenUsage(input=18, cache_read=8831, output=42)

CHAT_STREAM = sse(
    (
        None,
        {
            "id": "c",
            "model": "gpt-4o",
            "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}],
            "usage": None,
        },
    ),
    (
        None,
        {
            "id": "c",
            "model": "gpt-4o",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": None,
        },
    ),
    (
        None,
        {
            "id": "c",
            "model": "gpt-4o",
            "choices": [],
            "usage": {
                "prompt_tokens": 50,
                "completion_tokens": 7,
                "prompt_tokens_details": {"cached_tokens": 32},
            },
        },
    ),
    (None, "[DONE]"),
)

JSON_BODY = json.dumps(
    {
        "id": "msg",
        "type": "message",
        "model": "claude-x",
        "stop_reason": "end_turn",
        "content": [{"type": "text", "text": "hé"}],
        "usage": {
            "input_tokens": 3,
            "cache_creation_input_tokens": 40,
            "cache_read_input_tokens": 0,
            "output_tokens": 9,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 40},
        },
    }
).encode()


def observe(
    body: bytes,
    api: str = "messages",
    ctype: str | None = "text/event-stream",
    enc: str | None = None,
    chunks: list[int] | None = None,
    **kw: int,
) -> ParsedResponse:
    observer = ResponseObserver(api, content_type=ctype, content_encoding=enc, **kw)
    if chunks is None:
        observer.feed(body)
    else:
        start = 0
        for cut in [*chunks, len(body)]:
            observer.feed(body[start:cut])
            start = cut
    return observer.result()


def test_anthropic_stream() -> None:
    r = observe(ANTHROPIC_STREAM)
    assert r.usage == ANTHROPIC_EXPECTED
    assert (r.response_id, r.response_model, r.finish_reasons, r.complete, r.unparsed) == (
        "msg_1",
        "claude-x",
        ("end_turn",),
        True,
        False,
    )


def test_chat_stream_done_marks_complete() -> None:
    r = observe(CHAT_STREAM, api="chat_completions")
    assert r.usage == TokenUsage(input=18, cache_read=32, output=7)
    assert r.complete
    assert r.finish_reasons == ("stop",)
    assert r.response_model == "gpt-4o"


def test_json_body() -> None:
    r = observe(JSON_BODY, ctype="application/json")
    assert r.usage == TokenUsage(input=3, cache_write_1h=40, output=9)
    assert r.complete
    assert not r.unparsed


@pytest.mark.parametrize("ctype", [None, "", "text/plain", "application/octet-stream"])
def test_sniffing_when_content_type_missing_or_odd(ctype: str | None) -> None:
    assert observe(b"  \n" + JSON_BODY, ctype=ctype, chunks=[1, 2, 3]).usage is not None
    assert observe(ANTHROPIC_STREAM, ctype=ctype, chunks=[1, 2, 3, 4]).usage == ANTHROPIC_EXPECTED
    assert observe(b": comment\n\n" + CHAT_STREAM, api="chat_completions", ctype=ctype).complete
    r = observe(b"method=POST pathname=/x", ctype=ctype)
    assert r.unparsed
    assert r.usage is None


def test_a_stream_labelled_json_is_sniffed_when_a_stream_was_asked_for() -> None:
    # Some relays send the event stream a client asked for as application/json: its usage
    # was lost (unparsed), although the SDK reads it fine.
    def observed(body: bytes, api: str = "messages") -> ParsedResponse:
        observer = ResponseObserver(
            api, content_type="application/json", content_encoding=None, stream_requested=True
        )
        for i in range(0, len(body), 7):
            observer.feed(body[i : i + 7])
        return observer.result()

    assert observed(ANTHROPIC_STREAM).usage == ANTHROPIC_EXPECTED
    assert observed(CHAT_STREAM, api="chat_completions").complete
    assert observed(JSON_BODY).usage == TokenUsage(input=3, cache_write_1h=40, output=9)  # an error body, say


def compress(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.compress(data)
    if coding == "deflate":
        return zlib.compress(data)
    if coding == "br":
        return brotli.compress(data)
    if coding == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return brotli.compress(gzip.compress(data))  # "gzip, br"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd", "gzip, br"])
def test_compressed_bodies_one_byte_chunks(coding: str) -> None:
    for body, ctype in ((ANTHROPIC_STREAM, "text/event-stream"), (JSON_BODY, "application/json")):
        wire = compress(coding, body)
        assert observe(wire, ctype=ctype, enc=coding, chunks=list(range(1, len(wire)))) == observe(
            body, ctype=ctype
        )


def test_corrupt_gzip_reports_unparsed() -> None:
    wire = bytearray(gzip.compress(ANTHROPIC_STREAM))
    wire[len(wire) // 2 :] = b"\xff" * (len(wire) - len(wire) // 2)
    r = observe(bytes(wire), enc="gzip")
    assert r.unparsed


def test_truncated_gzip_json_is_unparsed_and_stream_keeps_usage_so_far() -> None:
    wire = gzip.compress(JSON_BODY)
    assert observe(wire[: len(wire) // 2], ctype="application/json", enc="gzip").unparsed
    cut = ANTHROPIC_STREAM.index(b"event: message_delta")
    r = observe(ANTHROPIC_STREAM[:cut])
    assert r.usage == TokenUsage(input=8834)
    assert not r.complete
    assert not r.unparsed


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe\x00garbage",
        b"{not json",
        b"data: {broken\n\n",
        b"event: x\ndata: \xff\xff\n\n",
        b"[1,2]",
        b"null",
        b"\x00" * 100,
    ],
)
@pytest.mark.parametrize("ctype", ["application/json", "text/event-stream", None])
def test_garbage_never_raises(body: bytes, ctype: str | None) -> None:
    for api in ("messages", "chat_completions", "responses", "dashscope_generation", "unknown"):
        r = observe(body, api=api, ctype=ctype, chunks=[1, 3])
        assert r.usage is None


def test_json_over_cap_is_unparsed() -> None:
    r = observe(JSON_BODY, ctype="application/json", max_json_bytes=100, chunks=[10, 50])
    assert r.unparsed
    assert r.usage is None


def test_result_any_time_and_cached() -> None:
    observer = ResponseObserver("messages", content_type="text/event-stream", content_encoding=None)
    cut = ANTHROPIC_STREAM.index(b"event: message_delta")
    observer.feed(ANTHROPIC_STREAM[:cut])
    early = observer.result()
    assert early.usage == TokenUsage(input=8834)
    assert early is observer.result()
    observer.feed(ANTHROPIC_STREAM[cut:])
    assert observer.result().usage == ANTHROPIC_EXPECTED


def test_result_mid_json_then_rest() -> None:
    observer = ResponseObserver("messages", content_type="application/json", content_encoding=None)
    observer.feed(JSON_BODY[:20])
    assert observer.result().unparsed
    observer.feed(JSON_BODY[20:])
    r = observer.result()
    assert not r.unparsed
    assert r.usage is not None


def test_final_event_without_blank_line_is_seen_without_consuming_state() -> None:
    body = CHAT_STREAM.rstrip(b"\n")  # ends with "data: [DONE]"
    observer = ResponseObserver("chat_completions", content_type="text/event-stream", content_encoding=None)
    observer.feed(body)
    assert observer.result().complete
    observer.feed(b"\n\n")
    assert observer.result().complete


def test_empty_body() -> None:
    assert observe(b"", ctype="application/json") == ParsedResponse()


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_chunk_split_equals_whole(data: st.DataObject) -> None:
    body, api, ctype = data.draw(
        st.sampled_from(
            [
                (ANTHROPIC_STREAM, "messages", "text/event-stream"),
                (CHAT_STREAM.replace(b"\n", b"\r\n"), "chat_completions", None),
                (CHAT_STREAM.replace(b"\n", b"\r"), "chat_completions", "text/event-stream"),
                (JSON_BODY, "messages", "application/json"),
                (b"\r\n " + JSON_BODY, "messages", None),
            ]
        )
    )
    enc = data.draw(st.sampled_from([None, "gzip"]))
    wire = gzip.compress(body) if enc else body
    cuts = sorted(data.draw(st.sets(st.integers(1, len(wire) - 1), max_size=40)))
    assert observe(wire, api=api, ctype=ctype, enc=enc, chunks=cuts) == observe(body, api=api, ctype=ctype)


def test_bad_gzip_header_reports_unparsed() -> None:
    assert observe(b"\x00\x01" + gzip.compress(JSON_BODY)[2:], ctype="application/json", enc="gzip").unparsed


def test_moonshot_chat_stream_usage_inside_the_final_choice() -> None:
    # Moonshot (Kimi) streams put the usage in the final chunk's choices[0].usage, with
    # the chunk's own "usage" null (or absent); its cached_tokens sit at the top level of
    # that usage and in prompt_tokens_details.
    final_usage = {
        "prompt_tokens": 1336,
        "completion_tokens": 31,
        "total_tokens": 1367,
        "cached_tokens": 1280,
        "prompt_tokens_details": {"cached_tokens": 1280},
    }
    for top_level in ({"usage": None}, {}):
        body = sse(
            (
                None,
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "model": "kimi-k2-0905-preview",
                    "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
                    **top_level,
                },
            ),
            (
                None,
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "model": "kimi-k2-0905-preview",
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "usage": final_usage}],
                    **top_level,
                },
            ),
            (None, "[DONE]"),
        )
        r = observe(body, api="chat_completions")
        assert r.usage == TokenUsage(input=56, cache_read=1280, output=31)
        assert (r.finish_reasons, r.complete) == (("stop",), True)


@pytest.mark.parametrize("coding", ["utf-8", "none", "UTF-8, identity"])
def test_a_coding_the_clients_skip_is_read_as_identity(coding: str) -> None:
    # httpx and httpx2 pass a Content-Encoding they do not know through as identity: the
    # caller's client reads this body as it is, and so does the observer (no lost usage).
    observer = ResponseObserver("messages", content_type="application/json", content_encoding=coding)
    observer.feed(JSON_BODY)
    result = observer.result()
    assert not result.unparsed
    assert result.usage is not None


def test_a_known_coding_whose_bytes_do_not_decode_is_still_unparsed() -> None:
    observer = ResponseObserver("messages", content_type="application/json", content_encoding="gzip")
    observer.feed(JSON_BODY)
    assert observer.result().unparsed
