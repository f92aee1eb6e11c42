"""Request hygiene: include_usage added by cachewatch, and its usage-only chunk hidden from the caller."""

from __future__ import annotations

import gzip
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


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_added_include_usage_is_hidden_and_still_counted(encoding: str | None) -> None:
    body = gzip.compress(WITH_USAGE) if encoding else WITH_USAGE
    headers = {"content-type": "text/event-stream"}
    if encoding:
        headers["content-encoding"] = encoding
    seen: list[Any] = []
    capture: list[Any] = []

    class Sink:
        name = "capture"

        def start(self, info: Any) -> None:
            return None

        def finish(self, state: Any, record: Any) -> None:
            capture.append(record)

    client = _client(body, headers, seen, sinks=[Sink()])
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
