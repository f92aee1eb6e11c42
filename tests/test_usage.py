"""UsageAccumulator / partition_usage: one hand-written case per provider rule and deviation.

Categories: partition per provider shape (SPEC section 4), Anthropic stream overwrite
and the DashScope/Kimi/MiniMax deviation, Chat Completions / Responses / DashScope
native streams, envelopes, error bodies, ids and finish reasons, clamping.
"""

from __future__ import annotations

from typing import Any

from cachewatch.accounting._records import TokenUsage
from cachewatch.observing._usage import UsageAccumulator, partition_usage, unwrap_envelope


def usage_of(api: str, body: Any) -> TokenUsage | None:
    acc = UsageAccumulator(api)
    acc.add_json(body)
    return acc.result().usage


def stream(api: str, *events: tuple[str | None, Any]) -> UsageAccumulator:
    acc = UsageAccumulator(api)
    for name, data in events:
        acc.add_event(name, data)
    return acc


# -- partition per provider shape -----------------------------------------------------


def test_anthropic_disjoint_with_ttl_breakdown() -> None:
    u = partition_usage(
        {
            "input_tokens": 10,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 30,
            "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20},
            "output_tokens": 5,
        }
    )
    assert u == TokenUsage(input=10, cache_read=100, cache_write_5m=10, cache_write_1h=20, output=5)


def test_anthropic_breakdown_not_summing_means_all_5m() -> None:
    u = partition_usage(
        {
            "input_tokens": 1,
            "cache_creation_input_tokens": 30,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": 1,
        }
    )
    assert u is not None
    assert (u.cache_write_5m, u.cache_write_1h) == (30, 0)


def test_openai_chat_cached_is_subset_and_reasoning_inside_output() -> None:
    u = usage_of(
        "chat_completions",
        {
            "usage": {
                "prompt_tokens": 2006,
                "completion_tokens": 300,
                "prompt_tokens_details": {"cached_tokens": 1920},
                "completion_tokens_details": {"reasoning_tokens": 256},
            }
        },
    )
    assert u == TokenUsage(input=86, cache_read=1920, output=300, reasoning=256)


def test_openai_cache_write_tokens() -> None:
    u = partition_usage(
        {"prompt_tokens": 2649, "prompt_tokens_details": {"cache_write_tokens": 79, "cached_tokens": 2569}}
    )
    assert u == TokenUsage(input=1, cache_read=2569, cache_write_5m=79)


def test_deepseek_hit_miss() -> None:
    u = partition_usage(
        {
            "prompt_tokens": 976,
            "prompt_cache_hit_tokens": 896,
            "prompt_cache_miss_tokens": 80,
            "prompt_tokens_details": {"cached_tokens": 896},
            "completion_tokens": 61,
        }
    )
    assert u == TokenUsage(input=80, cache_read=896, output=61)


def test_mistral_num_cached_tokens() -> None:
    assert partition_usage({"prompt_tokens": 68, "num_cached_tokens": 60, "completion_tokens": 6}) == (
        TokenUsage(input=8, cache_read=60, output=6)
    )


def test_dashscope_compatible_creation_and_nested_5m() -> None:
    u = partition_usage(
        {
            "prompt_tokens": 18628,
            "completion_tokens": 445,
            "prompt_tokens_details": {
                "cached_tokens": 18000,
                "cache_creation_input_tokens": 600,
                "cache_creation": {"ephemeral_5m_input_tokens": 600},
                "cache_type": "ephemeral",
            },
        }
    )
    assert u == TokenUsage(input=28, cache_read=18000, cache_write_5m=600, output=445)


def test_litellm_chat_usage_prompt_total_with_top_level_anthropic_counters() -> None:
    # LiteLLM's documented Chat usage (docs.litellm.ai/docs/completion/prompt_caching):
    # ``prompt_tokens`` is every prompt token, hits included, ``prompt_tokens_details.cached_tokens``
    # the hits, and Anthropic's ``cache_creation_input_tokens`` (and ``cache_read_input_tokens``)
    # sit at the top level. There is no ``input_tokens``: the uncached rest is not 0.
    u = usage_of(
        "chat_completions",
        {
            "usage": {
                "prompt_tokens": 2006,
                "completion_tokens": 300,
                "total_tokens": 2306,
                "prompt_tokens_details": {"cached_tokens": 1920},
                "completion_tokens_details": {"reasoning_tokens": 0},
                "cache_creation_input_tokens": 0,
            }
        },
    )
    assert u == TokenUsage(input=86, cache_read=1920, output=300, reasoning=0)
    # A write, and the read given only at the top level.
    u = partition_usage(
        {
            "prompt_tokens": 1510,
            "completion_tokens": 5,
            "cache_creation_input_tokens": 500,
            "cache_read_input_tokens": 1000,
        }
    )
    assert u == TokenUsage(input=10, cache_read=1000, cache_write_5m=500, output=5)


def test_responses_cached_and_write() -> None:
    u = usage_of(
        "responses",
        {
            "object": "response",
            "status": "completed",
            "usage": {
                "input_tokens": 4020,
                "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 4000},
                "output_tokens": 5,
                "output_tokens_details": {"reasoning_tokens": 3},
            },
        },
    )
    assert u == TokenUsage(input=12, cache_read=8, cache_write_5m=4000, output=5, reasoning=3)


def test_dashscope_responses_session_cache_writes_in_x_details() -> None:
    # DashScope's Responses API (session cache) reports the hits in
    # input_tokens_details.cached_tokens and the write only in
    # usage.x_details[].prompt_tokens_details (research B.3): input_tokens is the total.
    acc = UsageAccumulator("responses")
    acc.add_json(
        {
            "object": "response",
            "status": "completed",
            "model": "qwen3-max",
            "usage": {
                "input_tokens": 5000,
                "input_tokens_details": {"cached_tokens": 4000},
                "output_tokens": 20,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 5020,
                "x_details": [
                    {
                        "x_billing_type": "response_api",
                        "prompt_tokens_details": {
                            "cached_tokens": 4000,
                            "cache_creation_input_tokens": 900,
                            "cache_creation": {"ephemeral_5m_input_tokens": 900},
                            "cache_type": "ephemeral",
                        },
                    }
                ],
            },
        }
    )
    r = acc.result()
    assert r.usage == TokenUsage(input=100, cache_read=4000, cache_write_5m=900, output=20, reasoning=0)
    assert r.cache_type == "ephemeral"
    # Only x_details says anything about the cache: it gives the hits too.
    u = partition_usage(
        {
            "input_tokens": 120,
            "output_tokens": 40,
            "x_details": [
                {"prompt_tokens_details": {"cached_tokens": 60, "cache_creation_input_tokens": 20}},
            ],
        }
    )
    assert u == TokenUsage(input=40, cache_read=60, cache_write_5m=20, output=40)


def test_dashscope_native_json() -> None:
    acc = UsageAccumulator("dashscope_generation")
    acc.add_json(
        {
            "output": {"choices": [{"finish_reason": "stop", "message": {"content": "hi"}}]},
            "usage": {
                "input_tokens": 3019,
                "output_tokens": 101,
                "prompt_tokens_details": {"cached_tokens": 2048, "cache_creation_input_tokens": 900},
            },
            "request_id": "req-1",
        }
    )
    r = acc.result()
    assert r.usage == TokenUsage(input=71, cache_read=2048, cache_write_5m=900, output=101)
    assert r.response_id == "req-1"
    assert r.finish_reasons == ("stop",)


def test_dashscope_native_vl_top_level_cached_tokens() -> None:
    assert usage_of(
        "dashscope_generation",
        {
            "output": {"finish_reason": "stop"},
            "usage": {"input_tokens": 500, "output_tokens": 9, "cached_tokens": 400},
        },
    ) == TokenUsage(input=100, cache_read=400, output=9)


def test_groq_usage_in_x_groq() -> None:
    acc = stream(
        "chat_completions",
        (
            None,
            {
                "id": "c1",
                "model": "llama",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "x_groq": {"id": "req", "usage": {"prompt_tokens": 18, "completion_tokens": 73}},
            },
        ),
    )
    assert acc.result().usage == TokenUsage(input=18, output=73)


def test_overlapping_counters_clamped_reads_win() -> None:
    # OpenRouter/Gemini corpus quirk: cached 2161 and cache_write 2161 of a 2168 prompt.
    u = partition_usage(
        {"prompt_tokens": 2168, "prompt_tokens_details": {"cache_write_tokens": 2161, "cached_tokens": 2161}}
    )
    assert u == TokenUsage(input=7, cache_read=2161)


def test_never_negative_and_invariant_kept() -> None:
    u = partition_usage(
        {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 50}, "completion_tokens": -3}
    )
    assert u == TokenUsage(input=0, cache_read=10, output=0)
    u = partition_usage({"input_tokens": -5, "cache_read_input_tokens": 7, "output_tokens": 2})
    assert u == TokenUsage(input=0, cache_read=7, output=2)
    # reasoning above output (OpenRouter/MiniMax corpus: 11 of 10) is clamped too
    u = partition_usage(
        {"prompt_tokens": 1, "completion_tokens": 10, "completion_tokens_details": {"reasoning_tokens": 11}}
    )
    assert u is not None
    assert u.reasoning == 10


def test_junk_values_ignored() -> None:
    assert partition_usage({"prompt_tokens": "12", "completion_tokens": True}) is None
    assert partition_usage({"foo": 1}) is None
    assert partition_usage(None) is None


# -- Anthropic streams ------------------------------------------------------------------

START = {
    "type": "message_start",
    "message": {
        "id": "msg_1",
        "model": "claude-x",
        "usage": {
            "input_tokens": 5,
            "cache_read_input_tokens": 2000,
            "cache_creation_input_tokens": 300,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 300},
            "output_tokens": 1,
        },
    },
}


def test_anthropic_stream_delta_overwrites_never_sums() -> None:
    acc = stream(
        "messages",
        ("message_start", START),
        ("ping", {"type": "ping"}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 40}},
        ),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 50, "input_tokens": None}}),
        ("message_stop", {"type": "message_stop"}),
    )
    r = acc.result()
    assert r.usage == TokenUsage(input=5, cache_read=2000, cache_write_1h=300, output=50)
    assert (r.response_id, r.response_model, r.finish_reasons, r.complete) == (
        "msg_1",
        "claude-x",
        ("end_turn",),
        True,
    )


def test_litellm_chat_usage_1h_writes_in_its_cache_creation_token_details() -> None:
    # LiteLLM's Chat usage of an Anthropic 1h write (what its AnthropicConfig.calculate_usage
    # builds): the 5m/1h split is under ``prompt_tokens_details.cache_creation_token_details``.
    u = usage_of(
        "chat_completions",
        {
            "usage": {
                "prompt_tokens": 8012,
                "completion_tokens": 40,
                "prompt_tokens_details": {
                    "cache_write_tokens": 3000,
                    "cached_tokens": 5000,
                    "cache_creation_tokens": 3000,
                    "cache_creation_token_details": {
                        "ephemeral_5m_input_tokens": 0,
                        "ephemeral_1h_input_tokens": 3000,
                    },
                },
                "cache_creation_input_tokens": 3000,
                "cache_read_input_tokens": 5000,
            }
        },
    )
    assert u == TokenUsage(input=12, cache_read=5000, cache_write_1h=3000, output=40)


def test_dashscope_anthropic_stream_split_only_in_delta() -> None:
    acc = stream(
        "messages",
        (
            "message_start",
            {
                "type": "message_start",
                "message": {"id": "m", "usage": {"input_tokens": 8834, "output_tokens": 0}},
            },
        ),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {
                    "input_tokens": 18,
                    "cache_read_input_tokens": 8831,
                    "cache_creation_input_tokens": 0,
                    "cache_creation": {"ephemeral_5m_input_tokens": 0},
                    "output_tokens": 77,
                },
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    )
    assert acc.result().usage == TokenUsage(input=18, cache_read=8831, output=77)


def test_dashscope_anthropic_stream_split_without_input_tokens_in_the_delta() -> None:
    # The frames another client library quotes from DashScope's Anthropic endpoint (research
    # F): message_start counts the whole prompt and no cache, message_delta the read with no
    # ``input_tokens``. The read is part of the whole prompt, not on top of it.
    acc = stream(
        "messages",
        (
            "message_start",
            {
                "type": "message_start",
                "message": {"id": "m", "usage": {"input_tokens": 3602, "output_tokens": 0}},
            },
        ),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 3500,
                    "prompt_tokens_details": {"cached_tokens": 3500},
                    "output_tokens": 878,
                },
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    )
    assert acc.result().usage == TokenUsage(input=102, cache_read=3500, output=878)
    # A write split off the same way; a read above the whole prompt leaves no uncached part.
    for split, expected in (
        ({"cache_creation_input_tokens": 3000}, TokenUsage(input=602, cache_write_5m=3000, output=5)),
        ({"cache_read_input_tokens": 3604}, TokenUsage(input=0, cache_read=3604, output=5)),
    ):
        acc = stream(
            "messages",
            ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 3602}}}),
            ("message_delta", {"type": "message_delta", "usage": {**split, "output_tokens": 5}}),
        )
        assert acc.result().usage == expected
    # A cache-aware message_start keeps its uncached count when the delta repeats the split.
    acc = stream(
        "messages",
        (
            "message_start",
            {
                "type": "message_start",
                "message": {"usage": {"input_tokens": 12, "cache_read_input_tokens": 5000}},
            },
        ),
        (
            "message_delta",
            {"type": "message_delta", "usage": {"cache_read_input_tokens": 5000, "output_tokens": 9}},
        ),
    )
    assert acc.result().usage == TokenUsage(input=12, cache_read=5000, output=9)


def test_minimax_zero_start_and_kimi_explicit_zero_cache_read() -> None:
    for start_usage in (
        {"input_tokens": 0, "output_tokens": 0},
        {"input_tokens": 900, "cache_read_input_tokens": 0},
    ):
        acc = stream(
            "messages",
            ("message_start", {"type": "message_start", "message": {"usage": start_usage}}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "usage": {"input_tokens": 100, "cache_read_input_tokens": 800, "output_tokens": 3},
                },
            ),
        )
        assert acc.result().usage == TokenUsage(input=100, cache_read=800, output=3)


def test_anthropic_final_message_delta_completes_the_stream_without_message_stop() -> None:
    """Stop reason and usage in message_delta: nothing billed is left to come (LiteLLM stops here)."""
    final = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}}
    r = stream("messages", ("message_start", START), ("message_delta", final)).result()
    assert r.complete
    assert r.finish_reasons == ("end_turn",)
    assert r.usage is not None
    assert r.usage.output == 7
    # A delta without a stop reason, or without usage, is not the final one.
    for partial in (
        {"type": "message_delta", "delta": {"stop_reason": None}, "usage": {"output_tokens": 7}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}},
    ):
        assert not stream("messages", ("message_start", START), ("message_delta", partial)).result().complete


def test_anthropic_error_event_mid_stream() -> None:
    acc = stream(
        "messages",
        ("message_start", START),
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    )
    r = acc.result()
    assert r.error_type == "overloaded_error"
    assert not r.complete
    assert r.usage is not None
    assert r.usage.cache_read == 2000


def test_unknown_events_and_missing_usage_are_normal() -> None:
    acc = stream(
        "messages",
        ("message_start", {"type": "message_start", "message": {"model": "m"}}),
        ("brand_new_event", {"type": "brand_new_event", "usage": "weird"}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}}),
        ("message_stop", {"type": "message_stop"}),
    )
    r = acc.result()
    assert r.usage is None
    assert r.response_id is None
    assert r.complete
    assert r.finish_reasons == ("max_tokens",)


# -- Chat Completions / Responses / DashScope native streams -------------------------------


def test_chat_stream_usage_chunk_and_done() -> None:
    acc = stream(
        "chat_completions",
        (
            None,
            {
                "id": "c",
                "model": "gpt-4o",
                "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
                "usage": None,
            },
        ),
        (
            None,
            {
                "id": "c",
                "model": "gpt-4o",
                "choices": [{"index": 1, "delta": {}, "finish_reason": "length"}],
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
                "usage": {"prompt_tokens": 10, "completion_tokens": 2},
            },
        ),
    )
    assert not acc.result().complete
    acc.mark_complete()  # data: [DONE]
    r = acc.result()
    assert r.usage == TokenUsage(input=10, output=2)
    assert (r.response_id, r.response_model, r.finish_reasons, r.complete) == (
        "c",
        "gpt-4o",
        ("stop", "length"),
        True,
    )


def test_chat_stream_error_and_usage_on_the_same_chunk() -> None:
    acc = stream(
        "chat_completions",
        (
            None,
            {
                "error": {"code": 400, "message": "Token limit reached"},
                "choices": [],
                "usage": {"prompt_tokens": 43, "completion_tokens": 10},
            },
        ),
    )
    r = acc.result()
    assert (r.error_type, r.usage) == ("400", TokenUsage(input=43, output=10))


def test_chat_stream_error_event() -> None:
    acc = stream(
        "chat_completions",
        ("error", {"error": {"message": "x", "type": "invalid_request_error", "code": "tool_use_failed"}}),
    )
    assert acc.result().error_type == "invalid_request_error"


def test_responses_stream_terminal_events() -> None:
    for kind, status, reason in (
        ("response.completed", "completed", "completed"),
        ("response.incomplete", "incomplete", "max_output_tokens"),
        ("response.failed", "failed", "failed"),
    ):
        response: dict[str, Any] = {
            "id": "resp_1",
            "model": "gpt-5",
            "status": status,
            "usage": {"input_tokens": 30, "input_tokens_details": {"cached_tokens": 20}, "output_tokens": 4},
        }
        if kind == "response.incomplete":
            response["incomplete_details"] = {"reason": "max_output_tokens"}
        if kind == "response.failed":
            response["error"] = {"code": "server_error", "message": "boom"}
        acc = stream(
            "responses",
            (
                "response.created",
                {"type": "response.created", "response": {"id": "resp_1", "model": "gpt-5", "usage": None}},
            ),
            ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "hi"}),
            # corpus quirk: event names shifted against the data type; the type wins
            ("response.output_item.done", {"type": kind, "response": response}),
        )
        r = acc.result()
        assert r.usage == TokenUsage(input=10, cache_read=20, output=4)
        assert r.complete
        assert r.finish_reasons == (reason,)
        assert r.error_type == ("server_error" if kind == "response.failed" else None)


def test_responses_error_event() -> None:
    acc = stream(
        "responses", ("error", {"type": "error", "code": "rate_limit_exceeded", "message": "slow down"})
    )
    assert acc.result().error_type == "rate_limit_exceeded"


def test_dashscope_native_stream_cumulative_usage_overwrites() -> None:
    def event(n: int, reason: str) -> tuple[str, Any]:
        return (
            "result",
            {
                "output": {"choices": [{"finish_reason": reason, "message": {"content": "x"}}]},
                "usage": {
                    "input_tokens": 1000,
                    "output_tokens": n,
                    "prompt_tokens_details": {"cached_tokens": 512},
                },
                "request_id": "r",
            },
        )

    acc = stream("dashscope_generation", event(1, "null"), event(5, "null"))
    assert not acc.result().complete
    acc.add_event(*event(9, "stop"))
    r = acc.result()
    assert r.usage == TokenUsage(input=488, cache_read=512, output=9)
    assert r.complete
    assert r.finish_reasons == ("stop",)


def test_dashscope_native_error() -> None:
    acc = UsageAccumulator("dashscope_generation")
    acc.add_json({"code": "InvalidParameter", "message": "bad", "request_id": "r"})
    r = acc.result()
    assert (r.error_type, r.usage, r.response_id) == ("InvalidParameter", None, "r")


def test_dashscope_native_error_code_that_is_not_an_identifier_is_not_kept() -> None:
    # The error type goes to the log event and the span as it is: a relay's free-text
    # ``code`` (which can quote the prompt, or forge a log line) must not, as for the other
    # error shapes. DashScope's own codes (``Throttling.RateQuota``...) are kept.
    free_text = "Input may contain inappropriate content: SECRET prompt\nforged=line"
    acc = UsageAccumulator("dashscope_generation")
    acc.add_json({"code": free_text, "message": "m", "request_id": "r"})
    assert acc.result().error_type == "error"
    acc = UsageAccumulator("dashscope_generation")
    acc.add_event("error", {"code": "SECRET " * 20, "message": "m", "request_id": "r"})
    assert acc.result().error_type == "error"
    acc = UsageAccumulator("dashscope_generation")
    acc.add_event("error", {"code": "Throttling.RateQuota", "message": "m", "request_id": "r"})
    assert acc.result().error_type == "Throttling.RateQuota"


# -- envelopes and errors -----------------------------------------------------------------


def test_envelopes_unwrapped_for_json_and_sse() -> None:
    inner = {
        "id": "msg",
        "type": "message",
        "model": "m",
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 4},
    }
    for envelope in ({"code": 200, "data": inner}, {"success": True, "data": inner}):
        acc = UsageAccumulator("messages")
        acc.add_json(envelope)
        assert acc.result().usage == TokenUsage(input=3, output=4)
    acc = stream(
        "chat_completions",
        (
            None,
            {
                "success": True,
                "data": {"id": "c", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}},
            },
        ),
    )
    assert acc.result().usage == TokenUsage(input=5, output=1)


def test_envelope_rule_leaves_real_bodies_alone() -> None:
    body = {"type": "message", "data": {"usage": {"input_tokens": 1}}, "usage": {"input_tokens": 9}}
    assert unwrap_envelope(body) is body
    listing = {"object": "list", "data": [1, 2]}
    assert unwrap_envelope(listing) is listing


def test_error_bodies_both_shapes() -> None:
    for body, expected in (
        ({"type": "error", "error": {"type": "overloaded_error", "message": "x"}}, "overloaded_error"),
        (
            {"error": {"message": "x", "type": "invalid_request_error", "code": "model_not_found"}},
            "invalid_request_error",
        ),
        ({"error": {"message": "x", "type": None, "code": "content_filter"}}, "content_filter"),
        ({"error": {"code": 429, "message": "rate limited"}}, "429"),
    ):
        for api in ("messages", "chat_completions", "responses"):
            acc = UsageAccumulator(api)
            acc.add_json(body)
            r = acc.result()
            assert (r.error_type, r.usage, r.response_id) == (expected, None, None), (api, body)


def test_responses_null_error_field_is_not_an_error() -> None:
    acc = UsageAccumulator("responses")
    acc.add_json(
        {
            "object": "response",
            "error": None,
            "status": "completed",
            "usage": {"input_tokens": 1, "output_tokens": 1},
        }
    )
    assert acc.result().error_type is None


def test_no_text_is_kept() -> None:
    acc = UsageAccumulator("chat_completions")
    acc.add_json(
        {
            "id": "c",
            "model": "m",
            "choices": [{"message": {"content": "SECRET"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "note": "SECRET2"},
        }
    )
    assert "SECRET" not in repr(acc.result())


def _anthropic_reference(u: dict[str, Any]) -> TokenUsage | None:
    """SPEC section 4 for an Anthropic usage object, written out plainly."""

    def count(value: object) -> int:
        if type(value) is int:
            return max(value, 0)
        if type(value) is float and value == value and abs(value) != float("inf"):
            return max(int(value), 0)
        return 0

    write = count(u.get("cache_creation_input_tokens"))
    fresh = u.get("input_tokens")
    counted = type(fresh) is int or (type(fresh) is float and fresh == fresh and abs(fresh) != float("inf"))
    if not counted and not write and not count(u.get("cache_read_input_tokens")):
        return None  # no prompt counted: unreported
    m5, h1 = write, 0
    detail = u.get("cache_creation")
    if write and isinstance(detail, dict):
        a, b = count(detail.get("ephemeral_5m_input_tokens")), count(detail.get("ephemeral_1h_input_tokens"))
        if a + b == write:
            m5, h1 = a, b
    return TokenUsage(
        input=count(u.get("input_tokens")),
        cache_read=count(u.get("cache_read_input_tokens")),
        cache_write_5m=m5,
        cache_write_1h=h1,
        output=count(u.get("output_tokens")),
    )


def test_anthropic_partition_is_the_same_on_its_fast_path_and_off_it() -> None:
    # Plain counts take a fast path; negative, float, null or missing ones the general one.
    values: list[object] = [0, 7, 3000, -4, 2.9, None, "12", True]
    breakdowns: list[object] = [
        None,
        "x",
        {"ephemeral_5m_input_tokens": 3000, "ephemeral_1h_input_tokens": 0},
        {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
        {"ephemeral_5m_input_tokens": 1, "ephemeral_1h_input_tokens": 1},
        {"ephemeral_5m_input_tokens": -5, "ephemeral_1h_input_tokens": 3005},
        {"ephemeral_5m_input_tokens": 3000.0, "ephemeral_1h_input_tokens": 0},
        {"ephemeral_1h_input_tokens": 3000},
    ]
    for fresh in values:
        for read in values:
            for output in values:
                for write in (3000, 0, None, -1):
                    for breakdown in breakdowns:
                        u: dict[str, Any] = {
                            "input_tokens": fresh,
                            "cache_read_input_tokens": read,
                            "cache_creation_input_tokens": write,
                            "output_tokens": output,
                        }
                        if breakdown is not None:
                            u["cache_creation"] = breakdown
                        assert partition_usage(u) == _anthropic_reference(u), u


def test_a_usage_that_counts_no_prompt_is_unreported_not_a_zero_input() -> None:
    # A relay's output-only usage: the prompt side is not reported, and an input of 0
    # would hide that (cost from the output alone, a 0% hit ratio over nothing).
    assert partition_usage({"output_tokens": 5}) is None
    assert partition_usage({"completion_tokens": 5}) is None
    assert usage_of("chat_completions", {"choices": [], "usage": {"completion_tokens": 5}}) is None
    acc = stream(
        "messages",
        ("message_start", {"type": "message_start", "message": {"id": "m", "model": "x"}}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}},
        ),
        ("message_stop", {"type": "message_stop"}),
    )
    assert acc.result().usage is None
    # With the prompt counted, as every provider does, nothing changes.
    assert partition_usage({"input_tokens": 10, "output_tokens": 5}) == TokenUsage(10, 0, 0, 0, 5, None)


def test_response_strings_that_are_not_identifiers_are_not_kept() -> None:
    # The response model, id and finish reasons go to the log event and the span as they
    # are: a relay's value with a line break forges log lines in a text log, and a huge
    # one (or thousands of choices) makes every event as big as the body.
    acc = UsageAccumulator("chat_completions")
    choices: list[dict[str, Any]] = [{"index": i, "finish_reason": "stop"} for i in range(5_000)]
    choices.append({"index": 9_999, "finish_reason": "stop\nlevel=error event=forged"})
    acc.add_json(
        {
            "id": "chatcmpl-" + "x" * 100_000,
            "model": "qwen-plus\nlevel=error event=forged",
            "choices": choices,
            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        }
    )
    parsed = acc.result()
    assert parsed.usage is not None
    assert parsed.usage.output == 2
    assert parsed.response_id is None
    assert parsed.response_model is None
    assert 0 < len(parsed.finish_reasons) <= 128
    assert set(parsed.finish_reasons) == {"stop"}


def test_anthropic_counters_all_null_are_unreported_not_a_zero_prompt() -> None:
    # Relays that serialise every optional field write ``null`` for counts they do not
    # have. An Anthropic usage whose prompt counters are all null (or absent) counts no
    # prompt: reporting a 0-token prompt would price it at 0, show a 0% hit ratio over
    # nothing and teach the planner's estimator a false 0.
    nulls = {"input_tokens": None, "cache_read_input_tokens": None, "cache_creation_input_tokens": None}
    assert partition_usage({**nulls, "output_tokens": 5}) is None
    assert usage_of("messages", {"type": "message", "usage": {**nulls, "output_tokens": 5}}) is None
    assert partition_usage({"cache_read_input_tokens": 0, "output_tokens": 10}) is None
    # A stream whose message_start has null counters and whose message_delta gives only
    # the output: the merged usage still counts no prompt.
    acc = stream(
        "messages",
        ("message_start", {"type": "message_start", "message": {"usage": {**nulls, "output_tokens": None}}}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}},
        ),
    )
    assert acc.result().usage is None
    # Any prompt counter that counts keeps the usage reported.
    assert partition_usage({**nulls, "input_tokens": 0, "output_tokens": 5}) == TokenUsage(
        0, 0, 0, 0, 5, None
    )
    assert partition_usage({**nulls, "cache_read_input_tokens": 40, "output_tokens": 5}) == TokenUsage(
        0, 40, 0, 0, 5, None
    )


def test_an_error_code_that_echoes_a_key_is_not_kept() -> None:
    # A gateway that answers 401 with the rejected key as its error code: error.type went
    # to the span and the log as it was. Codes are words and short numbers; keys are not.
    for code in (
        "sk-proj-abc123SECRET",
        "sk-ant-api03-x",
        "0123456789abcdef0123456789abcdef",
        "key-Ab12Cd34",
    ):
        assert usage_error(code) == "error", code
    for code in ("invalid_api_key", "DataInspectionFailed", "Throttling.RateQuota", "40001", "http2_error"):
        assert usage_error(code) == code


def usage_error(code: str) -> str | None:
    acc = UsageAccumulator("chat_completions")
    acc.add_json({"error": {"code": code, "message": "Incorrect API key provided"}})
    return acc.result().error_type
