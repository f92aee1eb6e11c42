"""Independent reference oracle for the SPEC section 4 token partition.

Deliberately simple and non-incremental: it reads a recorded exchange's whole decoded
body with the standard library (``re`` + ``json``), finds the provider's final usage
object the way SPEC section 3 says, and partitions it by the rules of SPEC section 4 and
research C.3. It does NOT import cachewatch, so it can catch the parser's mistakes.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

__all__ = ["expected_partition", "final_usage", "provider_prompt_total"]

_LINE_END = re.compile(r"\r\n|\r|\n")


def _sse_payloads(body: str) -> list[tuple[str | None, Any]]:
    """(event name, parsed JSON data) for each event of an SSE body; non-JSON data skipped."""
    out: list[tuple[str | None, Any]] = []
    event: str | None = None
    data: list[str] = []
    for line in [*_LINE_END.split(body), ""]:
        if line == "":
            if data:
                with contextlib.suppress(ValueError):
                    out.append((event, json.loads("\n".join(data))))
            event, data = None, []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
    return out


def _unwrap(obj: Any) -> Any:
    envelope = isinstance(obj, dict) and isinstance(obj.get("data"), dict)
    if envelope and not ({"content", "choices", "type"} & obj.keys()):
        return obj["data"]
    return obj


def final_usage(api: str, body: str, is_sse: bool) -> dict[str, Any] | None:
    """The provider's final usage object for the whole response, or None."""
    if not is_sse:
        try:
            obj = _unwrap(json.loads(body))
        except ValueError:
            return None
        if not isinstance(obj, dict):
            return None
        usage = obj.get("usage")
        if usage is None and isinstance(obj.get("x_groq"), dict):
            usage = obj["x_groq"].get("usage")
        return usage if isinstance(usage, dict) else None
    usage: dict[str, Any] | None = None
    for event, raw in _sse_payloads(body):
        obj = _unwrap(raw)
        if not isinstance(obj, dict):
            continue
        kind = obj.get("type", event)
        if api == "messages":
            if kind == "message_start":
                usage = dict(obj["message"].get("usage") or {}) or None
            elif kind == "message_delta" and isinstance(obj.get("usage"), dict):
                usage = usage or {}
                usage.update({k: v for k, v in obj["usage"].items() if v is not None})
        elif api == "responses":
            if kind in ("response.completed", "response.incomplete", "response.failed"):
                usage = obj["response"].get("usage")
        else:  # chat_completions / dashscope_generation: the last event carrying usage
            if isinstance(obj.get("usage"), dict):
                usage = obj["usage"]
            elif isinstance(obj.get("x_groq"), dict) and isinstance(obj["x_groq"].get("usage"), dict):
                usage = obj["x_groq"]["usage"]
    return usage


def _n(d: dict[str, Any] | None, key: str) -> int:
    value = (d or {}).get(key)
    return value if isinstance(value, int) else 0


def provider_prompt_total(api: str, usage: dict[str, Any]) -> int:
    """The total prompt tokens the provider billed, straight from its own fields."""
    if "prompt_cache_hit_tokens" in usage or "prompt_cache_miss_tokens" in usage:
        return _n(usage, "prompt_cache_hit_tokens") + _n(usage, "prompt_cache_miss_tokens")
    if api == "messages":
        return (
            _n(usage, "input_tokens")
            + _n(usage, "cache_read_input_tokens")
            + _n(usage, "cache_creation_input_tokens")
        )
    if "prompt_tokens" in usage:
        return _n(usage, "prompt_tokens")
    return _n(usage, "input_tokens")


def expected_partition(api: str, body: str, is_sse: bool) -> dict[str, int] | None:
    """SPEC section 4 partition {input, cache_read, cache_write_5m, cache_write_1h, output}."""
    usage = final_usage(api, body, is_sse)
    if usage is None:
        return None
    total = provider_prompt_total(api, usage)
    output = _n(usage, "output_tokens") or _n(usage, "completion_tokens")
    w5 = w1 = 0
    if "prompt_cache_hit_tokens" in usage or "prompt_cache_miss_tokens" in usage:
        # DeepSeek: input is the miss count, cache_read the hit count.
        read, fresh = _n(usage, "prompt_cache_hit_tokens"), _n(usage, "prompt_cache_miss_tokens")
    elif api == "messages":
        # Anthropic: disjoint counters, per-TTL split when it adds up.
        fresh, read = _n(usage, "input_tokens"), _n(usage, "cache_read_input_tokens")
        write = _n(usage, "cache_creation_input_tokens")
        split = usage.get("cache_creation") or {}
        s5, s1 = _n(split, "ephemeral_5m_input_tokens"), _n(split, "ephemeral_1h_input_tokens")
        w5, w1 = (s5, s1) if s5 + s1 == write else (write, 0)
    else:
        # OpenAI-style: reads and writes are subsets of the total.
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        read = _n(details, "cached_tokens") or _n(usage, "cached_tokens") or _n(usage, "num_cached_tokens")
        w5 = _n(details, "cache_write_tokens") or _n(details, "cache_creation_input_tokens")
        if read + w5 > total:
            # Overlapping counters (OpenRouter for Gemini: cached 2161 and cache_write 2161
            # of 2168). The prompt cost matches 2161 read + 7 fresh: the write is dropped.
            w5 = 0
        fresh = total - read - w5
    result = {
        "input": fresh,
        "cache_read": read,
        "cache_write_5m": w5,
        "cache_write_1h": w1,
        "output": output,
    }
    assert min(result.values()) >= 0, result
    return result
