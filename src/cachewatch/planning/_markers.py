"""Marker rules of the layout walk: which blocks take ``cache_control``, and the caller's markers.

Data flow: layout walk (``_walk_*``) -> **marker rules** -> each position's
eligibility and the caller's marker TTL; markers the provider would reject are removed
(or left and avoided), markers nested in sub-content are counted (they use slots too).
"""

from __future__ import annotations

from typing import Any, Final

from ._layout import Layout, Location, RemovedMarker

__all__ = [
    "ANTHROPIC_TARGETS",
    "drop_invalid",
    "eligible_anthropic",
    "eligible_part",
    "marker_of",
    "nested_markers",
    "rejects_marker",
]

#: Anthropic block types that accept ``cache_control`` (research A.2).
ANTHROPIC_TARGETS: Final = frozenset(
    {"text", "image", "document", "tool_use", "tool_result", "search_result", "server_tool_use"}
)
#: OpenAI-compatible content-part types that accept a marker (DashScope, research B.2).
_OPENAI_TARGETS: Final = frozenset({"text", "image_url", "video_url", "input_audio", "file"})
_NEVER_TARGETS: Final = frozenset({"thinking", "redacted_thinking"})


def marker_of(block: dict[str, Any]) -> tuple[bool, str | None]:
    """(has a marker, its TTL when it is a well-formed one).

    ``"cache_control": null`` is no marker (the SDKs' types make the field optional, and
    clients that write out every optional field send it): the block is planned as one
    without, and a marker placed there takes the null's place.
    """
    cc = block.get("cache_control")
    if cc is None:
        return False, None
    if isinstance(cc, dict):
        return True, ("1h" if cc.get("ttl") == "1h" else "5m")
    return True, None


def eligible_anthropic(block: Any) -> bool:
    if not isinstance(block, dict):
        return False
    kind = block.get("type")
    if kind not in ANTHROPIC_TARGETS:
        return False
    if kind == "text":
        text = block.get("text")
        return isinstance(text, str) and not text.isspace() and text != ""
    return True


def eligible_part(block: Any, native: bool) -> bool:
    if not isinstance(block, dict):
        return False
    kind = block.get("type")
    if kind in _NEVER_TARGETS:
        return False
    text = block.get("text")
    if kind == "text" or (kind is None and text is not None):
        return isinstance(text, str) and text != "" and not text.isspace()
    if native:
        return kind is None and ("image" in block or "video" in block or "audio" in block)
    return kind in _OPENAI_TARGETS


def rejects_marker(block: dict[str, Any]) -> bool:
    """Whether the provider is known to reject a marker on ``block`` (research A.2, E.2).

    ``thinking`` and ``redacted_thinking`` blocks, and text (typed, or DashScope native's
    typeless ``{"text": ...}``) that is not a non-blank string. A block of another type
    the planner does not mark itself (a server-tool result such as
    ``web_search_tool_result``, ``container_upload``, a type newer than this table) may
    well take one: the caller's marker there is kept and counted, never removed.
    """
    kind = block.get("type")
    if kind in _NEVER_TARGETS:
        return True
    if kind == "text" or (kind is None and "text" in block):
        text = block.get("text")
        return not isinstance(text, str) or text == "" or text.isspace()
    return False


def nested_markers(block: dict[str, Any], layout: Layout, at: int, depth: int = 0) -> None:
    """Count the markers inside a block's sub-content (they use breakpoint slots too).

    Sub-content is a ``content`` list (``tool_result``, ``search_result``, and the blocks
    nested in them) or a document's ``source.content`` list, followed a few levels down.
    """
    source = block.get("source")
    for content in (block.get("content"), source.get("content") if type(source) is dict else None):
        if type(content) is not list:
            continue
        for part in content:
            if type(part) is not dict:
                continue
            marker = part.get("cache_control")
            if type(marker) is dict:
                layout.nested.append((at - 0.5, "1h" if marker.get("ttl") == "1h" else "5m"))
            if depth < 3 and ("content" in part or "source" in part):
                nested_markers(part, layout, at, depth + 1)


def drop_invalid(
    block: dict[str, Any],
    loc: Location,
    index: tuple[int, ...],
    path: str,
    position: int,
    layout: Layout,
    remove_invalid: bool,
) -> bool:
    """A caller's marker the provider would reject: remove it (or leave it and avoid the block)."""
    if remove_invalid:
        del block["cache_control"]
        layout.removed.append(RemovedMarker(loc, index, path, position))
    else:
        # Left in place: it still takes a slot, and its TTL still orders the others.
        cc = block.get("cache_control")
        ttl = "1h" if type(cc) is dict and cc.get("ttl") == "1h" else "5m"
        layout.nested.append((position - 0.5, ttl))
    return False
