"""Request hygiene: include_usage added by cachewatch, and its usage-only chunk hidden from the caller."""

from __future__ import annotations

import asyncio
import gzip
import importlib
import tracemalloc
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

import cachewatch
from cachewatch.planning._hygiene import UsageChunkFilter

BASE = {"id": "chatcmpl-h", "object": "chat.completion.chunk", "created": 1, "model": "qwen-plus"}
CHUNKS = [
    {
        **BASE,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}],
    },
    {**BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
]
USAGE = {"prompt_tokens": 3000, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 2000}}
ASKED = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in CHUNKS) + b"data: [DONE]\n\n"
WITH_USAGE = (
    b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in CHUNKS)
    + b"data: "
    + orjson.dumps({**BASE, "choices": [], "usage": USAGE})
    + b"\n\ndata: [DONE]\n\n"
)


@pytest.mark.parametrize("size", [1, 3, 17, 10_000])
def test_filter_removes_only_the_usage_only_chunk(size: int) -> None:
    f = UsageChunkFilter()
    out = b"".join(f.feed(WITH_USAGE[i : i + size]) for i in range(0, len(WITH_USAGE), size)) + f.flush()
    assert out == ASKED


@pytest.mark.parametrize("separator", [b"\r\n\r\n", b"\r\r"], ids=["crlf", "cr"])
@pytest.mark.parametrize("size", [1, 5, 10_000])
def test_filter_reads_events_ended_by_crlf_or_cr(separator: bytes, size: int) -> None:
    # SSE allows CRLF, LF and CR line ends (a relay's CRLF stream): the usage-only chunk is
    # found and hidden there too.
    def stream(body: bytes) -> bytes:
        return body.replace(b"\n\n", separator)

    f = UsageChunkFilter()
    body = stream(WITH_USAGE)
    out = b"".join(f.feed(body[i : i + size]) for i in range(0, len(body), size)) + f.flush()
    assert out == stream(ASKED)


def test_a_usage_chunk_at_the_end_of_a_stream_without_its_blank_line_is_hidden() -> None:
    # The last event of a body that ends without the blank line after it is only complete
    # when the body ends: flush() judges it then.
    ended = WITH_USAGE.removesuffix(b"\n\ndata: [DONE]\n\n")
    f = UsageChunkFilter()
    assert f.feed(ended) + f.flush() == ASKED.removesuffix(b"data: [DONE]\n\n")


def test_filter_leaves_streams_without_that_chunk_alone() -> None:
    f = UsageChunkFilter()
    assert f.feed(ASKED) + f.flush() == ASKED


def _client(body: bytes, headers: dict[str, str], seen: list[Any], **options: Any) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(orjson.loads(request.content))
        return httpx.Response(200, headers=headers, content=iter([body[:50], body[50:]]))

    transport = cachewatch.CacheWatchTransport(
        httpx.MockTransport(handler), registry=CollectorRegistry(), include_usage=True, **options
    )
    return httpx.Client(
        transport=transport, base_url="https://dashscope-intl.aliyuncs.com/compatible-mode/v1"
    )


REQUEST = {"model": "qwen-plus", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


class Capture:
    """A sink that keeps every record in ``records``."""

    name = "capture"

    def __init__(self, records: list[Any]) -> None:
        self.records = records

    def start(self, info: Any) -> None:
        return None

    def finish(self, state: Any, record: Any) -> None:
        self.records.append(record)


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_added_include_usage_is_hidden_and_still_counted(encoding: str | None) -> None:
    body = gzip.compress(WITH_USAGE) if encoding else WITH_USAGE
    headers = {"content-type": "text/event-stream"}
    if encoding:
        headers["content-encoding"] = encoding
    seen: list[Any] = []
    capture: list[Any] = []

    client = _client(body, headers, seen, sinks=[Capture(capture)])
    with client.stream("POST", "/chat/completions", json=REQUEST) as r:
        received = b"".join(r.iter_bytes())
        assert "content-encoding" not in r.headers
    assert seen[0]["stream_options"] == {"include_usage": True}
    assert received == ASKED  # exactly what the caller asked for
    (record,) = capture
    assert record.usage is not None
    assert record.usage.cache_read == 2000
    assert record.usage.input == 1000


def test_a_caller_who_asked_for_usage_keeps_the_chunk() -> None:
    seen: list[Any] = []
    client = _client(WITH_USAGE, {"content-type": "text/event-stream"}, seen)
    asked = {**REQUEST, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/chat/completions", json=asked) as r:
        received = b"".join(r.iter_bytes())
    assert received == WITH_USAGE


@pytest.mark.parametrize("family", ["httpx", "httpx2"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_body_that_does_not_decode_raises_as_without_cachewatch(family: str, mode: str) -> None:
    # The filter decodes a compressed stream for the caller (and drops Content-Encoding):
    # a body that does not decode used to reach the caller as an empty 200 body.
    hx = importlib.import_module(family)
    good = gzip.compress(WITH_USAGE)
    body = good[:20] + b"\xff" * 50 + good[70:]
    capture: list[Any] = []

    def handler(request: Any) -> Any:
        headers = {"content-type": "text/event-stream", "content-encoding": "gzip"}
        return hx.Response(200, headers=headers, content=iter([body[:30], body[30:]]))

    def read(wrapped: bool) -> str:
        if mode == "sync":
            client = hx.Client(
                transport=hx.MockTransport(handler), base_url="https://dashscope-intl.aliyuncs.com"
            )
            if wrapped:
                cachewatch.wrap(
                    client, registry=CollectorRegistry(), include_usage=True, sinks=[Capture(capture)]
                )
            with (
                pytest.raises(hx.DecodingError) as raised,
                client.stream("POST", "/compatible-mode/v1/chat/completions", json=REQUEST) as r,
            ):
                r.read()
            return type(raised.value).__name__

        async def go() -> str:
            async def ahandler(request: Any) -> Any:
                async def chunks() -> Any:
                    yield body[:30]
                    yield body[30:]

                headers = {"content-type": "text/event-stream", "content-encoding": "gzip"}
                return hx.Response(200, headers=headers, content=chunks())

            client = hx.AsyncClient(
                transport=hx.MockTransport(ahandler), base_url="https://dashscope-intl.aliyuncs.com"
            )
            if wrapped:
                cachewatch.wrap(
                    client, registry=CollectorRegistry(), include_usage=True, sinks=[Capture(capture)]
                )
            with pytest.raises(hx.DecodingError) as raised:
                async with client.stream("POST", "/compatible-mode/v1/chat/completions", json=REQUEST) as r:
                    await r.aread()
            return type(raised.value).__name__

        return asyncio.run(go())

    assert read(wrapped=True) == read(wrapped=False)
    (record,) = capture
    assert record.outcome == "transport_error"
    assert record.error_type == "DecodingError"


@pytest.mark.parametrize("coding", ["gzip", "br"])
def test_a_compressed_stream_is_decoded_for_the_caller_in_bounded_pieces(coding: str) -> None:
    # The filter decodes a compressed stream for the caller. A compression bomb (here
    # 32 MiB of events in a few hundred bytes) must be handed over in bounded pieces,
    # never inflated whole in memory (SPEC 10: bounded memory on any body).
    brotli = pytest.importorskip("brotli")
    events = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in CHUNKS)
    plain = events * (32 * 1024 * 1024 // len(events)) + WITH_USAGE
    wire = gzip.compress(plain, 9) if coding == "gzip" else brotli.compress(plain, quality=9)
    assert len(wire) < 1024 * 1024
    seen: list[Any] = []
    client = _client(wire, {"content-type": "text/event-stream", "content-encoding": coding}, seen)
    received = 0
    ending = b""
    with client.stream("POST", "/chat/completions", json=REQUEST) as r:
        tracemalloc.start()
        try:
            for chunk in r.iter_raw():
                received += len(chunk)
                ending = (ending + chunk)[-len(ASKED) :]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert received == len(plain) - len(WITH_USAGE) + len(ASKED)
    assert ending == ASKED
    assert peak < 16 * 1024 * 1024, f"{peak} bytes held at once while relaying a {len(wire)}-byte body"


def test_a_stream_that_declares_its_length_does_not_keep_it_once_filtered() -> None:
    # An event stream with a Content-Length (a relay that buffers it): the hidden usage
    # chunk made the body shorter than the length the caller was given (the proxy then
    # failed with "Response content shorter than Content-Length").
    seen: list[Any] = []
    headers = {"content-type": "text/event-stream", "content-length": str(len(WITH_USAGE))}
    client = _client(WITH_USAGE, headers, seen)
    with client.stream("POST", "/chat/completions", json=REQUEST) as r:
        received = b"".join(r.iter_raw())
        declared = r.headers.get("content-length")
    assert received == ASKED
    assert declared is None or int(declared) == len(received)


@pytest.mark.parametrize("family", ["httpx", "httpx2"])
@pytest.mark.parametrize("coding", ["utf-8", "compress"])
def test_a_coding_the_filter_cannot_decode_is_relayed_as_without_cachewatch(family: str, coding: str) -> None:
    # httpx and httpx2 skip a Content-Encoding they do not know (servers do send
    # "utf-8"): the caller reads the body. The filter must not turn it into a DecodingError.
    hx = importlib.import_module(family)
    headers = {"content-type": "text/event-stream", "content-encoding": coding}

    def handler(request: Any) -> Any:
        return hx.Response(200, headers=headers, content=iter([WITH_USAGE[:50], WITH_USAGE[50:]]))

    def read(wrapped: bool) -> tuple[bytes, bytes, str | None]:
        client = hx.Client(
            transport=hx.MockTransport(handler), base_url="https://dashscope-intl.aliyuncs.com"
        )
        if wrapped:
            cachewatch.wrap(client, registry=CollectorRegistry(), include_usage=True)
        path = "/compatible-mode/v1/chat/completions"
        with client.stream("POST", path, json=REQUEST) as r:
            raw = b"".join(r.iter_raw())
        with client.stream("POST", path, json=REQUEST) as r:
            decoded = b"".join(r.iter_bytes())
        return raw, decoded, r.headers.get("content-encoding")

    assert read(wrapped=True) == read(wrapped=False)
