"""The real anthropic and openai SDKs (httpx2-based), sync and async, JSON and streaming, through wrap().

The SDKs do their own request building, retries and SSE parsing; cachewatch sits under
them. A MockTransport stands in for the network with realistic provider bodies.
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import httpx2
import openai
import orjson
import pytest

import cachewatch

ANTHROPIC_JSON = {
    "id": "msg_sdk",
    "type": "message",
    "role": "assistant",
    "model": "claude-opus-4-8",
    "content": [{"type": "text", "text": "Hello"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 20,
        "cache_creation_input_tokens": 1500,
        "cache_read_input_tokens": 4000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 11,
    },
}


def anthropic_sse() -> bytes:
    events = [
        ("message_start", {"type": "message_start", "message": {**ANTHROPIC_JSON, "content": [], "stop_reason": None,
                                                                "usage": {**ANTHROPIC_JSON["usage"], "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 11}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    return b"".join(b"event: " + n.encode() + b"\ndata: " + orjson.dumps(d) + b"\n\n" for n, d in events)


OPENAI_JSON = {
    "id": "chatcmpl-sdk",
    "object": "chat.completion",
    "created": 1,
    "model": "qwen3.6-plus",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
    "usage": {
        "prompt_tokens": 5000,
        "completion_tokens": 8,
        "total_tokens": 5008,
        "prompt_tokens_details": {"cached_tokens": 3000, "cache_creation_input_tokens": 1800},
    },
}


def openai_sse() -> bytes:
    base = {"id": "chatcmpl-sdk", "object": "chat.completion.chunk", "created": 1, "model": "qwen3.6-plus"}
    chunks = [
        {
            **base,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}],
        },
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**base, "choices": [], "usage": OPENAI_JSON["usage"]},
    ]
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def handler(request: httpx2.Request) -> httpx2.Response:
    body = orjson.loads(request.content)
    stream = bool(body.get("stream"))
    if request.url.path.endswith("/v1/messages"):
        if stream:
            data = anthropic_sse()
            return httpx2.Response(
                200, headers={"content-type": "text/event-stream"}, content=iter([data[:40], data[40:]])
            )
        return httpx2.Response(200, json=ANTHROPIC_JSON)
    if stream:
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=iter([openai_sse()])
        )
    return httpx2.Response(200, json=OPENAI_JSON)


async def ahandler(request: httpx2.Request) -> httpx2.Response:
    await request.aread()
    response = handler(request)
    content = b"".join(response.stream)  # type: ignore[union-attr]

    async def gen() -> Any:
        yield content

    return httpx2.Response(response.status_code, headers=response.headers, content=gen())


ANTHROPIC_TOKENS = {
    "input": 20,
    "cache_read": 4000,
    "cache_write_5m": 1500,
    "cache_write_1h": 0,
    "output": 11,
}
OPENAI_TOKENS = {"input": 200, "cache_read": 3000, "cache_write_5m": 1800, "cache_write_1h": 0, "output": 8}
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_sync(telemetry: Any, stream: bool) -> None:
    client = cachewatch.wrap(
        anthropic.Anthropic(api_key="k", http_client=httpx2.Client(transport=httpx2.MockTransport(handler))),
        **telemetry.kwargs,
    )
    if stream:
        with client.messages.stream(model="claude-opus-4-8", max_tokens=32, messages=MESSAGES) as s:
            text = "".join(s.text_stream)
        assert text == "Hello"
    else:
        msg = client.messages.create(model="claude-opus-4-8", max_tokens=32, messages=MESSAGES)
        assert msg.usage.cache_read_input_tokens == 4000
    labels = {"provider": "anthropic", "api": "messages", "model": "claude-opus-4-8", "workspace": "default"}
    assert telemetry.tokens(**labels) == ANTHROPIC_TOKENS
    assert telemetry.value("cachewatch_requests_total", outcome="ok", **labels) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_async(telemetry: Any, stream: bool) -> None:
    client = cachewatch.wrap(
        anthropic.AsyncAnthropic(
            api_key="k", http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(ahandler))
        ),
        **telemetry.kwargs,
    )
    if stream:
        async with client.messages.stream(model="claude-opus-4-8", max_tokens=32, messages=MESSAGES) as s:
            text = "".join([t async for t in s.text_stream])
        assert text == "Hello"
    else:
        await client.messages.create(model="claude-opus-4-8", max_tokens=32, messages=MESSAGES)
    labels = {"provider": "anthropic", "api": "messages", "model": "claude-opus-4-8", "workspace": "default"}
    assert telemetry.tokens(**labels) == ANTHROPIC_TOKENS


DASHSCOPE_COMPAT = "https://dashscope-intl.aliyuncs.com/compatible-mode/v1"


@pytest.mark.parametrize("stream", [False, True])
def test_openai_sync_dashscope_compatible(telemetry: Any, stream: bool) -> None:
    client = cachewatch.wrap(
        openai.OpenAI(
            api_key="k",
            base_url=DASHSCOPE_COMPAT,
            http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
        ),
        **telemetry.kwargs,
    )
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="qwen3.6-plus", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
        )
        assert chunks[-1].usage.prompt_tokens == 5000
    else:
        r = client.chat.completions.create(model="qwen3.6-plus", messages=MESSAGES)
        assert r.choices[0].message.content == "Hi"
    labels = {
        "provider": "dashscope",
        "api": "chat_completions",
        "model": "qwen3.6-plus",
        "workspace": "default",
    }
    assert telemetry.tokens(**labels) == OPENAI_TOKENS
    # The SDK stops reading at [DONE] and closes: a complete stream, not an abandoned one.
    assert telemetry.value("cachewatch_requests_total", outcome="ok", **labels) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_async(telemetry: Any, stream: bool) -> None:
    client = cachewatch.wrap(
        openai.AsyncOpenAI(
            api_key="k",
            base_url=DASHSCOPE_COMPAT,
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(ahandler)),
        ),
        **telemetry.kwargs,
    )
    if stream:
        chunks = [
            c
            async for c in await client.chat.completions.create(
                model="qwen3.6-plus", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
        ]
        assert chunks[-1].usage is not None
    else:
        await client.chat.completions.create(model="qwen3.6-plus", messages=MESSAGES)
    labels = {
        "provider": "dashscope",
        "api": "chat_completions",
        "model": "qwen3.6-plus",
        "workspace": "default",
    }
    assert telemetry.tokens(**labels) == OPENAI_TOKENS
    # The SDK stops reading at [DONE] and closes: a complete stream, not an abandoned one.
    assert telemetry.value("cachewatch_requests_total", outcome="ok", **labels) == 1


def test_sdk_keeps_its_settings_after_wrap(telemetry: Any) -> None:
    client = anthropic.Anthropic(
        api_key="k",
        base_url="https://dashscope.aliyuncs.com/apps/anthropic",
        timeout=12.5,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    seen: list[httpx2.Request] = []
    http = client._client
    original = http._transport

    class Spy:
        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            seen.append(request)
            return original.handle_request(request)

        def close(self) -> None:
            pass

    http._transport = Spy()
    cachewatch.wrap(client, **telemetry.kwargs)
    client.messages.create(model="qwen3.6-plus", max_tokens=8, messages=MESSAGES)
    (request,) = seen
    assert str(request.url) == "https://dashscope.aliyuncs.com/apps/anthropic/v1/messages"
    assert "k" in (
        request.headers.get("x-api-key"),
        request.headers.get("authorization", "").removeprefix("Bearer "),
    )
    assert client.timeout == 12.5
    labels = {"provider": "dashscope", "api": "messages", "model": "qwen3.6-plus", "workspace": "default"}
    assert telemetry.value("cachewatch_requests_total", outcome="ok", **labels) == 1


def test_plain_httpx_client_path(telemetry: Any) -> None:
    def h(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=ANTHROPIC_JSON)

    client = httpx.Client(
        transport=cachewatch.CacheWatchTransport(httpx.MockTransport(h), **telemetry.kwargs),
        base_url="https://api.anthropic.com",
    )
    r = client.post("/v1/messages", json={"model": "claude-opus-4-8", "max_tokens": 8, "messages": MESSAGES})
    assert r.json()["id"] == "msg_sdk"
    labels = {"provider": "anthropic", "api": "messages", "model": "claude-opus-4-8", "workspace": "default"}
    assert telemetry.tokens(**labels) == ANTHROPIC_TOKENS


def test_sdk_accepts_transport_directly(telemetry: Any) -> None:
    http = httpx2.Client(
        transport=cachewatch.CacheWatchTransport(httpx2.MockTransport(handler), **telemetry.kwargs)
    )
    client = anthropic.Anthropic(api_key="k", http_client=http)
    client.messages.create(model="claude-opus-4-8", max_tokens=8, messages=MESSAGES)
    labels = {"provider": "anthropic", "api": "messages", "model": "claude-opus-4-8", "workspace": "default"}
    assert telemetry.tokens(**labels) == ANTHROPIC_TOKENS


def test_wrap_rejects_other_objects() -> None:
    with pytest.raises(TypeError, match="expects an httpx/httpx2 Client"):
        cachewatch.wrap(object())


def _error_mid_stream(request: httpx2.Request) -> httpx2.Response:
    """A 200 stream that ends with a provider error event (Anthropic ``error``, a Chat error chunk)."""
    if request.url.path.endswith("/v1/messages"):
        start = anthropic_sse().split(b"\n\n")[0] + b"\n\n"
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        data = start + b"event: error\ndata: " + orjson.dumps(error) + b"\n\n"
    else:
        first = openai_sse().split(b"\n\n")[0] + b"\n\n"
        data = first + b'data: {"error":{"message":"upstream overloaded","code":502}}\n\n'
    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=iter([data]))


def test_an_error_event_the_sdk_raises_on_is_a_server_error_not_an_abort(telemetry: Any) -> None:
    # Both SDKs raise on the provider's error event and close the body: the caller did
    # not abandon the stream, the provider ended it with an error (research A.8).
    http = httpx2.Client(transport=httpx2.MockTransport(_error_mid_stream))
    claude = cachewatch.wrap(
        anthropic.Anthropic(api_key="k", http_client=http, max_retries=0), **telemetry.kwargs
    )
    with pytest.raises(anthropic.APIStatusError):
        for _ in claude.messages.create(
            model="claude-opus-4-8", max_tokens=32, messages=MESSAGES, stream=True
        ):
            pass
    labels = {"provider": "anthropic", "api": "messages", "model": "claude-opus-4-8", "workspace": "default"}
    assert telemetry.value("cachewatch_requests_total", outcome="server_error", **labels) == 1
    assert telemetry.value("cachewatch_requests_total", outcome="aborted", **labels) == 0
    # The usage message_start reported is kept.
    assert telemetry.tokens(**labels)["cache_read"] == 4000

    gpt = cachewatch.wrap(
        openai.OpenAI(api_key="k", base_url=DASHSCOPE_COMPAT, http_client=http, max_retries=0),
        **telemetry.kwargs,
    )
    with pytest.raises(openai.APIError):
        for _ in gpt.chat.completions.create(model="qwen3.6-plus", messages=MESSAGES, stream=True):
            pass
    labels = {
        "provider": "dashscope",
        "api": "chat_completions",
        "model": "qwen3.6-plus",
        "workspace": "default",
    }
    assert telemetry.value("cachewatch_requests_total", outcome="server_error", **labels) == 1
    assert telemetry.value("cachewatch_requests_total", outcome="aborted", **labels) == 0
