"""Property-based planner checks: generated realistic requests, the independent validator.

Every generated request (tools, string/list system prompts, multi-turn conversations,
tool_use/tool_result, images, thinking blocks, empty text, caller markers with mixed
TTLs, oversize conversations) is planned for every marker-capable profile; the planned
body must pass ``validator.validate`` and planning must be deterministic and never fail
internally. The 100,000-request run is marked ``slow`` (``pytest -m slow``).
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachewatch.planning._planner import Planner
from validator import validate

WHERE = [
    ("anthropic", {"api": "messages", "host": "api.anthropic.com", "path": "/v1/messages"}),
    (
        "dashscope",
        {"api": "messages", "host": "dashscope-intl.aliyuncs.com", "path": "/apps/anthropic/v1/messages"},
    ),
    ("relay", {"api": "messages", "host": "relay.example.net", "path": "/v1/messages"}),
]
OPENAI_WHERE = [
    (
        "dashscope_openai",
        {
            "api": "chat_completions",
            "host": "dashscope.aliyuncs.com",
            "path": "/compatible-mode/v1/chat/completions",
        },
    ),
]
MODELS = [
    "claude-sonnet-4-5",
    "claude-haiku-4-5",
    "claude-opus-4-6",
    "claude-fable-5",
    "qwen3-max",
    "mystery-1",
]
WORD = "cache token prompt model the of and stream "


def _text(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.08:
        return ""
    if roll < 0.14:
        return " \n\t"
    if roll < 0.5:
        return WORD * rng.randint(1, 20)
    return WORD * rng.randint(50, 1_200)


def _marker(rng: random.Random) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.4:
        return {"type": "ephemeral"}
    if roll < 0.7:
        return {"type": "ephemeral", "ttl": "5m"}
    return {"type": "ephemeral", "ttl": "1h"}


def _maybe_mark(block: dict[str, Any], rng: random.Random, rate: float) -> dict[str, Any]:
    if rng.random() < rate:
        block["cache_control"] = _marker(rng)
    return block


def anthropic_request(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    rate = rng.choice([0.0, 0.0, 0.05, 0.15, 0.4])
    body: dict[str, Any] = {"model": rng.choice(MODELS), "max_tokens": 64}
    if rng.random() < 0.4:
        body["tools"] = [
            _maybe_mark(
                {"name": f"t{i}", "description": _text(rng), "input_schema": {"type": "object"}}, rng, rate
            )
            for i in range(rng.randint(1, 4))
        ]
    roll = rng.random()
    if roll < 0.35:
        body["system"] = _text(rng)
    elif roll < 0.7:
        body["system"] = [
            _maybe_mark({"type": "text", "text": _text(rng)}, rng, rate) for _ in range(rng.randint(1, 3))
        ]
    messages: list[dict[str, Any]] = []
    turns = rng.choice([1, 1, 2, 3, 5, 9, 25])
    pending: list[str] = []
    for turn in range(turns):
        user: list[Any] = []
        for tid in pending:
            content: Any = _text(rng) if rng.random() < 0.6 else [{"type": "text", "text": _text(rng)}]
            if isinstance(content, list) and rng.random() < 0.2:
                content[0]["cache_control"] = _marker(rng)  # nested caller marker
            user.append(
                _maybe_mark({"type": "tool_result", "tool_use_id": tid, "content": content}, rng, rate)
            )
        pending = []
        for _ in range(rng.randint(0 if user else 1, 3)):
            roll = rng.random()
            if roll < 0.15:
                user.append(
                    _maybe_mark(
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"},
                        },
                        rng,
                        rate,
                    )
                )
            elif roll < 0.22:
                user.append(
                    _maybe_mark(
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": _text(rng)},
                        },
                        rng,
                        rate,
                    )
                )
            else:
                user.append(_maybe_mark({"type": "text", "text": _text(rng)}, rng, rate))
        if (
            rng.random() < 0.3
            and len(user) == 1
            and user[0].get("type") == "text"
            and "cache_control" not in user[0]
        ):
            messages.append({"role": "user", "content": user[0]["text"]})
        else:
            messages.append({"role": "user", "content": user})
        if turn == turns - 1:
            break
        assistant: list[dict[str, Any]] = []
        if rng.random() < 0.3:
            assistant.append(
                _maybe_mark({"type": "thinking", "thinking": _text(rng), "signature": "sig"}, rng, rate / 2)
            )
        if rng.random() < 0.1:
            assistant.append({"type": "redacted_thinking", "data": "xyz"})
        assistant.append(_maybe_mark({"type": "text", "text": _text(rng)}, rng, rate))
        for k in range(rng.choice([0, 0, 1, 2, 12])):
            tid = f"toolu_{turn}_{k}"
            pending.append(tid)
            assistant.append(
                _maybe_mark({"type": "tool_use", "id": tid, "name": "t0", "input": {"k": k}}, rng, rate)
            )
        if rng.random() < 0.2 and not pending:
            messages.append({"role": "assistant", "content": assistant[-1]["text"] or "ok"})
        else:
            messages.append({"role": "assistant", "content": assistant})
    body["messages"] = messages
    if rng.random() < 0.1:
        body["cache_control"] = _marker(rng)
    if rng.random() < 0.2:
        body["stream"] = True
    return body


def openai_request(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    rate = rng.choice([0.0, 0.1, 0.4])
    messages: list[dict[str, Any]] = []
    if rng.random() < 0.7:
        system: Any = _text(rng)
        if rng.random() < 0.4:
            system = [_maybe_mark({"type": "text", "text": system}, rng, rate)]
        messages.append({"role": "system", "content": system})
    for turn in range(rng.choice([1, 2, 4, 12])):
        content: Any = _text(rng)
        if rng.random() < 0.5:
            content = [
                _maybe_mark({"type": "text", "text": _text(rng)}, rng, rate) for _ in range(rng.randint(1, 3))
            ]
            if rng.random() < 0.2:
                content.append({"type": "image_url", "image_url": {"url": "https://x/y.png"}})
        messages.append({"role": "user", "content": content})
        if rng.random() < 0.3:
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": f"c{turn}", "function": {"name": "f"}}],
                }
            )
            messages.append({"role": "tool", "tool_call_id": f"c{turn}", "content": _text(rng)})
        messages.append({"role": "assistant", "content": _text(rng)})
    messages.pop()
    return {"model": rng.choice(["qwen3-max", "qwen-plus"]), "messages": messages}


def check(seed: int, planner: Planner, twin: Planner | None = None) -> int:
    """Plan one generated request everywhere; returns the number of markers inserted.

    ``twin`` gets the same history as ``planner`` and must plan identically (the policy
    is deterministic for a given history); without one, a fresh pair is compared.
    """
    if twin is None:
        planner, twin = Planner(), Planner()
    inserted = 0
    for kind, where_list, make in (
        ("anthropic", WHERE, anthropic_request),
        ("openai", OPENAI_WHERE, openai_request),
    ):
        body = make(seed)
        raw = orjson.dumps(body)
        for profile, where in where_list:
            result = planner.plan(body=raw, **where)
            assert result.error is None or not result.error.startswith("internal"), (seed, kind, result.error)
            assert result.profile == profile
            problems = validate(profile, raw, result.body)
            assert problems == [], (seed, profile, problems)
            planner.finished(result)  # no response: the claims are released
            again = twin.plan(body=raw, **where)
            assert again.body == result.body, (seed, profile)
            assert again.placements == result.placements, (seed, profile)
            twin.finished(again)
            if result.body is None:
                assert not any(p.action in ("inserted", "removed_invalid") for p in result.placements)
            inserted += len(result.inserted)
    return inserted


@settings(max_examples=1_500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=2**32))
def test_generated_requests_are_valid(seed: int) -> None:
    check(seed, Planner(), Planner())


def test_generator_exercises_placement() -> None:
    planner, twin = Planner(), Planner()
    assert sum(check(seed, planner, twin) for seed in range(300)) > 300


@pytest.mark.slow
def test_100k_generated_requests(request: pytest.FixtureRequest) -> None:
    # Deselected by addopts (-m "not slow"); also skipped under an empty -m. Run with -m slow.
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("100,000 generated requests: run with -m slow")
    planner, twin = Planner(), Planner()
    for seed in range(100_000):
        check(seed, planner, twin)


def _document_by_scan(
    positions: list[Any], fm: int, tail: int, ratio: float, lookback: int, bar: int
) -> int | None:
    """The document rule as a plain scan of the lookback window (the reference)."""
    for i in range(tail - 1, max(fm, tail - lookback) - 1, -1):
        before = positions[i - 1][6] if i > 0 else 0.0
        if positions[i][4] and (positions[i][6] - before) * ratio >= bar:
            return i
    return None


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=3000.0, allow_nan=False), st.booleans()),
        min_size=1,
        max_size=40,
    ),
    data=st.data(),
    ratio=st.floats(min_value=0.5, max_value=2.0),
    lookback=st.integers(min_value=1, max_value=25),
    bar=st.integers(min_value=1, max_value=4000),
)
def test_document_candidate_is_the_scan_of_its_window(
    sizes: list[tuple[float, bool]], data: Any, ratio: float, lookback: int, bar: int
) -> None:
    # The early exit (the whole window under the bar) must never hide a document.
    from cachewatch.planning._candidates import document_candidate

    positions: list[Any] = []
    cum = 0.0
    for size, ok in sizes:
        cum += size
        positions.append(("messages", (len(positions), 0), None, None, ok, None, cum))
    tail = data.draw(st.integers(min_value=0, max_value=len(positions) - 1))
    fm = data.draw(st.integers(min_value=0, max_value=tail))
    assert document_candidate(positions, fm, tail, ratio, lookback, bar) == _document_by_scan(
        positions, fm, tail, ratio, lookback, bar
    )
