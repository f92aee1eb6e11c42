"""Emulator caching semantics, driven through the ASGI app in process.

Categories: token rule; reads of earlier writes (turn N+1, lookback 19 vs 20);
per-model minimum; TTL expiry and refresh on an injected clock; mixed-TTL (A/B/C)
billing; writes in flight; Anthropic-profile 400s; DashScope last-4-win, TTL and
stream quirk; usage formats per API and the partition invariant; tool use;
isolation; profile selection.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from cachewatch.emulator import (
    ManualClock,
    block_tokens,
    count_text_tokens,
    create_app,
    select_profile,
)
from cachewatch.emulator._cache import CacheStore, Position, Prompt, resolve_breakpoints
from cachewatch.emulator._profiles import ANTHROPIC, DASHSCOPE

MODEL = "claude-sonnet-4-6"  # minimum 1,024
CC: dict[str, Any] = {"type": "ephemeral"}
CC_1H: dict[str, Any] = {"type": "ephemeral", "ttl": "1h"}


def words(n: int) -> str:
    """Text of exactly ``n`` tokens ("ab" is one token)."""
    return " ".join(["ab"] * n)


def text(n: int, cc: dict[str, Any] | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": words(n)}
    if cc is not None:
        block["cache_control"] = cc
    return block


def user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


async def post(
    app: Any, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://emulator.test") as client:
        return await client.post(path, json=body, headers=headers or {})


def sse(body: str) -> list[tuple[str | None, dict[str, Any]]]:
    events: list[tuple[str | None, dict[str, Any]]] = []
    for frame in body.split("\n\n"):
        name = None
        data = None
        for line in frame.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:") and line[5:].strip() != "[DONE]":
                data = orjson.loads(line[5:].strip())
        if data is not None:
            events.append((name, data))
    return events


def split(usage: dict[str, Any]) -> tuple[int, int, int, int]:
    """(input, cache_read, write_5m, write_1h) of an Anthropic usage object."""
    creation = usage.get("cache_creation") or {}
    return (
        usage["input_tokens"],
        usage["cache_read_input_tokens"],
        creation.get("ephemeral_5m_input_tokens", 0),
        creation.get("ephemeral_1h_input_tokens", 0),
    )


async def messages(app: Any, body: dict[str, Any], path: str = "/v1/messages") -> dict[str, Any]:
    response = await post(app, path, {"model": MODEL, "max_tokens": 64, **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def usage_of(app: Any, body: dict[str, Any], path: str = "/v1/messages") -> tuple[int, int, int, int]:
    return split((await messages(app, body, path))["usage"])


# --- token rule


def test_token_rule() -> None:
    assert count_text_tokens("") == 0
    assert count_text_tokens("ab ab ab") == 3
    assert count_text_tokens("cache") == 2  # ceil(5 / 4)
    assert count_text_tokens("Hello, world!") == 2 + 1 + 2 + 1
    assert count_text_tokens("缓存命中") == 4


async def test_count_tokens_endpoint_ignores_markers() -> None:
    app = create_app()
    body = {"model": MODEL, "system": words(10), "messages": [user(text(5, CC))], "cache_control": CC}
    response = await post(app, "/v1/messages/count_tokens", body)
    assert response.json() == {"input_tokens": 15}
    assert len(app.cache) == 0


# --- reads of earlier writes


async def test_turn_reads_previous_turn_write() -> None:
    app = create_app()
    system = [text(1_200, CC)]
    turn1 = [user(text(50, CC))]
    assert await usage_of(app, {"system": system, "messages": turn1}) == (0, 0, 1_250, 0)
    # Turn 2 moves the marker to the new last message; lookback finds turn 1's entry.
    turn2 = [user(text(50)), assistant(text(10)), user(text(20, CC))]
    assert await usage_of(app, {"system": system, "messages": turn2}) == (0, 1_250, 30, 0)
    # Same request again: everything is read.
    assert await usage_of(app, {"system": system, "messages": turn2}) == (0, 1_280, 0, 0)


def conversation(blocks: int, marker_at: int) -> list[dict[str, Any]]:
    """One user message of ``blocks`` 10-token blocks, marker on block ``marker_at``."""
    return [user(*(text(10, CC if i == marker_at else None) for i in range(blocks)))]


@pytest.mark.parametrize(("grown", "hit"), [(19, True), (20, False)])
async def test_lookback_window_is_20_positions(grown: int, hit: bool) -> None:
    app = create_app()
    system = [text(1_100)]  # no marker: only the message breakpoint writes
    first = await usage_of(app, {"system": system, "messages": conversation(5, 4)})
    assert first == (0, 0, 1_150, 0)
    # The breakpoint moves `grown` positions further; it checks itself and 19 before it.
    second = await usage_of(app, {"system": system, "messages": conversation(5 + grown, 4 + grown)})
    if hit:
        assert second == (0, 1_150, 10 * grown, 0)
    else:
        assert second == (0, 0, 1_150 + 10 * grown, 0)


async def test_a_second_breakpoint_rescues_a_long_jump() -> None:
    app = create_app()
    system = [text(1_100, CC)]
    await usage_of(app, {"system": system, "messages": conversation(5, 4)})
    # 30 positions later: the message breakpoint misses, the system one still hits.
    assert await usage_of(app, {"system": system, "messages": conversation(35, 34)}) == (0, 1_100, 350, 0)


# --- minimum per model


@pytest.mark.parametrize(
    ("model", "size", "cached"),
    [
        ("claude-sonnet-4-6", 1_023, False),
        ("claude-sonnet-4-6", 1_024, True),
        ("claude-haiku-4-5", 4_095, False),
        ("claude-haiku-4-5-20251001", 4_096, True),
        ("claude-opus-4-7", 2_047, False),
        ("claude-fable-5", 512, True),
        ("some-unknown-model", 1_023, False),
    ],
)
async def test_minimum_cacheable_tokens_per_model(model: str, size: int, cached: bool) -> None:
    app = create_app()
    body = {"model": model, "max_tokens": 8, "system": [text(size, CC)], "messages": [user(text(1))]}
    usage = split((await post(app, "/v1/messages", body)).json()["usage"])
    assert usage == ((1, 0, size, 0) if cached else (size + 1, 0, 0, 0))


async def test_minimum_can_be_overridden_and_dashscope_is_1024() -> None:
    app = create_app(min_tokens={"claude-sonnet-4-6": 100})
    assert await usage_of(app, {"system": [text(100, CC)], "messages": [user(text(1))]}) == (1, 0, 100, 0)
    ds = create_app()
    body = {"model": "qwen-plus", "system": [text(1_023, CC)], "messages": [user(text(1))]}
    assert await usage_of(ds, body, "/apps/anthropic/v1/messages") == (1_024, 0, 0, 0)


# --- TTL


async def test_ttl_expires_and_is_refreshed_on_hit() -> None:
    clock = ManualClock()
    app = create_app(clock=clock)
    body = {"system": [text(1_100, CC)], "messages": [user(text(1))]}
    assert await usage_of(app, body) == (1, 0, 1_100, 0)
    clock.advance(299)
    assert await usage_of(app, body) == (1, 1_100, 0, 0)  # hit at 299 s: TTL restarts
    clock.advance(299)
    assert await usage_of(app, body) == (1, 1_100, 0, 0)  # 598 s after the write, 299 after the hit
    clock.advance(300)
    assert await usage_of(app, body) == (1, 0, 1_100, 0)  # 300 s without a hit: expired, rewritten


async def test_one_hour_entries_outlive_five_minutes() -> None:
    clock = ManualClock()
    app = create_app(clock=clock)
    body = {"system": [text(1_100, CC_1H)], "messages": [user(text(1))]}
    assert await usage_of(app, body) == (1, 0, 0, 1_100)
    clock.advance(3_599)
    assert await usage_of(app, body) == (1, 1_100, 0, 0)
    clock.advance(3_600)
    assert await usage_of(app, body) == (1, 0, 0, 1_100)


# --- mixed TTL billing


async def test_mixed_ttl_billing_a_b_c() -> None:
    app = create_app()
    tools = [
        {"name": "t", "description": words(1_100), "input_schema": {"type": "object"}, "cache_control": CC_1H}
    ]
    tt = block_tokens(tools[0])  # keys, name, description and schema, as text
    assert tt == 1_111
    # Cold: A = 0, B = the 1h breakpoint (tools), C = the last (message) breakpoint.
    body = {"tools": tools, "system": [text(500, CC_1H)], "messages": [user(text(300, CC)), user(text(7))]}
    assert await usage_of(app, body) == (7, 0, 300, tt + 500)
    # Only the tools entry exists for a changed system: A = tools, B = the system 1h marker.
    changed = {**body, "system": [text(501, CC_1H)]}
    assert await usage_of(app, changed) == (7, tt, 300, 501)
    # Everything cached: A = C, no writes.
    assert await usage_of(app, changed) == (7, tt + 801, 0, 0)


# --- writes in flight


def test_pending_writes_are_invisible_until_commit() -> None:
    clock = ManualClock()
    store = CacheStore(clock)
    prompt = Prompt(MODEL, [Position("system", b"x", 2_000, marker=CC)])
    bps = resolve_breakpoints(prompt, None, ANTHROPIC)
    first = store.begin(prompt, bps, profile=ANTHROPIC, min_tokens=1_024)
    second = store.begin(prompt, bps, profile=ANTHROPIC, min_tokens=1_024)
    assert first.usage.cache_write_5m == second.usage.cache_write_5m == 2_000
    first.commit()
    third = store.begin(prompt, bps, profile=ANTHROPIC, min_tokens=1_024)
    second.commit()
    assert third.usage.cache_read == 2_000
    assert len(store) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_concurrent_cold_requests_both_write(stream: bool) -> None:
    arrived = 0
    both_in = asyncio.Event()

    async def hold_until_both_arrived() -> None:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            both_in.set()
        await both_in.wait()

    app = create_app(before_response=hold_until_both_arrived)
    body = {
        "model": MODEL,
        "max_tokens": 8,
        "stream": stream,
        "system": [text(2_000, CC)],
        "messages": [user(text(1))],
    }
    r1, r2 = await asyncio.gather(post(app, "/v1/messages", body), post(app, "/v1/messages", body))
    for response in (r1, r2):
        usage = sse(response.text)[0][1]["message"]["usage"] if stream else response.json()["usage"]
        assert split(usage) == (1, 0, 2_000, 0)
    # Both responses started, so a third request reads.
    r3 = await post(app, "/v1/messages", {**body, "stream": False})
    assert split(r3.json()["usage"]) == (1, 2_000, 0, 0)


# --- anthropic profile errors


def error_message(response: httpx.Response) -> str:
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    message: str = body["error"]["message"]
    return message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {
                "system": [text(10, CC)],
                "messages": [user(text(1, CC), text(1, CC), text(1, CC), text(1, CC))],
            },
            "A maximum of 4 blocks with cache_control may be provided. Found 5.",
        ),
        (
            {"cache_control": CC, "messages": [user(text(1, CC), text(1, CC), text(1, CC), text(1, CC))]},
            "A maximum of 4 blocks with cache_control may be provided. Found 5.",
        ),
        (
            {
                "messages": [
                    user(text(1)),
                    assistant(text(1)),
                    user(text(1), {"type": "text", "text": "", "cache_control": CC}),
                ]
            },
            "messages.2.content.1.text: cache_control cannot be set for empty text blocks",
        ),
        (
            {"system": [{"type": "text", "text": "  ", "cache_control": CC}], "messages": [user(text(1))]},
            "system.0.text: cache_control cannot be set for empty text blocks",
        ),
        (
            {
                "messages": [
                    user(text(1)),
                    assistant({"type": "thinking", "thinking": "hm", "signature": "s", "cache_control": CC}),
                ]
            },
            "messages.1.content.0.thinking.cache_control: Extra inputs are not permitted",
        ),
        (
            {
                "messages": [
                    user(text(1)),
                    assistant({"type": "redacted_thinking", "data": "zz", "cache_control": CC}),
                ]
            },
            "messages.1.content.0.redacted_thinking.cache_control: Extra inputs are not permitted",
        ),
        (
            {"system": [text(10, CC)], "messages": [user(text(1, CC_1H))]},
            "messages.0.content.0.cache_control.ttl: a ttl='1h' cache_control block must not come after a "
            "ttl='5m' cache_control block. Note that blocks are processed in the following order: "
            "`tools`, `system`, `messages`.",
        ),
        (
            {"cache_control": CC, "messages": [user(text(1, CC_1H))]},
            "Top-level cache_control has ttl='5m' but the target block already has "
            "cache_control with ttl='1h'",
        ),
        (
            {
                "tools": [{"name": "b", "input_schema": {}, "defer_loading": True, "cache_control": CC}],
                "messages": [user(text(1))],
            },
            "Tool 'b' cannot have both defer_loading=true and cache_control set. "
            "Tools with defer_loading cannot use prompt caching.",
        ),
        ({"messages": [user(text(1))], "max_tokens": None}, "max_tokens: Input should be a valid integer"),
    ],
)
async def test_anthropic_profile_rejects_invalid_markers(body: dict[str, Any], message: str) -> None:
    response = await post(create_app(), "/v1/messages", {"model": MODEL, "max_tokens": 8, **body})
    assert error_message(response) == message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"messages": [user(text(1, {"type": "persistent"}))]},
            "messages.0.content.0.cache_control.type: Input should be 'ephemeral'",
        ),
        (
            {"messages": [user(text(1, {"type": "ephemeral", "ttl": "10m"}))]},
            "messages.0.content.0.cache_control.ttl: Input should be '5m' or '1h'",
        ),
        (
            {"cache_control": {"type": "ephemeral", "ttl": 3600}, "messages": [user(text(1))]},
            "cache_control.ttl: Input should be '5m' or '1h'",
        ),
    ],
)
async def test_anthropic_profile_rejects_a_malformed_cache_control(
    body: dict[str, Any], message: str
) -> None:
    # The only type is "ephemeral" and the only TTLs "5m" and "1h" (research A.2): the API
    # refuses anything else instead of caching it as 5 minutes.
    response = await post(create_app(), "/v1/messages", {"model": MODEL, "max_tokens": 8, **body})
    assert response.status_code == 400
    assert error_message(response) == message


async def test_top_level_marker_goes_on_last_cacheable_block() -> None:
    app = create_app()
    thinking = {"type": "thinking", "thinking": words(30), "signature": "sig"}
    body = {
        "cache_control": CC,
        "system": words(1_100),
        "messages": [user(text(5)), assistant(text(4), thinking, {"type": "text", "text": ""})],
    }
    # The breakpoint walks back past the empty text and the thinking block to text(4).
    assert await usage_of(app, body) == (30, 0, 1_109, 0)
    assert await usage_of(app, body) == (30, 1_109, 0, 0)


async def test_top_level_same_ttl_as_explicit_on_last_block_is_one_breakpoint() -> None:
    app = create_app()
    body = {"cache_control": CC, "system": [text(1_100, CC)], "messages": [user(text(5, CC))]}
    assert await usage_of(app, body) == (0, 0, 1_105, 0)


# --- dashscope profile


async def test_dashscope_keeps_the_last_four_markers() -> None:
    app = create_app()
    path = "/apps/anthropic/v1/messages"
    blocks = [text(1_100, CC), text(10, CC), text(10, CC), text(10, CC), text(10, CC), text(3)]
    body = {"model": "qwen3.6-plus", "messages": [user(*blocks)]}
    # Five markers: no error, the first is dropped, the last four write.
    assert await usage_of(app, body, path) == (3, 0, 1_140, 0)
    # The first marker wrote nothing: a request marking only that block misses.
    only_first = {"model": "qwen3.6-plus", "messages": [user(text(1_100, CC), text(2))]}
    assert await usage_of(app, only_first, path) == (2, 0, 1_100, 0)


async def test_dashscope_ignores_ttl_and_invalid_markers() -> None:
    app = create_app()
    body = {
        "model": "qwen3.6-plus",
        "system": [text(1_100, CC)],
        "messages": [user(text(5, CC_1H), {"type": "text", "text": "", "cache_control": CC})],
    }
    result = await messages(app, body, "/apps/anthropic/v1/messages")
    assert result["usage"]["cache_creation"] == {"ephemeral_5m_input_tokens": 1_105}
    assert result["usage"]["cache_creation_input_tokens"] == 1_105


async def test_dashscope_incremental_billing() -> None:
    """Research B.2: cache A = 1,200, new cache AB = 1,500: 1,200 hit, 300 creation."""
    app = create_app()
    path = "/compatible-mode/v1/chat/completions"
    first = [{"role": "user", "content": [text(1_200, CC)]}]
    second = [{"role": "user", "content": [text(1_200), text(300, CC)]}]
    r1 = (await post(app, path, {"model": "qwen-plus", "messages": first})).json()["usage"]
    r2 = (await post(app, path, {"model": "qwen-plus", "messages": second})).json()["usage"]
    assert r1["prompt_tokens_details"]["cache_creation_input_tokens"] == 1_200
    assert r2["prompt_tokens"] == 1_500
    assert r2["prompt_tokens_details"]["cached_tokens"] == 1_200
    assert r2["prompt_tokens_details"]["cache_creation_input_tokens"] == 300


@pytest.mark.parametrize("warm", [False, True])
async def test_dashscope_anthropic_stream_reports_split_only_in_message_delta(warm: bool) -> None:
    app = create_app()
    body = {
        "model": "qwen3.6-plus",
        "max_tokens": 64,
        "stream": True,
        "system": [text(1_100, CC)],
        "messages": [user(text(4))],
    }
    if warm:
        await post(app, "/apps/anthropic/v1/messages", body)
    events = sse((await post(app, "/apps/anthropic/v1/messages", body)).text)
    start = events[0][1]["message"]["usage"]
    assert start == {"input_tokens": 1_104, "output_tokens": 0}
    delta = next(data for name, data in events if name == "message_delta")["usage"]
    read, write = (1_100, 0) if warm else (0, 1_100)
    assert delta["input_tokens"] == 4
    assert delta["cache_read_input_tokens"] == read
    assert delta["cache_creation_input_tokens"] == write
    assert delta["cache_creation"] == {"ephemeral_5m_input_tokens": write}
    assert delta["output_tokens"] >= 1


# --- wire formats and the invariant


async def test_anthropic_stream_event_sequence_and_usage() -> None:
    app = create_app()
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "stream": True,
        "system": [text(1_100, CC)],
        "messages": [user(text(4))],
    }
    events = sse((await post(app, "/v1/messages", body)).text)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-4:] == ["content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]["usage"]
    assert split(start) == (4, 0, 1_100, 0)
    assert start["cache_creation_input_tokens"] == 1_100
    delta = events[-2][1]["usage"]
    streamed = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert delta["output_tokens"] == count_text_tokens(streamed)
    # The same prompt as JSON gets the same text.
    result = await messages(app, {**body, "stream": False})
    assert result["content"] == [{"type": "text", "text": streamed}]
    assert result["stop_reason"] == "end_turn"


async def test_anthropic_usage_fields() -> None:
    result = await messages(create_app(), {"system": [text(1_100, CC_1H)], "messages": [user(text(4))]})
    assert result["usage"] == {
        "input_tokens": 4,
        "cache_creation_input_tokens": 1_100,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 1_100},
        "output_tokens": result["usage"]["output_tokens"],
        "service_tier": "standard",
    }
    assert result["id"].startswith("msg_")
    assert result["type"] == "message"


async def test_openai_chat_stream_with_include_usage() -> None:
    app = create_app()
    body = {
        "model": "qwen-plus",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": [text(1_100, CC)]}, {"role": "user", "content": "hi"}],
    }
    response = await post(app, "/compatible-mode/v1/chat/completions", body)
    assert response.text.endswith("data: [DONE]\n\n")
    chunks = [data for _, data in sse(response.text)]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 1_101
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {
        "cached_tokens": 0,
        "cache_creation_input_tokens": 1_100,
        "cache_type": "ephemeral",
        "cache_creation": {"ephemeral_5m_input_tokens": 1_100},
    }
    # Without include_usage: no usage chunk, no usage key.
    plain = sse(
        (await post(app, "/compatible-mode/v1/chat/completions", {**body, "stream_options": None})).text
    )
    assert all("usage" not in data for _, data in plain)


async def test_plain_openai_automatic_prefix_caching() -> None:
    app = create_app()
    messages_ = [{"role": "system", "content": words(1_100)}, {"role": "user", "content": "hi"}]
    r1 = (await post(app, "/v1/chat/completions", {"model": "gpt-4o", "messages": messages_})).json()["usage"]
    assert r1["prompt_tokens_details"] == {"cached_tokens": 0}
    grown = [*messages_, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}]
    r2 = (await post(app, "/v1/chat/completions", {"model": "gpt-4o", "messages": grown})).json()["usage"]
    assert r2["prompt_tokens"] == 1_103
    assert r2["prompt_tokens_details"] == {"cached_tokens": 1_101}


async def test_dashscope_native_vl_implicit_hits_are_top_level_cached_tokens() -> None:
    # Research B.4: for VL models the implicit hits are usage.cached_tokens.
    app = create_app()
    path = "/api/v1/services/aigc/multimodal-generation/generation"
    body = {
        "model": "qwen3-vl-plus",
        "input": {"messages": [{"role": "system", "content": [{"text": words(1_100)}]},
                               {"role": "user", "content": [{"text": "hi"}]}]},
    }  # fmt: skip
    await post(app, path, body)
    usage = (await post(app, path, body)).json()["usage"]
    assert usage["cached_tokens"] > 1_000
    assert "prompt_tokens_details" not in usage


async def test_openai_automatic_caching_reads_a_prefix_two_prompts_share() -> None:
    # Research C.1: automatic prefix caching; a second question after the same long system
    # message reads that message, not only a prompt that extends a whole earlier one.
    app = create_app()
    system = {"role": "system", "content": words(2_000)}
    first = [system, {"role": "user", "content": "question one"}]
    second = [system, {"role": "user", "content": "question two"}]
    await post(app, "/v1/chat/completions", {"model": "gpt-4o", "messages": first})
    usage = (await post(app, "/v1/chat/completions", {"model": "gpt-4o", "messages": second})).json()["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 2_000}


@pytest.mark.parametrize("sse_header", [{}, {"X-DashScope-SSE": "enable"}, {"Accept": "text/event-stream"}])
async def test_dashscope_native_usage(sse_header: dict[str, str]) -> None:
    app = create_app()
    path = "/api/v1/services/aigc/text-generation/generation"
    body = {
        "model": "qwen-plus",
        "input": {
            "messages": [{"role": "system", "content": [text(1_100, CC)]}, {"role": "user", "content": "hi"}]
        },
        "parameters": {"result_format": "message"},
    }
    await post(app, path, body)
    response = await post(app, path, body, sse_header)
    if sse_header:
        events = sse(response.text)
        assert all(name == "result" for name, _ in events)
        outputs = [data["usage"]["output_tokens"] for _, data in events]
        assert outputs == sorted(outputs)  # cumulative
        assert [d["output"]["choices"][0]["finish_reason"] for _, d in events][-1] == "stop"
        final = events[-1][1]
    else:
        final = response.json()
    usage = final["usage"]
    assert usage["input_tokens"] == 1_101
    assert usage["prompt_tokens_details"]["cached_tokens"] == 1_100
    assert usage["prompt_tokens_details"]["cache_creation_input_tokens"] == 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def _partition(api: str, usage: dict[str, Any]) -> tuple[int, int]:
    """(sum of the partition, prompt total) for an API's usage object."""
    if api == "messages":
        part = usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"]
        return part, part
    details = usage["prompt_tokens_details"]
    total = usage["prompt_tokens"] if api == "chat" else usage["input_tokens"]
    uncached = total - details["cached_tokens"] - details.get("cache_creation_input_tokens", 0)
    return uncached + details["cached_tokens"] + details.get("cache_creation_input_tokens", 0), total


async def test_partition_invariant_over_a_growing_conversation() -> None:
    app = create_app()
    system = [text(1_300, CC)]
    history: list[dict[str, Any]] = []
    prompt_total = 1_300
    for turn in range(6):
        # Markers: system, the newest user turn on even turns, and the top-level one.
        newest = user(text(40 + turn, CC if turn % 2 == 0 else None))
        history = [*history, newest]
        prompt_total += 40 + turn
        counted = await post(
            app, "/v1/messages/count_tokens", {"model": MODEL, "system": system, "messages": history}
        )
        assert counted.json()["input_tokens"] == prompt_total
        result = await messages(app, {"system": system, "messages": history, "cache_control": CC})
        usage = result["usage"]
        parts = split(usage)
        assert sum(parts) == prompt_total
        assert usage["cache_creation_input_tokens"] == parts[2] + parts[3]
        history = [
            *history[:-1],
            user(text(40 + turn)),
            assistant(*[{"type": "text", "text": c["text"]} for c in result["content"]]),
        ]
        prompt_total += count_text_tokens(result["content"][0]["text"])


# --- tool use

WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}


async def test_tool_use_rule_anthropic() -> None:
    app = create_app()
    asked = await messages(
        app, {"tools": [WEATHER], "messages": [user({"type": "text", "text": "Please use the tool"})]}
    )
    assert asked["stop_reason"] == "tool_use"
    call = asked["content"][-1]
    assert call["type"] == "tool_use"
    assert call["name"] == "get_weather"
    assert call["input"] == {"city": "example city"}
    result = {"type": "tool_result", "tool_use_id": call["id"], "content": "sunny"}
    history = [user(text(3)), assistant(*asked["content"]), user(result)]
    answered = await messages(app, {"tools": [WEATHER], "messages": history})
    assert answered["stop_reason"] == "end_turn"
    plain = await messages(app, {"tools": [WEATHER], "messages": [user(text(3))]})
    assert plain["stop_reason"] == "end_turn"
    forced = await messages(
        app, {"tools": [WEATHER], "tool_choice": {"type": "any"}, "messages": [user(text(3))]}
    )
    assert [b["type"] for b in forced["content"]] == ["tool_use"]
    none = await messages(
        app,
        {
            "tools": [WEATHER],
            "tool_choice": {"type": "none"},
            "messages": [user({"type": "text", "text": "use the tool"})],
        },
    )
    assert none["stop_reason"] == "end_turn"


async def test_tool_use_rule_streamed_and_openai() -> None:
    app = create_app()
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "stream": True,
        "tools": [WEATHER],
        "messages": [user({"type": "text", "text": "use the tool"})],
    }
    events = sse((await post(app, "/v1/messages", body)).text)
    starts = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert starts == ["text", "tool_use"]
    partial = "".join(d["delta"].get("partial_json", "") for n, d in events if n == "content_block_delta")
    assert orjson.loads(partial) == {"city": "example city"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    fn = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]}}
    chat = {"model": "gpt-4o", "tools": [fn], "messages": [{"role": "user", "content": "use the tool"}]}
    choice = (await post(app, "/v1/chat/completions", chat)).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    follow = {
        **chat,
        "messages": [
            *chat["messages"],
            choice["message"],
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
        ],
    }
    assert (await post(app, "/v1/chat/completions", follow)).json()["choices"][0]["finish_reason"] == "stop"


# --- isolation, routing, errors


async def test_cache_is_isolated_per_model_and_per_key() -> None:
    app = create_app()
    body = {"model": MODEL, "max_tokens": 8, "system": [text(1_100, CC)], "messages": [user(text(1))]}
    await post(app, "/v1/messages", body, {"x-api-key": "k1"})
    other_model = await post(app, "/v1/messages", {**body, "model": "claude-opus-4-8"}, {"x-api-key": "k1"})
    assert split(other_model.json()["usage"]) == (1, 0, 1_100, 0)
    other_key = await post(app, "/v1/messages", body, {"x-api-key": "k2"})
    assert split(other_key.json()["usage"]) == (1, 0, 1_100, 0)
    same = await post(app, "/v1/messages", body, {"x-api-key": "k1"})
    assert split(same.json()["usage"]) == (1, 1_100, 0, 0)


async def test_cache_is_isolated_per_key_however_the_key_is_sent() -> None:
    # One key is one organization: x-api-key (curl, proxies) and a Bearer token (the
    # anthropic and openai SDKs) share its cache, and another key does not.
    app = create_app()
    body = {"model": MODEL, "max_tokens": 8, "system": [text(1_100, CC)], "messages": [user(text(1))]}
    await post(app, "/v1/messages", body, {"x-api-key": "k1"})
    bearer = await post(app, "/v1/messages", body, {"authorization": "Bearer k1"})
    assert split(bearer.json()["usage"]) == (1, 1_100, 0, 0)
    other = await post(app, "/v1/messages", body, {"authorization": "Bearer k2"})
    assert split(other.json()["usage"]) == (1, 0, 1_100, 0)


def test_profile_selection() -> None:
    assert select_profile("/v1/messages").name == "anthropic"
    assert select_profile("/apps/anthropic/v1/messages").name == "dashscope"
    assert select_profile("/v1/messages", "ws-1.ap-southeast-1.maas.aliyuncs.com").name == "dashscope"
    assert select_profile("/compatible-mode/v1/chat/completions").name == "dashscope"
    assert select_profile("/api/v1/services/aigc/text-generation/generation").name == "dashscope"
    assert select_profile("/v1/chat/completions").name == "openai"
    assert DASHSCOPE.max_breakpoints == 4


async def test_profile_can_be_forced() -> None:
    app = create_app(profile="dashscope")
    markers = [text(10, CC) for _ in range(5)]
    assert (
        await post(app, "/v1/messages", {"model": MODEL, "max_tokens": 8, "messages": [user(*markers)]})
    ).status_code == 200
    strict = await post(
        create_app(),
        "/apps/anthropic/v1/messages",
        {"model": MODEL, "max_tokens": 8, "messages": [user(*markers)]},
        {"x-emulator-profile": "anthropic"},
    )
    assert strict.status_code == 400


async def test_unknown_path_and_bad_json() -> None:
    app = create_app()
    assert (await post(app, "/v1/unknown", {})).status_code == 404
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://emulator.test") as client:
        bad = await client.post("/v1/chat/completions", content=b"{nope")
        assert bad.status_code == 400
        assert bad.json()["error"]["type"] == "invalid_request_error"
        native = await client.post(
            "/api/v1/services/aigc/text-generation/generation", json={"model": "qwen-plus"}
        )
        assert native.status_code == 400
        assert native.json()["code"] == "InvalidParameter"
        assert (await client.get("/healthz")).json() == {"status": "ok"}


async def test_max_tokens_zero_prewarms() -> None:
    app = create_app()
    body = {"max_tokens": 0, "system": [text(1_100, CC)], "messages": [user(text(1))]}
    result = await messages(app, body)
    assert result["content"] == []
    assert result["stop_reason"] == "max_tokens"
    assert await usage_of(app, {**body, "max_tokens": 8}) == (1, 1_100, 0, 0)


# -- DashScope implicit cache (research B.1, B.6, Q7) ---------------------------------------

COMPAT = "/compatible-mode/v1/chat/completions"
NATIVE = "/api/v1/services/aigc/text-generation/generation"


def _compat(model: str, content: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}]}


async def test_dashscope_implicit_cache_reads_an_unmarked_repeat_without_a_write() -> None:
    app = create_app(clock=ManualClock())
    body = _compat("qwen-plus", words(300))
    first = (await post(app, COMPAT, body)).json()["usage"]
    second = (await post(app, COMPAT, body)).json()["usage"]
    assert first["prompt_tokens_details"] == {"cached_tokens": 0}
    # A hit is cached_tokens alone: no creation count, no cache_type (the doc's implicit example).
    assert second["prompt_tokens_details"] == {"cached_tokens": 300}
    assert second["prompt_tokens"] == 300
    native = {"model": "qwen-plus", "input": {"messages": [{"role": "user", "content": words(300)}]}}
    await post(app, NATIVE, native)
    details = (await post(app, NATIVE, native)).json()["usage"]["prompt_tokens_details"]
    assert details == {"cached_tokens": 300}


async def test_dashscope_implicit_cache_reads_the_beginning_two_prompts_share() -> None:
    """The doc: "ABCD" cached, a request for "ABE" may hit "AB" (not only a whole earlier prompt)."""
    app = create_app(clock=ManualClock())

    def chat(question: str) -> dict[str, Any]:
        return {
            "model": "qwen-plus",
            "messages": [{"role": "system", "content": words(1_000)}, {"role": "user", "content": question}],
        }

    await post(app, COMPAT, chat("first " * 40))
    usage = (await post(app, COMPAT, chat("second " * 40))).json()["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 1_000}


async def test_dashscope_implicit_read_keeps_the_shorter_prefixes_alive() -> None:
    """A read of "ABC" uses the cached blocks of "A" and "AB" too: a chat that goes on for
    longer than the TTL, each turn reading the one before, keeps its system prompt cached
    for a new chat that starts under it."""
    clock = ManualClock()
    app = create_app(clock=clock)
    system = {"role": "system", "content": words(1_000)}
    chat: list[dict[str, Any]] = [system]
    for turn in range(5):
        chat.append({"role": "user", "content": f"turn{turn} " * 60})
        await post(app, COMPAT, {"model": "qwen-plus", "messages": chat})
        chat.append({"role": "assistant", "content": f"reply{turn} " * 20})
        clock.advance(120)  # ten minutes in all: past the TTL of the first write
    fresh = {"model": "qwen-plus", "messages": [system, {"role": "user", "content": "new " * 60}]}
    usage = (await post(app, COMPAT, fresh)).json()["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 1_000}


async def test_dashscope_implicit_cache_is_best_effort_at_the_rate_configured() -> None:
    """Implicit hits are "not guaranteed" (research B.6): ``implicit_hit_rate`` draws which
    unmarked requests find what is cached, from a seeded generator (the same on every run);
    a marked request's explicit read is deterministic whatever the rate."""

    async def reads(rate: float, seed: int) -> list[int]:
        app = create_app(clock=ManualClock(), implicit_hit_rate=rate, seed=seed)
        body = _compat("qwen-plus", words(1_000))
        found = []
        for _ in range(40):
            usage = (await post(app, COMPAT, body)).json()["usage"]
            found.append(usage["prompt_tokens_details"]["cached_tokens"])
        marked = _compat("qwen-plus", [text(1_200, CC)])
        await post(app, COMPAT, marked)
        explicit = (await post(app, COMPAT, marked)).json()["usage"]["prompt_tokens_details"]
        assert explicit["cached_tokens"] == 1_200
        return found[1:]

    assert await reads(1.0, 0) == [1_000] * 39
    assert await reads(0.0, 0) == [0] * 39
    hits = await reads(0.3, 5)
    assert set(hits) == {0, 1_000}
    assert 5 <= hits.count(1_000) <= 20
    assert hits == await reads(0.3, 5)


@pytest.mark.parametrize(
    ("model", "tokens"),
    [
        ("qwen-plus", 255),  # below the implicit minimum of 256
        ("qwen-plus-2025-01-25", 300),  # snapshots are not supported
        ("qwen-plus-latest", 300),
        ("some-other-model", 300),
    ],
)
async def test_dashscope_implicit_cache_minimum_and_models(model: str, tokens: int) -> None:
    app = create_app(clock=ManualClock())
    body = _compat(model, words(tokens))
    await post(app, COMPAT, body)
    assert (await post(app, COMPAT, body)).json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


@pytest.mark.parametrize("model", ["qwen-turbo", "qwen-max", "qwen-plus-2025-01-25"])
async def test_dashscope_markers_on_a_model_without_the_explicit_cache_do_nothing(model: str) -> None:
    """Only the models of the docs' list have the explicit cache (research B.2); another
    model's markers write nothing, and still keep the request off the implicit cache."""
    app = create_app(clock=ManualClock())
    marked = _compat(model, [text(1_200, CC)])
    for _ in range(2):
        details = (await post(app, COMPAT, marked)).json()["usage"]["prompt_tokens_details"]
        assert details["cached_tokens"] == 0
        assert details.get("cache_creation_input_tokens", 0) == 0
    supported = _compat("qwen-plus", [text(1_200, CC)])
    await post(app, COMPAT, supported)
    assert (await post(app, COMPAT, supported)).json()["usage"]["prompt_tokens_details"][
        "cached_tokens"
    ] == 1_200


async def test_dashscope_marked_requests_use_the_explicit_cache_only() -> None:
    """Explicit and implicit are exclusive per request, and separate caches."""
    app = create_app(clock=ManualClock())
    await post(app, COMPAT, _compat("qwen-plus", words(1_200)))  # implicit write
    marked = _compat("qwen-plus", [text(1_200, CC)])
    usage = (await post(app, COMPAT, marked)).json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage["prompt_tokens_details"]["cache_creation_input_tokens"] == 1_200
    assert usage["prompt_tokens_details"]["cache_type"] == "ephemeral"
    # The Anthropic-compatible endpoint has no implicit cache here (none is documented).
    messages = {"model": "qwen-plus", "max_tokens": 8, "messages": [{"role": "user", "content": words(300)}]}
    await post(app, "/apps/anthropic/v1/messages", messages)
    again = (await post(app, "/apps/anthropic/v1/messages", messages)).json()["usage"]
    assert again["cache_read_input_tokens"] == 0


def test_expired_entries_are_dropped_as_new_ones_are_written() -> None:
    # A quiet store holds about what is alive, not max_entries of expired entries.
    clock = ManualClock()
    store = CacheStore(clock)
    for i in range(40):
        prompt = Prompt(MODEL, [Position("system", b"old%d" % i, 2_000, marker=CC)])
        store.begin(
            prompt, resolve_breakpoints(prompt, None, ANTHROPIC), profile=ANTHROPIC, min_tokens=1_024
        ).commit()
    clock.advance(301.0)  # past every 5-minute TTL
    for i in range(10):
        prompt = Prompt(MODEL, [Position("system", b"new%d" % i, 2_000, marker=CC)])
        store.begin(
            prompt, resolve_breakpoints(prompt, None, ANTHROPIC), profile=ANTHROPIC, min_tokens=1_024
        ).commit()
    assert len(store) == 10
    assert len(store._entries) == 10


@pytest.mark.parametrize(
    ("path", "readable_mid_stream"),
    [("/v1/messages", True), ("/apps/anthropic/v1/messages", False)],
    ids=["anthropic", "dashscope"],
)
def test_a_streams_write_is_readable_from_its_first_event_on_anthropic_and_its_end_on_dashscope(
    path: str, readable_mid_stream: bool
) -> None:
    # Anthropic: a write is readable "after the first response begins" (research A.3);
    # DashScope: the cache is created after the model has responded (B.2).
    from cachewatch.emulator import run_in_thread

    model = MODEL if path == "/v1/messages" else "qwen-plus"
    body = {"model": model, "max_tokens": 600, "system": [text(2_000, CC)], "messages": [user(text(1))]}
    with run_in_thread(create_app(chunk_delay=0.1)) as url, httpx.Client(base_url=url, timeout=30) as client:
        with client.stream("POST", path, json={**body, "stream": True}) as first:
            lines = first.iter_lines()
            next(lines)  # the stream has begun and goes on (0.1 s a frame)
            mid = client.post(path, json=body).json()["usage"]
            for _ in lines:
                pass
        after = client.post(path, json=body).json()["usage"]
    assert (mid["cache_read_input_tokens"] == 2_000) == readable_mid_stream
    assert after["cache_read_input_tokens"] == 2_000
