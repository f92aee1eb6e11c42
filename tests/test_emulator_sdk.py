"""The emulator under uvicorn in a thread, driven by the real SDKs and httpx2.

Covers Anthropic JSON and streaming (sync and async), OpenAI chat JSON and
streaming with ``include_usage``, DashScope native JSON and SSE over httpx2, and
streamed concurrency: entries become readable once the writing stream starts.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from cachewatch.emulator import Emulator, ManualClock, create_app, run_in_thread

CC: dict[str, Any] = {"type": "ephemeral"}
SYSTEM = " ".join(["ab"] * 1_200)  # 1,200 tokens


@pytest.fixture(scope="module")
def emulator() -> Emulator:
    return create_app(clock=ManualClock(), words_per_chunk=2)


@pytest.fixture(scope="module")
def base_url(emulator: Emulator) -> Iterator[str]:
    with run_in_thread(emulator) as url:
        yield url


@pytest.fixture(autouse=True)
def fresh_cache(emulator: Emulator) -> None:
    emulator.reset()


def test_anthropic_sdk_json_then_cached(base_url: str) -> None:
    client = anthropic.Anthropic(api_key="test", base_url=base_url, max_retries=0)
    system = [{"type": "text", "text": SYSTEM, "cache_control": CC}]
    kwargs: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 64, "system": system}
    first = client.messages.create(messages=[{"role": "user", "content": "hi"}], **kwargs)
    assert first.usage.cache_creation_input_tokens == 1_200
    assert first.usage.cache_creation is not None
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == 1_200
    assert first.usage.input_tokens == 1
    second = client.messages.create(messages=[{"role": "user", "content": "hi"}], **kwargs)
    assert second.usage.cache_read_input_tokens == 1_200
    assert second.usage.cache_creation_input_tokens == 0
    assert second.content[0].type == "text"


def test_anthropic_sdk_stream_and_agent_loop(base_url: str) -> None:
    client = anthropic.Anthropic(api_key="test", base_url=base_url, max_retries=0)
    tool = {
        "name": "lookup",
        "description": "Look something up",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    }
    history: list[Any] = [{"role": "user", "content": "Please use the tool to look up caching."}]
    kwargs: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 64,
        "system": SYSTEM,
        "tools": [tool],
        "cache_control": CC,
    }
    with client.messages.stream(messages=history, **kwargs) as stream:
        texts = list(stream.text_stream)
        message = stream.get_final_message()
    assert message.stop_reason == "tool_use"
    assert message.usage.cache_creation_input_tokens is not None
    assert message.usage.cache_creation_input_tokens > 1_200  # tools + system + the user turn
    call = next(b for b in message.content if b.type == "tool_use")
    assert call.input == {"q": "example q"}
    assert "".join(texts) == next(b.text for b in message.content if b.type == "text")
    history += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "found"}]},
    ]
    with client.messages.stream(messages=history, **kwargs) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn"
    assert final.usage.cache_read_input_tokens == message.usage.cache_creation_input_tokens


async def test_async_anthropic_sdk(base_url: str) -> None:
    client = anthropic.AsyncAnthropic(api_key="test", base_url=base_url, max_retries=0)
    result = await client.messages.create(
        model="claude-sonnet-4-6", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
    )
    assert result.usage.input_tokens == 1
    await client.close()


def test_anthropic_sdk_sees_400(base_url: str) -> None:
    client = anthropic.Anthropic(api_key="test", base_url=base_url, max_retries=0)
    blocks: Any = [{"type": "text", "text": "x", "cache_control": CC} for _ in range(5)]
    with pytest.raises(anthropic.BadRequestError, match="Found 5"):
        client.messages.create(
            model="claude-sonnet-4-6", max_tokens=8, messages=[{"role": "user", "content": blocks}]
        )


def test_openai_sdk_json_and_stream_with_usage(base_url: str) -> None:
    client = openai.OpenAI(api_key="test", base_url=f"{base_url}/compatible-mode/v1", max_retries=0)
    messages: Any = [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM, "cache_control": CC}]},
        {"role": "user", "content": "hi"},
    ]
    first = client.chat.completions.create(model="qwen3.6-plus", messages=messages)
    assert first.usage is not None
    assert first.usage.prompt_tokens == 1_201
    assert first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    stream = client.chat.completions.create(
        model="qwen3.6-plus",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 1_200
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first.choices[0].message.content


def test_dashscope_native_over_httpx2(base_url: str) -> None:
    url = f"{base_url}/api/v1/services/aigc/text-generation/generation"
    body = {
        "model": "qwen-plus",
        "input": {
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": SYSTEM, "cache_control": CC}]},
                {"role": "user", "content": "hi"},
            ]
        },
        "parameters": {"incremental_output": True},
    }
    first = httpx2.post(url, json=body)
    assert first.status_code == 200
    assert first.json()["usage"]["prompt_tokens_details"]["cache_creation_input_tokens"] == 1_200
    with httpx2.stream("POST", url, json=body, headers={"X-DashScope-SSE": "enable"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        data = [line for line in response.iter_lines() if line.startswith("data:")]
    assert len(data) >= 2
    assert '"cached_tokens":1200' in data[-1]


def test_streamed_write_is_readable_once_the_stream_started() -> None:
    """A request held before its first event is a write in flight; once it streams, others read."""
    release = threading.Event()
    started = threading.Event()
    calls = 0

    async def gate() -> None:
        # Hold only the first request, between its cache registration and its first event.
        nonlocal calls
        calls += 1
        if calls == 1:
            started.set()
            while not release.is_set():
                await asyncio.sleep(0.005)

    app = create_app(before_response=gate)
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 8,
        "stream": True,
        "system": [{"type": "text", "text": SYSTEM, "cache_control": CC}],
        "messages": [{"role": "user", "content": "hi"}],
    }
    with run_in_thread(app) as url, httpx2.Client(base_url=url) as http:
        with http.stream("POST", "/v1/messages", json=body) as first:
            assert started.wait(5)
            # The first request's write is pending: a second cold request also writes.
            second = http.post("/v1/messages", json={**body, "stream": False}).json()
            assert second["usage"]["cache_creation_input_tokens"] == 1_200
            release.set()
            lines = list(first.iter_lines())
        assert any('"cache_creation_input_tokens":1200' in line for line in lines)
        third = http.post("/v1/messages", json={**body, "stream": False}).json()
        assert third["usage"]["cache_read_input_tokens"] == 1_200
