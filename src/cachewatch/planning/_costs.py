"""The cheap token estimate: model families, their constants and the cost of each block.

Data flow: request -> planner -> :class:`~cachewatch.planning._tokens.PrefixCounter`
(running totals) -> **block costs** (characters -> tokens, per family).

A block costs its character count divided by a per-family characters-per-token figure.
``str.isascii()`` and ``len(str.encode())`` are C loops, so a 1 MB body costs
microseconds. Wide characters (CJK and the like) are weighted separately because they
carry far more tokens per character. Structured values (tool schemas, ``tool_use``
input) are measured through their ``orjson`` serialisation. Images and binary documents
get a flat cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import orjson

__all__ = [
    "DEFAULT_FAMILY_COSTS",
    "FamilyCosts",
    "block_cost",
    "content_cost",
    "json_cost",
    "message_cost",
    "model_family",
    "responses_item_cost",
    "text_cost",
]

#: Prefix of a (lower-cased, vendor-prefix stripped) model id -> tokenizer family.
_FAMILY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("claude", "claude"),
    ("anthropic.claude", "claude"),
    ("qwen", "qwen"),
    ("qwq", "qwen"),
    ("qvq", "qwen"),
    ("gpt", "gpt"),
    ("chatgpt", "gpt"),
    ("o1", "gpt"),
    ("o3", "gpt"),
    ("o4", "gpt"),
    ("text-", "gpt"),
    ("deepseek", "deepseek"),
    ("kimi", "kimi"),
    ("moonshot", "kimi"),
    ("glm", "glm"),
    ("minimax", "minimax"),
    ("abab", "minimax"),
    ("llama", "llama"),
    ("meta-llama", "llama"),
    ("mistral", "mistral"),
    ("mixtral", "mistral"),
    ("codestral", "mistral"),
    ("gemini", "gemini"),
    ("gemma", "gemini"),
)


#: model id -> family, memoised (the planner asks once per request; ids repeat).
_family_cache: dict[str, str] = {}


def model_family(model: str | None) -> str:
    """The tokenizer family of a model id (``claude``, ``gpt``, ``qwen``...), ``other`` if unknown.

    Vendor prefixes such as ``anthropic/`` (OpenRouter) or ``us.anthropic.`` (Bedrock)
    are ignored.
    """
    if not model:
        return "other"
    found = _family_cache.get(model)
    if found is None:
        found = _model_family(model)
        if len(_family_cache) >= 4096:
            _family_cache.clear()
        _family_cache[model] = found
    return found


def _model_family(model: str) -> str:
    m = model.lower()
    slash = m.rfind("/")
    if slash != -1:
        m = m[slash + 1 :]
    for prefix, family in _FAMILY_PREFIXES:
        if m.startswith(prefix):
            return family
    # Bedrock-style "us.anthropic.claude-..." or "global.anthropic.claude-...".
    if ".claude" in m:
        return "claude"
    return "other"


@dataclass(frozen=True, slots=True)
class FamilyCosts:
    """The cheap estimator's constants for one tokenizer family (fitted on the corpus)."""

    #: Characters per token for ASCII text.
    ascii_cpt: float = 4.0
    #: Characters per token for wide (non-ASCII) characters.
    wide_cpt: float = 1.2
    #: Characters per token for serialised JSON (tool schemas, tool inputs).
    json_cpt: float = 3.2
    #: Tokens added per message (role and turn markers).
    per_message: float = 4.0
    #: Tokens added per content block.
    per_block: float = 1.0
    #: Tokens added once when tools are present (the provider's tool-use preamble).
    tools_preamble: float = 0.0
    #: Tokens added once per request.
    per_request: float = 3.0
    #: Flat cost of one image.
    image: float = 1_000.0
    #: Flat cost of one binary (PDF...) document.
    document: float = 1_500.0


#: Fitted on the recorded-exchange corpus (``tests/data/``) (see ``benchmarks/estimator_error.py``).
DEFAULT_FAMILY_COSTS: Mapping[str, FamilyCosts] = {
    "claude": FamilyCosts(
        ascii_cpt=4.6,
        wide_cpt=1.0,
        json_cpt=4.5,
        per_message=5.0,
        per_block=3.0,
        tools_preamble=550.0,
        per_request=3.0,
    ),
    "gpt": FamilyCosts(ascii_cpt=4.8, json_cpt=5.0, per_message=4.0, per_block=1.0, per_request=3.0),
    "qwen": FamilyCosts(ascii_cpt=4.0, wide_cpt=1.4, json_cpt=4.0, per_message=4.0, tools_preamble=150.0),
    "other": FamilyCosts(ascii_cpt=4.6, json_cpt=5.0, per_message=3.0, per_block=2.0, per_request=5.0),
}

_IMAGE_TYPES = frozenset({"image", "image_url", "input_image", "video", "video_url", "input_audio", "audio"})


def text_cost(text: str, costs: FamilyCosts) -> float:
    n = len(text)
    if n == 0:
        return 0.0
    if text.isascii():
        return n / costs.ascii_cpt
    # UTF-8 bytes beyond one per character: ~2 per CJK character, 1 per accented letter.
    extra = len(text.encode("utf-8", "surrogatepass")) - n
    wide = min(n, extra / 2.0)
    return (n - wide) / costs.ascii_cpt + wide / costs.wide_cpt


def json_cost(value: object, costs: FamilyCosts) -> float:
    if isinstance(value, str):
        return text_cost(value, costs)
    try:
        raw = orjson.dumps(value)
    except TypeError:
        return 0.0
    return len(raw) / costs.json_cpt


def block_cost(block: object, costs: FamilyCosts) -> float:
    """Cheap token estimate of one content block / content part / tool definition."""
    if isinstance(block, str):
        return text_cost(block, costs)
    if not isinstance(block, dict):
        return json_cost(block, costs)
    kind = block.get("type")
    text = block.get("text")
    if isinstance(text, str) and (kind is None or kind in ("text", "input_text", "output_text")):
        return text_cost(text, costs) + costs.per_block
    if kind in _IMAGE_TYPES or (kind is None and ("image" in block or "video" in block)):
        return costs.image
    if kind == "tool_result":
        content = block.get("content")
        inner = 0.0
        if isinstance(content, str):
            inner = text_cost(content, costs)
        elif isinstance(content, list):
            for part in content:
                inner += block_cost(part, costs)
        return inner + 3 * costs.per_block
    if kind == "tool_use":
        return (
            json_cost(block.get("input"), costs)
            + text_cost(str(block.get("name", "")), costs)
            + 3 * costs.per_block
        )
    if kind in ("thinking", "redacted_thinking"):
        # Thinking from earlier turns is not billed as input (research A.9); count nothing,
        # which errs towards fewer markers, never a wasted one.
        return 0.0
    if kind == "document":
        source = block.get("source")
        if isinstance(source, dict):
            data = source.get("data")
            if source.get("type") == "text" and isinstance(data, str):
                return text_cost(data, costs) + costs.per_block
            if source.get("type") == "content":
                inner_content = source.get("content")
                if isinstance(inner_content, list):
                    return sum(block_cost(part, costs) for part in inner_content)
                if isinstance(inner_content, str):
                    return text_cost(inner_content, costs)
        return costs.document
    return json_cost(block, costs)


def content_cost(content: object, costs: FamilyCosts) -> float:
    if isinstance(content, str):
        return text_cost(content, costs)
    if isinstance(content, list):
        total = 0.0
        for block in content:
            total += block_cost(block, costs)
        return total
    if content is None:
        return 0.0
    return json_cost(content, costs)


def message_cost(message: object, c: FamilyCosts) -> float:
    if not isinstance(message, dict):
        return 0.0
    total = c.per_message + content_cost(message.get("content"), c)
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list):
        for call in tool_calls:
            total += json_cost(call.get("function") if isinstance(call, dict) else call, c) + 3 * c.per_block
    return total


def responses_item_cost(item: object, c: FamilyCosts) -> float:
    if not isinstance(item, dict):
        return 0.0
    kind = item.get("type")
    if kind in (None, "message"):
        return c.per_message + content_cost(item.get("content"), c)
    if kind == "function_call":
        return json_cost(item.get("arguments"), c) + text_cost(str(item.get("name", "")), c) + 4 * c.per_block
    if kind == "function_call_output":
        return json_cost(item.get("output"), c) + 4 * c.per_block
    if kind == "reasoning":
        return 0.0
    return json_cost(item, c)
