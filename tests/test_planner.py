"""Hand-written planner cases, one or more per rule of SPEC section 6 and per profile.

Categories: untouched bodies (unknown endpoints, automatic caching, non-JSON, invalid
shapes, internal errors); placement (static prefix, tail, top-level automatic, minimum);
budget (caller markers, top-level, reserved slots); valid targets; TTL order; body
preservation (key order, string conversion, formats per profile); stream hygiene;
feedback (calibration, minimal learning). Every planned body also passes the
independent validator.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import orjson
import pytest

from cachewatch.accounting._records import TokenUsage
from cachewatch.planning._learning import Sight, Sighting
from cachewatch.planning._learning_memory import MemoryLearner
from cachewatch.planning._planner import Plan, Planner
from cachewatch.planning._profiles import ProfileRegistry
from validator import validate

LONG = "cache prompt token model request stream usage system tool result " * 120  # ~1,800 tokens
ANTHROPIC = {"api": "messages", "host": "api.anthropic.com", "path": "/v1/messages"}
DASHSCOPE = {"api": "messages", "host": "dashscope.aliyuncs.com", "path": "/apps/anthropic/v1/messages"}
RELAY = {"api": "messages", "host": "relay.example.com", "path": "/v1/messages"}
DS_OPENAI = {
    "api": "chat_completions",
    "host": "dashscope-intl.aliyuncs.com",
    "path": "/compatible-mode/v1/chat/completions",
}
DS_NATIVE = {
    "api": "dashscope_generation",
    "host": "dashscope.aliyuncs.com",
    "path": "/api/v1/services/aigc/text-generation/generation",
}


def plan(body: dict[str, Any], where: dict[str, str] = ANTHROPIC, planner: Planner | None = None) -> Plan:
    planner_given = planner
    planner = planner or Planner()
    raw = orjson.dumps(body)
    result = planner.plan(body=raw, **where)
    assert result.error is None or not result.error.startswith("internal"), result.error
    assert validate(result.profile, raw, result.body) == []
    planner.finished(result)  # the request ended without a response: its claims are released
    if planner_given is None:
        again = Planner().plan(body=raw, **where)
        assert again.body == result.body  # deterministic for the same (empty) history
    return result


def out(result: Plan) -> dict[str, Any]:
    assert result.body is not None
    parsed: dict[str, Any] = orjson.loads(result.body)
    return parsed


def chat(*turns: Any, system: Any = LONG, model: str = "claude-sonnet-4-5", **extra: Any) -> dict[str, Any]:
    roles = ("user", "assistant")
    body: dict[str, Any] = {"model": model, "max_tokens": 64}
    if system is not None:
        body["system"] = system
    body["messages"] = [{"role": roles[i % 2], "content": c} for i, c in enumerate(turns)]
    body.update(extra)
    return body


# -- untouched ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "path", "api"),
    [
        ("api.openai.com", "/v1/chat/completions", "chat_completions"),
        ("api.deepseek.com", "/chat/completions", "chat_completions"),
        ("api.groq.com", "/openai/v1/chat/completions", "chat_completions"),
        ("api.openai.com", "/v1/responses", "responses"),
    ],
)
def test_automatic_and_unknown_endpoints_are_untouched(host: str, path: str, api: str) -> None:
    body = {
        "model": "gpt-5",
        "messages": [{"role": "system", "content": LONG}, {"role": "user", "content": "hi"}],
    }
    result = Planner().plan(api=api, host=host, path=path, body=orjson.dumps(body))
    assert result.body is None
    assert result.placements == ()


@pytest.mark.parametrize("raw", [b"not json", b"[1,2]", b'{"messages": 3}', b'{"messages": [1]}', b""])
def test_non_json_and_invalid_shapes_are_untouched(raw: bytes) -> None:
    result = Planner().plan(body=raw, **ANTHROPIC)
    assert result.body is None
    assert result.error in ("not_json", "invalid_shape")


def test_internal_error_leaves_body_alone() -> None:
    class Boom(ProfileRegistry):
        def match(self, host: str, path: str) -> Any:
            raise RuntimeError("boom")

    result = Planner(registry=Boom()).plan(body=orjson.dumps(chat("hi")), **ANTHROPIC)
    assert result.body is None
    assert result.error == "internal_error"
    assert isinstance(result.fault, RuntimeError)  # a typed value, for the engine to count


# -- placement ------------------------------------------------------------------------------


def test_static_prefix_and_tail_on_first_turn() -> None:
    result = plan(chat([{"type": "text", "text": LONG}]))
    body = out(result)
    assert body["system"] == [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}]
    assert body["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert {(p.reason, p.action) for p in result.placements} == {("static", "inserted"), ("tail", "inserted")}


def test_render_false_makes_the_same_decisions_without_a_body() -> None:
    # The shadow estimate plans so: it needs the decisions, never the bytes.
    raw = orjson.dumps(chat([{"type": "text", "text": LONG}], "Answer.", "And now?"))
    rendered = Planner().plan(body=raw, **ANTHROPIC)
    bare = Planner(render=False).plan(body=raw, **ANTHROPIC)
    assert rendered.body is not None
    assert bare.body is None
    assert bare.placements == rendered.placements
    assert bare.layout is not None
    assert rendered.layout is not None
    assert bare.layout.digests == rendered.layout.digests


def test_top_level_automatic_for_a_string_tail_on_anthropic_only() -> None:
    result = plan(chat("hello " * 10))
    body = out(result)
    assert body["cache_control"] == {"type": "ephemeral"}
    assert list(body)[-1] == "cache_control"
    assert isinstance(body["messages"][0]["content"], str)
    dash = out(plan(chat("hello " * 10), DASHSCOPE))
    assert "cache_control" not in dash
    assert dash["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    never = out(plan(chat("hello " * 10), planner=Planner(automatic="never")))
    assert "cache_control" not in never


def test_tail_skips_thinking_and_empty_blocks() -> None:
    turns = (
        "q1",
        [{"type": "thinking", "thinking": "hmm", "signature": "s"}, {"type": "text", "text": "a1"}],
        [{"type": "text", "text": "question"}, {"type": "text", "text": "  "}, {"type": "text", "text": ""}],
    )
    body = out(plan(chat(*turns)))
    last = body["messages"][2]["content"]
    assert "cache_control" in last[0]
    assert "cache_control" not in last[1]
    assert "cache_control" not in last[2]
    assert "cache_control" not in body["messages"][1]["content"][0]


def test_below_minimum_no_marker() -> None:
    result = plan(chat("hi", system="short"))
    assert result.body is None
    assert all(p.action == "skipped_below_minimum" for p in result.placements)


def test_tools_marked_on_anthropic_when_no_system() -> None:
    tools = [{"name": "f", "description": LONG, "input_schema": {"type": "object"}}]
    body = out(plan(chat("hi", system=None, tools=tools)))
    assert body["tools"][0]["cache_control"] == {"type": "ephemeral"}
    relay = plan(chat("hi", system=None, tools=tools), RELAY)
    assert relay.body is None or "cache_control" not in out(relay)["tools"][0]


def test_nested_tool_result_content_never_marked() -> None:
    turns = (
        "q",
        [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
        [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": LONG}]}],
    )
    body = out(plan(chat(*turns)))
    block = body["messages"][2]["content"][0]
    assert "cache_control" in block
    assert "cache_control" not in block["content"][0]


# -- budget ---------------------------------------------------------------------------------


def marked(text: str, ttl: str | None = None) -> dict[str, Any]:
    cc: dict[str, Any] = {"type": "ephemeral"}
    if ttl:
        cc["ttl"] = ttl
    return {"type": "text", "text": text, "cache_control": cc}


def test_caller_markers_fill_the_budget() -> None:
    turns = (
        [marked("a " * 500), marked("b"), marked("c"), marked("d")],
        "x",
        [{"type": "text", "text": "y"}],
    )
    result = plan(chat(*turns))
    assert result.body is None
    assert sum(p.action == "kept" for p in result.placements) == 4


@pytest.mark.parametrize("container", ["tool_result", "search_result", "document", "deep"])
def test_markers_nested_in_any_sub_content_use_slots(container: str) -> None:
    # Three caller markers plus one nested marker: the four slots are used, so nothing
    # may be inserted (a fifth marker is a 400 on Anthropic).
    inner = [marked("r")]
    nested: dict[str, Any] = {
        "tool_result": {"type": "tool_result", "tool_use_id": "t1", "content": inner},
        "search_result": {"type": "search_result", "source": "s", "title": "t", "content": inner},
        "document": {"type": "document", "source": {"type": "content", "content": inner}},
        "deep": {
            "type": "tool_result",
            "tool_use_id": "t1",
            "content": [{"type": "search_result", "source": "s", "title": "t", "content": inner}],
        },
    }[container]
    body = chat([marked(LONG), marked("q"), nested, {"type": "text", "text": "question " * 50}])
    body["system"] = [marked(LONG)]
    result = plan(body)
    assert result.inserted == ()
    assert (result.body or orjson.dumps(body)).count(b'"cache_control"') == 4


def test_caller_top_level_counts_and_suppresses_tail() -> None:
    body = chat(
        [marked("a"), marked("b"), {"type": "text", "text": "c"}], cache_control={"type": "ephemeral"}
    )
    result = plan(body)
    inserted = [p for p in result.placements if p.action == "inserted"]
    assert [p.reason for p in inserted] == ["static"]  # 2 caller + top-level + static = 4


def test_no_marker_on_the_block_a_caller_top_level_marker_lands_on() -> None:
    # Nothing after the system prompt is cacheable, so the caller's top-level (5m)
    # automatic breakpoint lands on the system block: a 1h marker of ours there would
    # give one block two TTLs (a 400).
    body = chat([{"type": "text", "text": " "}])
    body["cache_control"] = {"type": "ephemeral"}
    result = plan(body, planner=Planner(static_ttl="1h"))
    assert result.inserted == ()


def test_relay_reserves_a_slot() -> None:
    turns = ([marked("a"), marked("b"), marked("c"), {"type": "text", "text": "d"}],)
    assert plan(chat(*turns), RELAY).body is None
    result = plan(chat(*turns), ANTHROPIC)
    assert len(result.inserted) == 1


def test_overflowing_caller_is_left_alone() -> None:
    turns = ([marked(x) for x in "abcde"],)
    assert plan(chat(*turns)).body is None


# -- valid targets and invalid caller markers ----------------------------------------------


def test_invalid_caller_marker_removed() -> None:
    bad = {"type": "text", "text": "", "cache_control": {"type": "ephemeral"}}
    result = plan(chat([{"type": "text", "text": "hi"}, bad], system="short"))
    assert next(p.action for p in result.placements) == "removed_invalid"
    assert {p.action for p in result.placements[1:]} == {"skipped_below_minimum"}
    assert "cache_control" not in out(result)["messages"][0]["content"][1]
    kept = Planner(remove_invalid=False).plan(body=orjson.dumps(chat([bad], system="s")), **ANTHROPIC)
    assert kept.body is None


@pytest.mark.parametrize(
    "block",
    [
        # Server-tool blocks whose SDK params carry cache_control (anthropic types
        # web_search_tool_result_block_param.py, container_upload_block_param.py, ...):
        # the planner places no marker of its own on them, but the caller's is valid.
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
        {"type": "code_execution_tool_result", "tool_use_id": "srvtoolu_1", "content": {}},
        {"type": "container_upload", "file_id": "file_1"},
        # A type the planner does not know at all: in doubt, the caller's marker stays.
        {"type": "some_future_block", "data": "x"},
    ],
)
def test_caller_marker_on_a_block_type_the_planner_does_not_target_is_kept(block: dict[str, Any]) -> None:
    block = {**block, "cache_control": {"type": "ephemeral"}}
    turns = ("q", [{"type": "text", "text": "a"}, block], [{"type": "text", "text": "next " * 300}])
    result = plan(chat(*turns))
    assert "removed_invalid" not in {p.action for p in result.placements}
    sent = out(result) if result.body is not None else chat(*turns)
    assert sent["messages"][1]["content"][1]["cache_control"] == {"type": "ephemeral"}
    # It is counted: with three more caller markers nothing may be added.
    full = chat(*turns, system=[marked(LONG), marked("b"), marked("c")])
    assert plan(full).body is None


def test_no_marker_on_a_deferred_tool() -> None:
    # Anthropic: "Tool 'b' cannot have both defer_loading=true and cache_control set.
    # Tools with defer_loading cannot use prompt caching." (HTTP 400). Tool search
    # clients (Claude Code) put the deferred tools last.
    deferred = {"name": "b", "description": "d", "input_schema": {"type": "object"}, "defer_loading": True}
    tools = [{"name": "a", "description": LONG, "input_schema": {"type": "object"}}, deferred]
    result = plan(chat("hi", system=None, tools=tools))
    sent = out(result)
    assert "cache_control" not in sent["tools"][1]
    assert sent["tools"][0]["cache_control"] == {"type": "ephemeral"}  # the last tool that takes one
    # A caller's marker there is one the provider rejects: removed, like one on thinking.
    marked_tools = [tools[0], {**deferred, "cache_control": {"type": "ephemeral"}}]
    removed = plan(chat("hi", system=None, tools=marked_tools))
    assert "removed_invalid" in {p.action for p in removed.placements}
    assert "cache_control" not in out(removed)["tools"][1]


@pytest.mark.parametrize("number", [2**64, 10**30, -(2**63) - 1])
def test_an_integer_outside_64_bits_is_never_rewritten_as_a_float(number: int) -> None:
    # orjson reads such an integer as a float (1e+30): a planned body would change the
    # caller's number. The request goes out as it came, with the original bytes.
    call = {"type": "tool_use", "id": "toolu_1", "name": "calc", "input": {"n": number, "s": "e+1"}}
    body = chat("q", [call], [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}])
    raw = json.dumps(body).encode()
    planner = Planner()
    result = planner.plan(body=raw, **ANTHROPIC)
    assert result.body is None
    assert result.error == "lossy_json"
    # The same body with a 64-bit integer is planned as usual.
    call["input"]["n"] = 2**63
    assert planner.plan(body=json.dumps(body).encode(), **ANTHROPIC).body is not None


def test_thinking_marker_removed() -> None:
    think = {"type": "thinking", "thinking": "x", "signature": "s", "cache_control": {"type": "ephemeral"}}
    body = out(plan(chat("q", [think, {"type": "text", "text": "a"}], "next")))
    assert "cache_control" not in body["messages"][1]["content"][0]


# -- TTL order ------------------------------------------------------------------------------


def test_static_1h_then_5m() -> None:
    result = plan(chat([{"type": "text", "text": "q"}]), planner=Planner(static_ttl="1h"))
    body = out(result)
    assert body["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert body["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}


def test_caller_1h_later_forces_1h_or_skip() -> None:
    turns = ([{"type": "text", "text": "q " * 50}, marked("z", "1h")],)
    body = out(plan(chat(*turns)))
    assert body["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    relay = plan(chat(*turns), RELAY)
    assert relay.body is None
    assert any(p.action == "skipped_ttl_order" for p in relay.placements)


def test_no_ttl_field_on_dashscope_and_relay() -> None:
    for where in (DASHSCOPE, RELAY):
        result = plan(chat([{"type": "text", "text": "q"}]), where, Planner(static_ttl="1h"))
        assert b'"ttl"' not in (result.body or b"")


# -- body preservation and formats -----------------------------------------------------------


def test_key_order_and_other_fields_preserved() -> None:
    body = {
        "temperature": 0.5,
        "model": "claude-sonnet-4-5",
        "system": LONG,
        "metadata": {"user_id": "u", "z": [1, 2.5, None, True]},
        "messages": [{"content": [{"text": "hi", "type": "text"}], "role": "user"}],
        "max_tokens": 5,
    }
    new = out(plan(body))
    assert list(new)[:6] == list(body)
    assert new["messages"][0]["content"][0] == {
        "text": "hi",
        "type": "text",
        "cache_control": {"type": "ephemeral"},
    }
    assert new["metadata"] == body["metadata"]


def test_dashscope_openai_parts_and_native_parts() -> None:
    body = {
        "model": "qwen3-max",
        "messages": [{"role": "system", "content": LONG}, {"role": "user", "content": "hi"}],
    }
    result = plan(body, DS_OPENAI)
    new = out(result)
    assert new["messages"][0]["content"] == [
        {"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}
    ]
    assert result.profile == "dashscope_openai"
    native = {"model": "qwen-plus", "input": {"messages": body["messages"]}, "parameters": {}}
    result = plan(native, DS_NATIVE)
    new = out(result)
    assert new["input"]["messages"][0]["content"] == [{"text": LONG, "cache_control": {"type": "ephemeral"}}]


def test_dashscope_native_tools_count_toward_the_prefix_as_in_compatible_mode() -> None:
    # An agent on the native API: 2.4k tokens of function definitions under
    # parameters.tools and a short system prompt. The tools are part of every prefix in
    # both modes; the native walk left them out of the estimate, so the system prompt was
    # judged below the minimum and skipped, while compatible mode marked it.
    tools = [
        {
            "type": "function",
            "function": {
                "name": f"tool_{i}",
                "description": " ".join(f"describes{i} step{j} of the lookup" for j in range(60)),
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
        for i in range(8)
    ]
    messages = [{"role": "system", "content": "You are the agent."}, {"role": "user", "content": "hi"}]
    compat = plan({"model": "qwen-plus", "messages": messages, "tools": tools}, DS_OPENAI)
    native = plan(
        {"model": "qwen-plus", "input": {"messages": messages}, "parameters": {"tools": tools}}, DS_NATIVE
    )
    assert compat.ticket is not None
    assert native.ticket is not None
    assert native.ticket.total_raw == pytest.approx(compat.ticket.total_raw)
    assert [(p.reason, p.action) for p in native.placements if p.reason == "static"] == [
        (p.reason, p.action) for p in compat.placements if p.reason == "static"
    ]


def test_dashscope_openai_tool_loop_tail_on_tool_message() -> None:
    body = {
        "model": "qwen3-max",
        "messages": [
            {"role": "system", "content": LONG},
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {"name": "f"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "result " * 20},
        ],
    }
    new = out(plan(body, DS_OPENAI))
    assert new["messages"][3]["content"][0]["cache_control"] == {"type": "ephemeral"}


# -- stream hygiene -------------------------------------------------------------------------


def test_include_usage_opt_in() -> None:
    body = {"model": "gpt-5", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    raw = orjson.dumps(body)
    where = {"api": "chat_completions", "host": "api.openai.com", "path": "/v1/chat/completions"}
    assert Planner().plan(body=raw, **where).body is None
    result = Planner(include_usage=True).plan(body=raw, **where)
    assert result.added_include_usage
    assert out(result)["stream_options"] == {"include_usage": True}
    body["stream_options"] = {"include_usage": False}
    assert Planner(include_usage=True).plan(body=orjson.dumps(body), **where).body is None


# -- feedback -------------------------------------------------------------------------------


def test_observe_calibrates_the_estimator() -> None:
    planner = Planner()
    result = plan(chat("hi"), planner=planner)
    assert result.raw_estimate is not None
    for _ in range(30):
        planner.observe(result, TokenUsage(input=int(result.raw_estimate * 1.5)))
    assert planner.estimator.ratio("anthropic", "claude") == pytest.approx(1.5, rel=0.02)


def test_one_shot_traffic_stops_first_turn_tail_writes() -> None:
    planner = Planner()
    first = _served(planner, chat([{"type": "text", "text": "question 0"}]))
    assert any(p.reason == "tail" for p in first.inserted)
    # Another unrelated prompt: the first one's tail was never seen again (not yet reused),
    # so a one-shot tail is no longer worth writing; the shared system prompt is cached.
    later = _served(planner, chat([{"type": "text", "text": "question 1"}]))
    assert [p.reason for p in later.inserted] == ["static"]
    assert [p.action for p in later.placements if p.reason == "tail"] == ["skipped_not_reused"]
    # A continued conversation's tail has statistics of its own.
    assert any(p.reason == "tail" for p in _served(planner, chat("q", "a", "q2")).inserted)


def _turns(n: int, seed: str, system: str = LONG) -> dict[str, Any]:
    """A conversation at its ``n``-th user turn (n - 1 assistant replies before it)."""
    turns: list[str] = []
    for k in range(n):
        turns += [f"{seed} question {k}"] + ([f"{seed} answer {k}"] if k < n - 1 else [])
    return chat(*turns, system=system)


def _served(planner: Planner, body: dict[str, Any], usage: TokenUsage | None = None) -> Plan:
    """Plan one request and play its response: started, finished, observed."""
    result = planner.plan(body=orjson.dumps(body), **ANTHROPIC)
    planner.started(result)
    planner.finished(result, usage)
    planner.observe(result, usage)
    return result


class _Recurs(MemoryLearner):
    """The in-process learner, answering that every candidate comes back with chance ``p``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.fixed = p

    def sight(self, family: int, sightings: Sequence[Sighting], now: float, ticket: int) -> list[Sight]:
        return [replace(s, p=self.fixed) for s in super().sight(family, sightings, now, ticket)]


@pytest.mark.parametrize(("p", "written"), [(0.20, False), (0.25, True), (0.30, True)])
def test_a_prefix_is_written_from_the_break_even_of_always_writing_against_never_writing(
    p: float, written: bool
) -> None:
    # Written whenever it is not cached, a prefix that comes back with chance p costs
    # 1.25 (1 - p) + 0.1 p per use; never written, 1.0: writing is cheaper from p = 0.217,
    # not from the one-step 0.28 (a read saves 1.15x: the next use would write it again).
    result = plan(chat("a question"), planner=Planner(learner=_Recurs(p)))
    action = "inserted" if written else "skipped_not_reused"
    assert {(x.reason, x.action) for x in result.placements} == {("static", action), ("tail", action)}


@pytest.mark.parametrize(("chats_per_five", "expect_tail"), [(1, False), (3, True)])
def test_first_turn_tails_follow_how_often_a_first_turn_is_continued(
    chats_per_five: int, expect_tail: bool
) -> None:
    # Per five conversations, `chats_per_five` are ten-turn chats and the rest one-shot
    # prompts. A first turn's tail is read only if its conversation continues: 0.2 of
    # them here stays under the 0.217 break-even, 0.6 goes over, although in both mixes
    # most requests continue a chat (and continued turns keep their own tail markers).
    planner = Planner()
    for round_ in range(12):
        for c in range(5):
            turns = 10 if c < chats_per_five else 1
            for n in range(1, turns + 1):
                _served(planner, _turns(n, f"r{round_}c{c}"))
    first = planner.plan(body=orjson.dumps(chat("a brand new question")), **ANTHROPIC)
    assert any(p.reason == "tail" for p in first.inserted) is expect_tail
    continued = planner.plan(body=orjson.dumps(_turns(4, "another chat")), **ANTHROPIC)
    assert any(p.reason == "tail" for p in continued.inserted)


def test_requests_without_usage_still_teach_the_policy() -> None:
    # An endpoint may report no usage: what recurs is learnt from the requests alone.
    planner = Planner()
    for c in range(6):
        for n in (1, 2):
            _served(planner, _turns(n, f"c{c}"), None)
    first = planner.plan(body=orjson.dumps(chat("a brand new question")), **ANTHROPIC)
    assert any(p.reason == "tail" for p in first.inserted)


def test_a_failed_request_retried_is_not_a_reuse() -> None:
    # An SDK retries a 429 with the same body: that is the same request, not its prefix
    # read again, so one-shot traffic under rate limits still stops its tail writes.
    planner = Planner()
    for q in range(6):
        body = orjson.dumps(chat(f"one-shot question {q}"))
        for status in (429, 429, 200):
            result = planner.plan(body=body, **ANTHROPIC)
            planner.started(result, status_code=status)
            planner.finished(result)
    last = planner.plan(body=orjson.dumps(chat("one more question")), **ANTHROPIC)
    assert [p.action for p in last.placements if p.reason == "tail"] == ["skipped_not_reused"]


# -- the adaptive policy: in-flight siblings and gaps against the TTL -----------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_first_turn_siblings_do_not_write_what_an_in_flight_request_writes() -> None:
    planner = Planner()
    writer = planner.plan(body=orjson.dumps(chat("question one " * 5)), **ANTHROPIC)
    assert any(p.reason == "static" for p in writer.inserted)
    sibling = planner.plan(body=orjson.dumps(chat("question two " * 5)), **ANTHROPIC)
    assert sibling.body is None  # sent as it came: unmarked, billed 1x, not 1.25x
    assert [p.action for p in sibling.placements if p.reason == "static"] == ["skipped_in_flight"]
    # A continued conversation writes its own tail whatever its siblings do.
    continued = planner.plan(body=orjson.dumps(chat("q", "a", "q2")), **ANTHROPIC)
    assert any(p.reason == "tail" and p.action == "inserted" for p in continued.placements)
    # The writer's response starts: its prefix is readable, siblings mark it to read it.
    planner.started(writer)
    reader = planner.plan(body=orjson.dumps(chat("question three " * 5)), **ANTHROPIC)
    assert any(p.reason == "static" and p.action == "inserted" for p in reader.placements)


def test_a_fault_after_the_learner_answered_does_not_hold_its_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    # The planner fails open on an internal fault (the body goes out unchanged); what the
    # learner granted that request (its claim on the system prompt) ends with it, or every
    # sibling would leave the prompt unwritten for CLAIM_TIMEOUT (120 s).
    from cachewatch.planning import _policy

    planner = Planner()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a fault inside the policy")

    with monkeypatch.context() as patched:
        patched.setattr(_policy, "volatile_advice", broken)
        failed = planner.plan(body=orjson.dumps(chat("question one " * 5)), **ANTHROPIC)
    assert failed.error == "internal_error"
    assert failed.body is None
    sibling = planner.plan(body=orjson.dumps(chat("question two " * 5)), **ANTHROPIC)
    assert [p.action for p in sibling.placements if p.reason == "static"] == ["inserted"]


def test_a_body_too_deep_to_render_does_not_hold_its_claims() -> None:
    # Each block can be serialised on its own, but the whole body is over orjson's nesting
    # limit: the render after placing fails, the body goes out unchanged, and the claim on
    # the system prompt ends with it (the next requests marked it "skipped_in_flight").
    deep: Any = "leaf"
    for _ in range(251):
        deep = {"k": deep}
    history = chat(
        "question one " * 5,
        [{"type": "tool_use", "id": "t1", "name": "f", "input": deep}],
        [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}],
    )
    planner = Planner()
    failed = planner.plan(body=json.dumps(history).encode(), **ANTHROPIC)  # orjson refuses the depth
    assert failed.error == "internal_error"
    assert failed.body is None
    sibling = planner.plan(body=orjson.dumps(chat("question two " * 5)), **ANTHROPIC)
    assert [p.action for p in sibling.placements if p.reason == "static"] == ["inserted"]


def test_a_null_cache_control_is_no_marker() -> None:
    # Clients that write out every optional field send "cache_control": null (the SDKs'
    # types make it optional). Each null was removed as an invalid marker and its block
    # taken for one that cannot be marked: nothing was planned.
    body = chat(
        [{"type": "text", "text": LONG, "cache_control": None}],
        system=[{"type": "text", "text": LONG, "cache_control": None}],
    )
    result = plan(body)
    assert {(p.reason, p.action) for p in result.placements} == {("static", "inserted"), ("tail", "inserted")}
    sent = out(result)
    assert sent["system"][0] == {"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}
    assert list(sent["messages"][0]["content"][0]) == ["type", "text", "cache_control"]
    # The same placements as without the nulls, and a null that gets no marker stays.
    body["messages"].append(
        {"role": "assistant", "content": [{"type": "text", "text": "ok", "cache_control": None}]}
    )
    body["messages"].append({"role": "user", "content": "next"})
    assert out(plan(body))["messages"][1]["content"][0]["cache_control"] is None


@pytest.mark.parametrize("top", ["ephemeral", False, 1, ["ephemeral"]])
def test_a_top_level_cache_control_that_is_no_marker_object_leaves_the_body_alone(top: Any) -> None:
    # It was overwritten with {"type": "ephemeral"}: a request the provider would refuse
    # went out with automatic caching on.
    result = Planner().plan(body=orjson.dumps(chat("hi " * 5, cache_control=top)), **ANTHROPIC)
    assert result.body is None
    assert result.error == "invalid_shape"


def test_a_model_name_no_model_has_is_not_planned() -> None:
    # Each distinct name keys the learned state and the caches: a megabyte per name was kept.
    for model in ("m" * 1_000, "claude\x00sonnet", "claude\nsonnet"):
        result = Planner().plan(body=orjson.dumps(chat("hi " * 5, model=model)), **ANTHROPIC)
        assert result.body is None
        assert result.error == "invalid_shape"


def test_an_invalid_marker_left_in_place_keeps_its_ttl_in_the_order() -> None:
    # With remove_invalid=False, a caller's 1h marker on an empty text block (which the
    # provider refuses anyway) was taken for a 5m one: 5m markers were placed before it.
    body = chat(
        "question " * 5,
        [{"type": "text", "text": "", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "q",
    )
    raw = orjson.dumps(body)
    result = Planner(remove_invalid=False).plan(body=raw, **ANTHROPIC)
    ttls = [p.ttl for p in result.placements if p.action == "inserted" and p.location != "top_level"]
    assert ttls
    assert set(ttls) == {"1h"}
    assert [m for m in validate(result.profile, raw, result.body) if "ttl" in m.lower()] == []


@pytest.mark.parametrize("where", [DS_OPENAI, DS_NATIVE], ids=["compatible", "native"])
@pytest.mark.parametrize(("model", "marked"), [("qwen-plus", True), ("qwen3.6-plus", True), ("qwen-turbo", False),
                                               ("qwen-plus-latest", False), ("qwq-plus", False)])  # fmt: skip
def test_dashscope_marks_only_models_with_the_explicit_cache(
    where: dict[str, str], model: str, marked: bool
) -> None:
    # A marker turns the request's implicit cache off there: on a model without the
    # explicit cache (research B.2) it would only lose the implicit hits.
    if where is DS_OPENAI:
        body = {
            "model": model,
            "messages": [{"role": "system", "content": LONG}, {"role": "user", "content": "hi"}],
        }
    else:
        body = {"model": model, "input": {"messages": [{"role": "system", "content": LONG},
                                                       {"role": "user", "content": "hi"}]}}  # fmt: skip
    result = Planner().plan(body=orjson.dumps(body), **where)
    assert (result.body is not None and b"cache_control" in result.body) == marked


def test_an_in_flight_sibling_holds_back_only_the_shared_prefix_it_writes() -> None:
    # B shares A's system prompt, which A is writing (its response has not started), but
    # carries its own large document: B does not write A's prefix again; its document is
    # judged on its own (documents seen so far were not reused yet: not written).
    planner = Planner(clock=lambda: 0.0)

    def first_turn(doc: str) -> bytes:
        content = [{"type": "text", "text": doc}, {"type": "text", "text": "Summarise it."}]
        return orjson.dumps(chat(content))

    a = planner.plan(body=first_turn("contract A clause " * 5000), **ANTHROPIC)
    b = planner.plan(body=first_turn("contract B clause " * 5000), **ANTHROPIC)
    assert {p.reason for p in a.inserted} >= {"static", "document"}
    actions = {p.reason: p.action for p in b.placements}
    assert actions["static"] == "skipped_in_flight"
    assert actions["document"] == "skipped_not_reused"
    assert actions["tail"] == "skipped_not_reused"
    # A's document comes back (another question about it): documents are reused, so the
    # next new one is written again.
    planner.started(a)
    planner.finished(a)
    again = planner.plan(body=first_turn("contract A clause " * 5000), **ANTHROPIC)
    assert {p.reason for p in again.inserted} >= {"document"}
    c = planner.plan(body=first_turn("contract C clause " * 5000), **ANTHROPIC)
    assert {p.reason for p in c.inserted} >= {"document"}


@pytest.mark.parametrize(
    ("other_tools", "other_host", "sibling"),
    [("search_web", "dashscope-intl.aliyuncs.com", True), ("run_sql", "dashscope-intl.aliyuncs.com", False),
     ("search_web", "dashscope.aliyuncs.com", False)],
)  # fmt: skip
def test_the_static_prefix_identity_includes_tools_and_host(
    other_tools: str, other_host: str, sibling: bool
) -> None:
    # Chat-completions tools are not positions, and two hosts (regions) are two caches:
    # requests differing in either do not share a static prefix, so neither holds back.
    def body(tool: str, question: str) -> bytes:
        tools = [{"type": "function", "function": {"name": tool, "parameters": {"type": "object"}}}]
        messages = [{"role": "system", "content": LONG}, {"role": "user", "content": question}]
        return orjson.dumps({"model": "qwen-plus", "tools": tools, "messages": messages})

    where = {**DS_OPENAI, "host": "dashscope-intl.aliyuncs.com"}
    planner = Planner(clock=lambda: 0.0)
    writer = planner.plan(body=body("search_web", "question one"), **where)
    assert writer.body is not None
    other = planner.plan(body=body(other_tools, "question two"), **{**where, "host": other_host})
    held = {p.action for p in other.placements if p.reason == "static"} == {"skipped_in_flight"}
    assert held is sibling


def test_concurrent_first_turn_siblings_cannot_both_write() -> None:
    # Eight siblings planned at once on eight threads: exactly one writes the shared prefix
    # (checking for a writer and claiming it is one step under the learner's lock).
    import threading

    planner = Planner(clock=lambda: 0.0)
    barrier = threading.Barrier(8)
    results: list[Plan] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        body = orjson.dumps(chat(f"question {n} " * 5))
        barrier.wait(5)
        result = planner.plan(body=body, **ANTHROPIC)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    writers = [r for r in results if any(p.reason == "static" for p in r.inserted)]
    assert len(results) == 8
    assert len(writers) == 1


def test_a_failed_writer_releases_its_siblings() -> None:
    planner = Planner()
    writer = planner.plan(body=orjson.dumps(chat("question one " * 5)), **ANTHROPIC)
    planner.started(writer, status_code=529)  # overloaded: nothing was written
    planner.finished(writer)
    again = planner.plan(body=orjson.dumps(chat("question two " * 5)), **ANTHROPIC)
    assert any(p.reason == "static" and p.action == "inserted" for p in again.placements)


def test_a_prefix_that_comes_back_after_its_5m_entry_expired_is_marked_1h() -> None:
    clock = _Clock()
    planner = Planner(clock=clock, budget_1h=None)  # the estimate alone (the budget: below)

    def send(question: str) -> Plan:
        result = planner.plan(body=orjson.dumps(chat(question)), **ANTHROPIC)
        planner.started(result)
        planner.finished(result)
        return result

    first = send("q1")
    assert {p.ttl for p in first.inserted} == {"5m"}
    for n in range(2, 6):  # a prefix in steady use: every minute or two, still 5m
        clock.now += 90
        assert {p.ttl for p in send(f"q{n}").inserted} == {"5m"}
    clock.now += 420  # then it came back 7 minutes later: one gap says little of the next
    late = send("q6")
    assert [p.ttl for p in late.inserted if p.reason == "static"] == ["5m"]
    clock.now += 420  # and again 7 minutes later: one gap that ended within the hour
    again = send("q7")
    assert [p.ttl for p in again.inserted if p.reason == "static"] == ["5m"]
    clock.now += 420  # a third: its gaps do end within the hour (lower bound over 0.53), bet on 1h
    third = send("q8")
    assert [p.ttl for p in third.inserted if p.reason == "static"] == ["1h"]
    clock.now += 60
    assert [p.ttl for p in send("q9").inserted if p.reason == "static"] == ["1h"]
    # DashScope honours only 5m: never 1h there.
    ds = Planner(clock=clock, budget_1h=None)
    for _ in range(3):
        result = ds.plan(body=orjson.dumps(chat("q")), **DASHSCOPE)
        ds.finished(result)
        clock.now += 420
    assert {p.ttl for p in result.inserted} == {"5m"}


def test_1h_bets_are_paid_from_what_the_bets_before_them_saved() -> None:
    clock = _Clock()
    planner = Planner(clock=clock)  # the default budget: what bets saved + 0.5% of the bill
    budget = planner.budget
    assert budget is not None
    other = "ledger invoice ticket refund policy customer account " * 150

    def send(question: str, system: str = LONG) -> list[str | None]:
        result = planner.plan(body=orjson.dumps(chat(question, system=system)), **ANTHROPIC)
        planner.started(result)
        planner.finished(result)
        return [p.ttl for p in result.inserted if p.reason == "static"]

    def steady_then_late(system: str, returns: int) -> list[list[str | None]]:
        for n in range(5):  # a prefix in steady use, then back every 7 minutes
            send(f"q{n}", system)
            clock.now += 90
        clock.now += 330
        out = []
        for n in range(returns):
            out.append(send(f"late{n}", system))
            clock.now += 420
        return out

    # The estimate bets at the third late return (see the test above); nothing billed
    # yet pays for it.
    assert steady_then_late(LONG, 3) == [["5m"], ["5m"], ["5m"]]
    budget.billed(2_000_000)  # 0.5% of 2M tokens' worth billed: 10k, over its premium
    balance = budget.balance
    assert send("bet", LONG) == ["1h"]
    charged = budget.balance
    assert charged < balance  # its premium, charged when it was placed
    clock.now += 600
    assert send("read", LONG) == ["1h"]  # the late return reads the 1h entry
    assert budget.balance > charged  # what it saved is credited
    # Bets that did not pay (here: charged by hand) stop the next ones, however sure the
    # estimate is, until what the process is billed pays for them.
    budget.placed([], budget.balance + 1_000_000.0, clock.now)
    assert steady_then_late(other, 4) == [["5m"], ["5m"], ["5m"], ["5m"]]
    budget.billed(1_002_000.0 / budget.share)
    assert send("funded", other) == ["1h"]


def test_concurrent_requests_are_no_recurrence_so_bursts_past_the_ttl_stop_writing() -> None:
    """Waves of concurrent one-shot requests sharing a system prompt, 8 minutes apart:
    none can read what another in its wave writes, and nothing lasts to the next wave."""
    clock = _Clock()
    planner = Planner(clock=clock)
    static_writes = []
    for wave in range(4):
        plans = [planner.plan(body=orjson.dumps(chat(f"w{wave} q{i}")), **ANTHROPIC) for i in range(8)]
        static_writes.append(sum(1 for plan in plans for p in plan.inserted if p.reason == "static"))
        clock.now += 2
        for plan in plans:
            planner.started(plan)
            planner.finished(plan)
        clock.now += 480
    # The first sighting of a new prefix is written once (its siblings see it in flight);
    # the siblings are not recurrences of it, so no later wave writes it again.
    assert static_writes == [1, 0, 0, 0]


def test_identical_concurrent_requests_are_one_sighting_of_their_tail() -> None:
    """Self-consistency sampling: every new question sent five times at once. No copy can
    read what another writes and the question never comes back, so the copies are not
    recurrences of each other: after the first wave, no copy writes its tail."""
    clock = _Clock()
    planner = Planner(clock=clock)
    tail_writes = []
    for wave in range(6):
        body = orjson.dumps(chat(f"question {wave} " + "detail of the case " * 400))
        plans = [planner.plan(body=body, **ANTHROPIC) for _ in range(5)]
        tail_writes.append(sum(1 for plan in plans for p in plan.inserted if p.reason == "tail"))
        clock.now += 2
        for plan in plans:
            planner.started(plan)
            planner.finished(plan)
        clock.now += 30
    assert tail_writes[1:] == [0] * 5


# -- what the policy rules learned from unseen traffic (each case failed before its fix) -----


def test_a_document_that_ends_the_previous_turn_is_one_prefix_sighted_once() -> None:
    from cachewatch.planning._learning_memory import MemoryLearner

    asked: list[list[int]] = []

    class Spy(MemoryLearner):
        def sight(self, family: int, sightings: Any, now: float, ticket: int) -> Any:
            asked.append([s.key for s in sightings])
            return super().sight(family, sightings, now, ticket)

    planner = Planner(learner=Spy())
    document = "contract clause liability payment term notice " * 400  # a large block
    body = chat(document, "It is a services contract.", "Who pays the fees?")
    result = planner.plan(body=orjson.dumps(body), **ANTHROPIC)
    # The previous turn ended with the document: sighting it twice would count it as its
    # own recurrence (gap 0) and inflate its statistics.
    assert asked
    assert len(asked[-1]) == len(set(asked[-1]))
    assert [p.reason for p in result.inserted].count("previous_turn") == 1
    assert "document" not in [p.reason for p in result.placements]


def test_a_prefix_estimated_just_under_the_minimum_is_marked_and_its_miss_raises_nothing() -> None:
    planner = Planner()
    system = "cache prompt token model request stream usage system tool result " * 58  # ~870
    body = chat("hi", system=system)
    result = planner.plan(body=orjson.dumps(body), **ANTHROPIC)
    estimate = result.raw_estimate
    assert estimate is not None
    assert 0.75 * 1024 < estimate < 1024
    # A marker under the minimum costs nothing; one left off a prefix that reaches it
    # (the estimate is off by up to a quarter) costs its reads.
    assert "static" in [p.reason for p in result.inserted]
    planner.started(result)
    usage = TokenUsage(input=900)  # the provider wrote and read nothing: it was under
    planner.finished(result, usage)
    planner.observe(result, usage)
    assert planner.learner.learned_minimum("anthropic\x00claude-sonnet-4-5") == 0


def test_prose_under_the_minimum_before_code_raises_no_minimum_and_costs_no_reliability() -> None:
    """A code-review job: prose instructions just under the minimum, then code, whose
    punctuation the cheap estimate undercounts (billed here at 2x the whole prompt's raw
    estimate). The prompt's billed/raw ratio is the code's, not the prose's: scaled by it,
    the instructions look above the minimum, and their miss (the provider caches nothing
    under it) must not raise the model's learned minimum (which would leave every prefix
    of that model under the next tier unmarked) nor lower the family's reliability."""
    clock = _Clock()
    planner = Planner(clock=clock)
    system = "cache prompt token model request stream usage system tool result " * 58  # ~870
    model_key = "anthropic\x00claude-sonnet-4-5"
    for n in range(2):
        code = "\n".join(
            f"if (x[{n}{i}] != y.get('k{i}', {{}})) {{ x = (y + {i}) * [x, y]; }}" for i in range(40)
        )
        result = planner.plan(body=orjson.dumps(chat(code, system=system)), **ANTHROPIC)
        assert result.raw_estimate is not None
        assert result.ticket is not None
        billed = int(2 * result.raw_estimate)
        marked = {p.reason for p in result.inserted}
        planner.started(result)
        # The first request writes its whole prompt (its tail); the second marks only the
        # instructions (a one-shot's tail is not worth writing again), which are under
        # the minimum: nothing is read or written.
        usage = TokenUsage(cache_write_5m=billed) if "tail" in marked else TokenUsage(input=billed)
        planner.finished(result, usage)
        planner.observe(result, usage)
        clock.now += 20
    assert marked == {"static"}
    assert planner.learner.learned_minimum(model_key) == 0
    assert planner.learner.reliability(result.ticket.family) == 1.0


def test_threshold_1h_of_one_turns_1h_bets_off() -> None:
    clock = _Clock()
    planner = Planner(clock=clock, threshold_1h=1.0)
    ttls: set[str | None] = set()
    for n in range(8):  # a prefix that comes back every 7 minutes: 1h would be bet on
        result = planner.plan(body=orjson.dumps(chat(f"q{n}")), **ANTHROPIC)
        planner.started(result)
        planner.finished(result)
        ttls |= {p.ttl for p in result.inserted}
        clock.now += 420
    assert ttls == {"5m"}


def test_a_static_region_is_hedged_before_its_last_block_only_until_its_stability_is_known() -> None:
    """Before a family's static blocks have shown whether one keeps changing (a block is
    volatile once it changed at three comparisons running), its first requests also end a
    prefix before the region's last block: marked for free where the request writes past
    it. Once four requests were compared, a region whose blocks hold still has no such
    candidate (it would take a slot for nothing), and one whose last block keeps changing
    keeps it as the stable prefix it then is."""
    planner = Planner()
    other = "invoice refund parcel ticket agent clause quota alert region policy " * 120
    steady = [{"type": "text", "text": LONG}, {"type": "text", "text": other}]
    hedged = []
    for i in range(6):
        result = plan(chat(f"question {i}", system=steady), planner=planner)
        hedged.append([p.action for p in result.placements if p.path == "system.0"])
    assert hedged[0] == ["inserted"]  # the first request writes the region: free to mark
    assert all(h for h in hedged[:4]), hedged
    assert not any(h for h in hedged[4:]), hedged

    planner = Planner()
    stable = []
    for i in range(6):
        stamped = [{"type": "text", "text": LONG}, {"type": "text", "text": f"Now: 1700000{i:03d}. " + other}]
        result = plan(chat(f"question {i}", system=stamped), planner=planner)
        stable.append([p.action for p in result.placements if p.path == "system.0"])
    assert all(s for s in stable), stable


class _Believing(MemoryLearner):
    """A learner whose answers say what a test needs: ``p(kind)``, and for the kinds in
    ``late`` a late return that surely comes again; nothing cached or in flight."""

    def __init__(self, p: Any, late: tuple[str, ...] = ()) -> None:
        super().__init__()
        self._answer = p
        self._late_kinds = late

    def sight(self, family: int, sightings: Any, now: float, ticket: int) -> Any:
        from cachewatch.planning._learning import new_sight

        late = self._late_kinds
        return [
            new_sight(
                s.key, s.kind, s.run, False, False, s.kind in late, self._answer(s.kind),
                1.0 if s.kind in late else 0.0, s.known, 1.0, False, False,
            )
            for s in super().sight(family, sightings, now, ticket)
        ]  # fmt: skip


STAMPED = [{"type": "text", "text": LONG}, {"type": "text", "text": "Now: 1700000000. " + LONG}]


def test_the_hedge_is_never_written_on_its_own() -> None:
    """The hedge before the static region's last block is free to mark where the request
    writes past it, and is read when cached; it is never a write of its own, whatever its
    kind's statistics say. (Written by itself in a gateway benchmark, a prefix of one
    tenant's tools came back neither written nor read, and the learned minimum that raised
    left the system prompts that followed unmarked.)"""
    # Every hedge (and stable part) is read again, nothing else is.
    planner = Planner(learner=_Believing(lambda kind: 1.0 if kind in ("hedge", "stable") else 0.0))
    tools = [{"name": f"t{i}", "description": LONG, "input_schema": {"type": "object"}} for i in range(2)]
    result = plan(chat("question", system=STAMPED, tools=tools), planner=planner)
    hedges = [p for p in result.placements if p.path == "system.0"]
    assert hedges, result.placements  # the hedge was a candidate
    assert result.inserted == (), result.placements


def test_the_hedge_gets_no_1h_bet_and_no_slot_another_free_marker_wants() -> None:
    """A hedge whose own statistics say it comes back late is not bet on at 1h (that is a
    write of its own, 0.75-1x its tokens); and where slots are short, the whole static
    region's free marker keeps its slot before the hedge takes one."""

    def tails(kind: str) -> float:  # the tail is surely read; the hedge surely comes back late
        return 1.0 if kind.startswith("tail") else 0.0

    first = [{"type": "text", "text": LONG}]
    planner = Planner(learner=_Believing(tails, late=("hedge",)), budget_1h=None)
    result = plan(chat(first, system=STAMPED), planner=planner)
    assert [p for p in result.placements if p.path == "system.0"], result.placements
    assert all(p.ttl != "1h" for p in result.inserted), result.placements

    # Two caller markers leave two slots: the tail (the write) and one free marker.
    tools = [
        {
            "name": f"t{i}",
            "description": f"tool {i} " + LONG[:200],
            "input_schema": {"type": "object"},
            "cache_control": {"type": "ephemeral"},
        }
        for i in range(2)
    ]
    planner = Planner(learner=_Believing(tails, late=("hedge",)))
    result = plan(chat(first, system=STAMPED, tools=tools), planner=planner)
    inserted = {p.path for p in result.inserted}
    assert "system.1" in inserted, result.placements
    assert "system.0" not in inserted, result.placements
