"""Deterministic local token counts for the emulator.

The emulator has no tokenizer: it needs counts that are *stable* (the same block
always costs the same), *additive* (a prefix costs the sum of its blocks, so cache
reads and writes partition the prompt exactly) and *roughly realistic* (about one
token per short English word). The rule:

* a run of word characters (``\\w+``, CJK excluded) costs ``ceil(len / 4)`` tokens,
  so ``"cache"`` is 2 tokens and ``"the"`` is 1;
* every CJK / kana / hangul character costs 1 token;
* every other non-space character (punctuation, symbols) costs 1 token;
* whitespace is free.

Structured values (tool definitions, ``tool_use`` inputs, unknown block types) are
counted by walking their JSON: each object key counts like text, each string value
like text, each number, boolean or null as 1 token. Images, videos and binary
documents cost a fixed :data:`IMAGE_TOKENS` each, whatever their size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["IMAGE_TOKENS", "block_tokens", "count_text_tokens", "json_tokens"]

#: Fixed cost of one image, video frame set or binary (base64/url/file) document.
IMAGE_TOKENS = 1_600

_CJK = "\u2e80-\u9fff\u3040-\u30ff\uac00-\ud7af\uf900-\ufaff"
_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")
_BINARY_TYPES = frozenset({"image", "image_url", "input_image", "video", "video_url", "input_audio", "audio"})
# Fields that describe a block rather than carry content; they are free.
_FREE_KEYS = frozenset({"type", "cache_control", "id", "tool_use_id", "signature", "citations"})


def count_text_tokens(text: str) -> int:
    """Tokens in a piece of text, by the rule in the module docstring."""
    total = 0
    for match in _TOKEN_RE.finditer(text):
        total += (match.end() - match.start() + 3) // 4
    return total


def json_tokens(value: object) -> int:
    """Tokens in a JSON value: keys and strings as text, scalars as 1."""
    if isinstance(value, str):
        return count_text_tokens(value)
    if isinstance(value, Mapping):
        return sum(count_text_tokens(str(k)) + json_tokens(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(json_tokens(v) for v in value)
    return 1


def block_tokens(block: object) -> int:
    """Tokens in one prompt block (a content part, a tool definition, a tool call...).

    ``cache_control`` and other descriptive fields never cost anything, so adding a
    marker never changes a count.
    """
    if isinstance(block, str):
        return count_text_tokens(block)
    if not isinstance(block, Mapping):
        return json_tokens(block)
    kind = block.get("type")
    if kind in _BINARY_TYPES or (kind is None and ("image" in block or "video" in block)):
        return IMAGE_TOKENS
    if kind == "text" or (kind is None and isinstance(block.get("text"), str)):
        text = block.get("text")
        return count_text_tokens(text) if isinstance(text, str) else 0
    if kind == "thinking":
        thinking = block.get("thinking")
        return count_text_tokens(thinking) if isinstance(thinking, str) else 0
    if kind == "document":
        source = block.get("source")
        extra = sum(
            count_text_tokens(v) for k, v in block.items() if k in {"title", "context"} and isinstance(v, str)
        )
        if (
            isinstance(source, Mapping)
            and source.get("type") == "text"
            and isinstance(source.get("data"), str)
        ):
            return extra + count_text_tokens(source["data"])
        if isinstance(source, Mapping) and source.get("type") == "content":
            return extra + sum(block_tokens(b) for b in _as_list(source.get("content")))
        return extra + IMAGE_TOKENS
    if kind == "tool_result":
        content = block.get("content")
        return sum(block_tokens(b) for b in _as_list(content))
    return json_tokens({k: v for k, v in block.items() if k not in _FREE_KEYS})


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [value]
