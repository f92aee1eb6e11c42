"""Endpoint profiles: matching by host and path, the minimum-token table, overrides."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cachewatch.planning._profiles import DEFAULT_PROFILES, EndpointRule, ProfileRegistry, min_tokens_lookup


@pytest.mark.parametrize(
    ("host", "path", "name"),
    [
        ("api.anthropic.com", "/v1/messages", "anthropic"),
        ("api.anthropic.com:443", "/v1/messages", "anthropic"),
        ("dashscope.aliyuncs.com", "/apps/anthropic/v1/messages", "dashscope"),
        ("dashscope-intl.aliyuncs.com", "/apps/anthropic/v1/messages", "dashscope"),
        ("coding-intl.dashscope.aliyuncs.com", "/apps/anthropic/v1/messages", "dashscope"),
        ("ws-abc123.ap-southeast-1.maas.aliyuncs.com", "/apps/anthropic/v1/messages", "dashscope"),
        ("token-plan.ap-southeast-1.maas.aliyuncs.com", "/apps/anthropic/v1/messages", "dashscope"),
        ("dashscope.aliyuncs.com", "/compatible-mode/v1/chat/completions", "dashscope_openai"),
        ("dashscope.aliyuncs.com", "/api/v1/services/aigc/text-generation/generation", "dashscope_native"),
        (
            "dashscope.aliyuncs.com",
            "/api/v1/services/aigc/multimodal-generation/generation",
            "dashscope_native",
        ),
        ("dashscope.aliyuncs.com", "/api/v2/apps/protocols/compatible-mode/v1/responses", "unknown"),
        ("api.openai.com", "/v1/chat/completions", "openai"),
        ("api.openai.com", "/v1/responses", "openai"),
        ("api.deepseek.com", "/chat/completions", "deepseek"),
        ("relay.example.com", "/v1/messages", "relay"),
        ("api.moonshot.ai", "/anthropic/v1/messages", "relay"),
        ("openrouter.ai", "/api/v1/chat/completions", "unknown"),
        ("localhost:8080", "/v1/messages", "anthropic"),
        ("127.0.0.1", "/v1/messages", "anthropic"),
        ("[::1]:9000", "/v1/messages", "anthropic"),
        ("127.0.0.1:8787", "/apps/anthropic/v1/messages", "dashscope"),
        ("localhost", "/compatible-mode/v1/chat/completions", "dashscope_openai"),
    ],
)
def test_match(host: str, path: str, name: str) -> None:
    assert ProfileRegistry().match(host, path).name == name


def test_profile_table() -> None:
    a = DEFAULT_PROFILES["anthropic"]
    assert (a.max_breakpoints, a.overflow, a.honours_1h, a.top_level_automatic, a.lookback) == (
        4,
        "error",
        True,
        True,
        20,
    )
    d = DEFAULT_PROFILES["dashscope"]
    assert (d.overflow, d.honours_1h, d.emit_ttl, d.top_level_automatic, d.min_tokens_for("qwen3-max")) == (
        "last_wins",
        False,
        False,
        False,
        1024,
    )
    r = DEFAULT_PROFILES["relay"]
    assert (r.reserved_slots, r.slots, r.emit_ttl, r.top_level_automatic) == (1, 3, False, False)
    assert r.min_tokens_for("claude-haiku-4-5") == 4096
    assert r.min_tokens_for("glm-4.6") == 1024
    assert DEFAULT_PROFILES["dashscope_openai"].marker_format == "openai_content_part"
    assert DEFAULT_PROFILES["dashscope_native"].marker_format == "dashscope_native"
    for name in ("openai", "deepseek", "unknown"):
        assert not DEFAULT_PROFILES[name].supports_markers


@pytest.mark.parametrize(
    ("model", "tokens"),
    [
        ("claude-sonnet-4-5-20250929", 1024),
        ("claude-opus-4-20250514", 1024),
        ("claude-opus-4-5-20251101", 4096),
        ("claude-opus-4-1", 1024),
        ("claude-haiku-4-5", 4096),
        ("claude-3-5-haiku-latest", 2048),
        ("claude-3-haiku-20240307", 2048),
        ("claude-opus-4-7", 2048),
        ("claude-fable-5", 512),
        ("claude-opus-5-5", 512),
        ("anthropic/claude-sonnet-4-6", 1024),
        ("us.anthropic.claude-haiku-4-5-20251001-v1:0", 4096),
        ("claude-opus-4-6@20260101", 4096),
        ("claude-haiku-5-5", 1024),  # unknown: the default
        ("mystery", 1024),
    ],
)
def test_min_tokens(model: str, tokens: int) -> None:
    assert DEFAULT_PROFILES["anthropic"].min_tokens_for(model) == tokens


def test_lookup_needs_a_boundary() -> None:
    assert min_tokens_lookup({"claude-opus-4": 1}, "claude-opus-40") is None
    assert min_tokens_lookup({"claude-opus-4": 1}, "xclaude-opus-4") is None


def test_override_and_register() -> None:
    registry = ProfileRegistry()
    registry.override("relay", reserved_slots=2)
    assert registry.match("relay.example.com", "/v1/messages").slots == 2
    registry.override("anthropic", min_tokens={"claude-sonnet-4-6": 2048})
    assert registry.match("api.anthropic.com", "/v1/messages").min_tokens_for("claude-sonnet-4-6") == 2048
    gateway = replace(registry.get("anthropic"), name="gateway", reserved_slots=1)
    registry.register(
        gateway, hosts=("llm.internal.example", "*.corp.example"), path_suffixes=("/v1/messages",)
    )
    assert registry.match("llm.internal.example", "/v1/messages").name == "gateway"
    assert registry.match("a.corp.example", "/x/v1/messages").name == "gateway"
    assert registry.match("corp.example", "/v1/messages").name == "relay"
    assert ProfileRegistry().match("llm.internal.example", "/v1/messages").name == "relay"


def test_constructor_rules_win() -> None:
    registry = ProfileRegistry(rules=[EndpointRule("unknown", hosts=("api.anthropic.com",))])
    assert registry.match("api.anthropic.com", "/v1/messages").name == "unknown"


#: Claude model ids as the Claude API, Bedrock (``anthropic.``/``us.anthropic.``, ``-v1:0``),
#: Vertex (``@date``) and LiteLLM (``anthropic/``) spell them, one or more per family of
#: the facts file's minimum table (research A.5 and F), plus models it does not list.
REAL_CLAUDE_IDS = (
    "claude-fable-5",
    "claude-mythos-5-20260601",
    "claude-fable-5-1",
    "claude-mythos-5-1",
    "claude-opus-5",
    "claude-opus-5-5",
    "claude-sonnet-5-5-20261001",
    "claude-opus-4-8",
    "claude-sonnet-5",
    "claude-sonnet-4-6",
    "us.anthropic.claude-sonnet-4-6",
    "claude-sonnet-4-5-20250929",
    "claude-sonnet-4-5@20250929",
    "claude-opus-4-1-20250805",
    "claude-opus-4-20250514",
    "claude-opus-4-0",
    "claude-sonnet-4-20250514",
    "claude-3-7-sonnet-20250219",
    "claude-3-5-sonnet-20241022",
    "claude-3-opus-20240229",
    "claude-mythos-preview",
    "claude-opus-4-7",
    "claude-3-5-haiku-20241022",
    "claude-3-5-haiku-latest",
    "anthropic.claude-3-haiku-20240307-v1:0",
    "claude-opus-4-6",
    "claude-opus-4-5-20251101",
    "anthropic.claude-opus-4-5-20251101-v1:0",
    "claude-haiku-4-5-20251001",
    "anthropic/claude-haiku-4-5",
    "claude-haiku-5-5",
    "claude-next",
)


@pytest.mark.parametrize("model", REAL_CLAUDE_IDS)
def test_emulator_and_planner_agree_on_the_real_anthropic_minimums(model: str) -> None:
    """The planner places for the minimum the emulator (standing in for the API) enforces."""
    from cachewatch.emulator import PROFILES as EMULATED

    assert DEFAULT_PROFILES["anthropic"].min_tokens_for(model) == EMULATED["anthropic"].min_tokens_for(model)


def test_emulator_and_planner_minimum_tables_are_the_same_data() -> None:
    from cachewatch.emulator import ANTHROPIC_MIN_TOKENS as EMULATED_TABLE
    from cachewatch.emulator import PROFILES as EMULATED
    from cachewatch.planning._profiles import ANTHROPIC_MIN_TOKENS

    assert dict(ANTHROPIC_MIN_TOKENS) == dict(EMULATED_TABLE)
    # Values of the facts file's table (A.5), spot-checked per tier.
    expected = {
        "claude-fable-5": 512,
        "claude-opus-4-8": 1_024,
        "claude-opus-4-7": 2_048,
        "claude-haiku-4-5": 4_096,
    }
    assert {k: ANTHROPIC_MIN_TOKENS[k] for k in expected} == expected
    # DashScope explicit cache: 1,024 on both sides (research B.1); unknown models: 1,024.
    for name in ("dashscope", "dashscope_openai", "dashscope_native"):
        assert DEFAULT_PROFILES[name].min_tokens_for("qwen3.6-plus") == EMULATED["dashscope"].min_tokens_for(
            "qwen3.6-plus"
        )
    assert DEFAULT_PROFILES["anthropic"].min_tokens_for("claude-next") == 1_024


def test_dotted_model_versions_get_their_models_minimum() -> None:
    # OpenRouter and LiteLLM spell versions with dots; "claude-opus-4" must not win.
    from cachewatch.planning._profiles import ANTHROPIC_MIN_TOKENS, min_tokens_lookup

    assert min_tokens_lookup(ANTHROPIC_MIN_TOKENS, "anthropic/claude-opus-4.5") == 4_096
    assert min_tokens_lookup(ANTHROPIC_MIN_TOKENS, "claude-haiku-4.5") == 4_096
    assert min_tokens_lookup(ANTHROPIC_MIN_TOKENS, "openrouter/anthropic/claude-opus-4.6") == 4_096
    assert min_tokens_lookup(ANTHROPIC_MIN_TOKENS, "claude-sonnet-4.5") == 1_024


def test_the_planner_and_the_emulator_agree_on_dashscopes_explicit_cache_models() -> None:
    # The same data, kept twice on purpose: the emulator stands in for the provider and
    # imports nothing of the planner's (as for the minimums above).
    from cachewatch.planning._profiles import DASHSCOPE_EXPLICIT_MODELS as PLANNED
    from cachewatch.simulation._profiles import DASHSCOPE_EXPLICIT_MODELS as EMULATED

    assert PLANNED == EMULATED
