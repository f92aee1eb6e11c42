"""Pieces shared by the three wire formats: the parsed request and prompt records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from ._cache import Position, Prompt
from ._completion import ToolSpec
from ._tokens import block_tokens

__all__ = ["ParsedRequest", "RequestError", "position", "strip_markers"]


class RequestError(ValueError):
    """A malformed request (HTTP 400); the message is shown to the caller."""


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """One request, reduced to what the cache model and the reply need."""

    model: str
    prompt: Prompt
    stream: bool = False
    max_tokens: int | None = None
    top_level: Mapping[str, object] | None = None
    tool: ToolSpec | None = None
    #: Say a few words before the tool call (the call was asked for in text, not forced).
    preamble: bool = False
    options: Mapping[str, object] = field(default_factory=dict)


def strip_markers(block: object) -> object:
    """``block`` without ``cache_control``, also inside nested ``content`` lists."""
    if not isinstance(block, Mapping):
        return block
    out: dict[str, object] = {}
    for key, value in block.items():
        if key == "cache_control":
            continue
        if key == "content" and isinstance(value, list):
            out[key] = [strip_markers(v) for v in value]
        else:
            out[key] = value
    return out


def _canonical(block: object) -> object:
    """What the model sees of a block: the same for every form of the same text.

    A plain string, ``{"type": "text", "text": s}`` and DashScope native's typeless
    ``{"text": s}`` render the same prompt, with or without ``cache_control``. The
    providers document it: Alibaba's context-cache page writes a cache with a system
    message in list form with a marker and hits it with the same message sent as a plain
    string (https://www.alibabacloud.com/help/en/model-studio/context-cache, "cache block
    A is hit"; the Chinese page says the list form is needed only to carry the marker),
    and the Anthropic Messages reference calls ``"content": "Hello"`` shorthand for one
    text block, "equivalent" to ``[{"type": "text", "text": "Hello"}]``.
    """
    if isinstance(block, str):
        return [["text", block], ["type", "text"]]
    stripped = strip_markers(block)
    if isinstance(stripped, Mapping):
        if "type" not in stripped and isinstance(stripped.get("text"), str):
            stripped = {**stripped, "type": "text"}
        return sorted([str(k), v] for k, v in stripped.items())
    return stripped


def _is_empty_text(block: Mapping[str, object]) -> bool:
    text = block.get("text")
    kind = block.get("type", "text" if "text" in block else None)
    return kind == "text" and (not isinstance(text, str) or not text.strip())


def position(
    section: str,
    path: str,
    block: object,
    *,
    header: object = None,
    tokens: int | None = None,
) -> Position:
    """A prompt position for ``block`` at ``path`` (``header`` is hashed with it: role, index...).

    The record is what the model would see: a string is the same as a one-text-block
    list, and the order of a block's own keys does not matter, but everything nested
    (``tool_use`` inputs, tool schemas) keeps the caller's key order, because the
    real APIs render it as text and match byte-exactly.
    """
    marker = block.get("cache_control") if isinstance(block, Mapping) else None
    error: str | None = None
    if isinstance(block, Mapping):
        kind = block.get("type")
        if kind in ("thinking", "redacted_thinking"):
            error = f"{path}.{kind}.cache_control: Extra inputs are not permitted"
        elif section == "tools" and block.get("defer_loading") is True:
            error = (
                f"Tool '{block.get('name')}' cannot have both defer_loading=true and cache_control "
                "set. Tools with defer_loading cannot use prompt caching."
            )
        elif _is_empty_text(block):
            error = f"{path}.text: cache_control cannot be set for empty text blocks"
    record = orjson.dumps([section, header, _canonical(block)])
    return Position(
        section=section,
        record=record,
        tokens=block_tokens(block) if tokens is None else tokens,
        marker=marker if isinstance(marker, Mapping) else None,
        marker_error=error,
        path=path,
    )
