"""Planner placements against a minimal prompt-cache model (until the emulator is wired in).

The model:

Anthropic semantics, simplified (research A.3): the prompt is a sequence of positions
(tools, system blocks, message content blocks; string content counts as one text block,
as the API renders it). Each breakpoint (explicit marker, or a top-level automatic one
on the last cacheable block) looks up its cumulative prefix hash and, on a miss, walks
back at most ``lookback`` positions counting itself. Reads are the tokens up to the
highest hit; every breakpoint after it whose prefix reaches the minimum writes one entry.
Tokens are ``ceil(len/4)`` per text and a flat 1,000 per image. No TTLs: requests are
sequential and immediate.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

import orjson

from cachewatch.planning._planner import Planner


@dataclass
class Result:
    read: int
    write: int
    total: int


def _canonical(block: Any) -> Any:
    if isinstance(block, str):
        return {"type": "text", "text": block}
    if isinstance(block, dict):
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def _tokens(block: Any) -> int:
    block = _canonical(block)
    if isinstance(block, dict):
        if block.get("type") == "text":
            return -(-len(block.get("text", "")) // 4)
        if block.get("type") in ("image", "image_url"):
            return 1_000
        if block.get("type") in ("thinking", "redacted_thinking"):
            return 0
    return -(-len(orjson.dumps(block)) // 4)


def _cacheable(block: Any) -> bool:
    block = _canonical(block)
    if not isinstance(block, dict) or block.get("type") in ("thinking", "redacted_thinking"):
        return False
    return block.get("type") != "text" or bool(str(block.get("text", "")).strip())


class CacheModel:
    def __init__(self, min_tokens: int = 1_024, lookback: int = 20) -> None:
        self.min_tokens = min_tokens
        self.lookback = lookback
        self.entries: set[bytes] = set()

    def send(self, body: bytes) -> Result:
        obj = orjson.loads(body)
        blocks: list[Any] = list(obj.get("tools") or [])
        system = obj.get("system")
        if isinstance(system, list):
            blocks.extend(system)
        elif system is not None:
            blocks.append(system)
        for message in obj.get("messages", []):
            content = message.get("content")
            blocks.extend(content if isinstance(content, list) else [content])
        digest = hashlib.sha256(str(obj.get("model")).encode()).digest()
        hashes: list[bytes] = []
        cumulative: list[int] = []
        running = 0
        breakpoints: list[int] = []
        for i, block in enumerate(blocks):
            digest = hashlib.sha256(digest + orjson.dumps(_canonical(block))).digest()
            hashes.append(digest)
            running += _tokens(block)
            cumulative.append(running)
            if isinstance(block, dict) and "cache_control" in block:
                breakpoints.append(i)
        if obj.get("cache_control") is not None:
            last = next((i for i in range(len(blocks) - 1, -1, -1) if _cacheable(blocks[i])), None)
            if last is not None and last not in breakpoints:
                breakpoints.append(last)
        breakpoints.sort()
        hit = -1
        for bp in breakpoints:
            for j in range(bp, max(bp - self.lookback, -1), -1):
                if hashes[j] in self.entries:
                    hit = max(hit, j)
                    break
        read = cumulative[hit] if hit >= 0 else 0
        written_to = hit
        for bp in breakpoints:
            if bp > hit and cumulative[bp] >= self.min_tokens:
                self.entries.add(hashes[bp])
                written_to = max(written_to, bp)
        write = (cumulative[written_to] if written_to >= 0 else 0) - read
        return Result(read=read, write=write, total=running)


# -- scenarios ---------------------------------------------------------------------------

ANTHROPIC = {"api": "messages", "host": "api.anthropic.com", "path": "/v1/messages"}
_WORDS = [
    "cache",
    "prompt",
    "token",
    "model",
    "request",
    "stream",
    "usage",
    "system",
    "tool",
    "result",
    "document",
    "user",
    "the",
    "of",
    "to",
    "and",
]


def words(n_chars: int, seed: int) -> str:
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < n_chars:
        w = rng.choice(_WORDS)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


def send(planner: Planner, cache: CacheModel, body: dict[str, Any]) -> Result:
    raw = orjson.dumps(body)
    plan = planner.plan(body=raw, **ANTHROPIC)
    assert plan.error is None
    result = cache.send(plan.body if plan.body is not None else raw)
    planner.started(plan)  # sequential traffic: each response starts before the next request
    planner.finished(plan)
    return result


def test_turn_n_plus_1_reads_what_turn_n_wrote() -> None:
    planner, cache = Planner(), CacheModel()
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "system": words(8_000, 1),
        "messages": [],
    }
    previous_total = 0
    for turn in range(8):
        body["messages"].append({"role": "user", "content": words(300, 100 + turn)})
        result = send(planner, cache, body)
        if turn == 0:
            assert result.read == 0
            assert result.write > 0
        else:
            # Everything the previous request sent (its whole prompt) is read now.
            assert result.read >= previous_total, (turn, result, previous_total)
        previous_total = result.total
        body["messages"].append({"role": "assistant", "content": words(400, 200 + turn)})


def test_agent_tool_loop_reads_across_iterations() -> None:
    planner, cache = Planner(), CacheModel()
    tools = [
        {
            "name": f"tool_{i}",
            "description": words(600, i),
            "input_schema": {"type": "object", "properties": {}},
        }
        for i in range(5)
    ]
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "tools": tools,
        "system": words(3_000, 7),
        "messages": [{"role": "user", "content": "Find the answer."}],
    }
    previous_total = 0
    for step in range(10):
        result = send(planner, cache, body)
        if step:
            assert result.read >= previous_total, (step, result)
        previous_total = result.total
        calls = [
            {"type": "tool_use", "id": f"t{step}_{k}", "name": "tool_1", "input": {"q": k}} for k in range(3)
        ]
        body["messages"].append(
            {"role": "assistant", "content": [{"type": "text", "text": "Looking."}, *calls]}
        )
        body["messages"].append(
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": c["id"], "content": words(500, step * 10 + k)}
                    for k, c in enumerate(calls)
                ],
            }
        )


def test_big_jump_beyond_lookback_still_reads() -> None:
    planner, cache = Planner(), CacheModel()
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "system": words(6_000, 3),
        "messages": [{"role": "user", "content": words(200, 4)}],
    }
    first = send(planner, cache, body)
    calls = [{"type": "tool_use", "id": f"t{k}", "name": "f", "input": {"k": k}} for k in range(15)]
    body["messages"].append({"role": "assistant", "content": calls})
    body["messages"].append(
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": f"t{k}", "content": "ok"} for k in range(15)],
        }
    )
    plan = planner.plan(body=orjson.dumps(body), **ANTHROPIC)
    assert any(p.reason == "previous_turn" and p.action == "inserted" for p in plan.placements)
    second = cache.send(plan.body or b"")
    assert second.read >= first.total


def test_ten_questions_over_one_document_read_it_after_the_first() -> None:
    planner, cache = Planner(), CacheModel()
    document = words(40_000, 11)
    results = []
    for q in range(10):
        body = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": document},
                        },
                        {"type": "text", "text": f"Question {q}: " + words(100, 50 + q)},
                    ],
                }
            ],
        }
        results.append(send(planner, cache, body))
    assert results[0].read == 0
    assert results[0].write > 0
    doc_tokens = results[0].write - 40  # the question part is small
    for result in results[1:]:
        assert result.read >= doc_tokens, result


def test_prefix_below_minimum_gets_no_marker() -> None:
    planner, cache = Planner(), CacheModel()
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "What is 2 + 2?"}],
    }
    raw = orjson.dumps(body)
    plan = planner.plan(body=raw, **ANTHROPIC)
    assert plan.body is None
    assert {p.action for p in plan.placements} == {"skipped_below_minimum"}
    assert cache.send(raw).write == 0


def test_haiku_4_5_needs_4096_tokens() -> None:
    planner = Planner()
    body = {
        "model": "claude-haiku-4-5-20251001",
        "max_tokens": 100,
        "system": words(8_000, 5),  # ~1,800 tokens: enough for Sonnet, not for Haiku 4.5
        "messages": [{"role": "user", "content": "hi"}],
    }
    plan = planner.plan(body=orjson.dumps(body), **ANTHROPIC)
    assert plan.body is None
    body["model"] = "claude-sonnet-4-5"
    assert planner.plan(body=orjson.dumps(body), **ANTHROPIC).body is not None
