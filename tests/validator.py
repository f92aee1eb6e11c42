"""An independent validator of planned request bodies, written from the provider rules.

It does not import the planner. Its rules come from ``research/provider-caching-facts.md``
(A.1-A.3 Anthropic, B.2/B.5 DashScope, C.4 relays, E checklist) and SPEC section 6:

* at most 4 breakpoints per request, counting the caller's markers (also those nested
  in ``tool_result.content``), a top-level ``cache_control`` and slots reserved for a
  relay (1 for the ``relay`` profile);
* markers only on tools (Anthropic first-party only, never one with ``defer_loading:
  true``: a 400), system text blocks and top-level
  message content blocks of an accepted type; never on ``thinking`` /
  ``redacted_thinking``, empty or whitespace-only text, or nested sub-content;
* in tools -> system -> messages order every ``1h`` marker precedes every ``5m`` one;
  a top-level ``cache_control`` never differs in TTL from an explicit marker on the last
  cacheable block;
* the planned body equals the original except for added ``cache_control`` fields, the
  conversion of a string ``system``/``content`` into a one-block list carrying a marker,
  and the removal of caller markers the provider would reject;
* no ``ttl`` field where the profile forbids one (DashScope, relays);
* a top-level ``cache_control`` only where automatic caching exists (Anthropic first-party).

``validate(...)`` returns a list of violations (empty when the body is valid).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["RULES", "ProfileRules", "validate"]


@dataclass(frozen=True)
class ProfileRules:
    fmt: str  # "anthropic", "openai", "native"
    max_markers: int = 4
    reserved: int = 0
    ttl_field: bool = False
    top_level: bool = False
    tool_markers: bool = False


RULES: dict[str, ProfileRules] = {
    "anthropic": ProfileRules("anthropic", ttl_field=True, top_level=True, tool_markers=True),
    "dashscope": ProfileRules("anthropic"),
    "relay": ProfileRules("anthropic", reserved=1),
    "dashscope_openai": ProfileRules("openai"),
    "dashscope_native": ProfileRules("native"),
}

_ANTHROPIC_OK = {"text", "image", "document", "tool_use", "tool_result", "search_result", "server_tool_use"}
_OPENAI_OK = {"text", "image_url", "video_url", "input_audio", "file"}


def _ttl(marker: Any) -> str:
    return "1h" if isinstance(marker, dict) and marker.get("ttl") == "1h" else "5m"


def _bad_text(value: Any) -> bool:
    return not isinstance(value, str) or value.strip() == ""


def _target_ok(block: Any, rules: ProfileRules) -> bool:
    if not isinstance(block, dict):
        return False
    kind = block.get("type")
    if kind in ("thinking", "redacted_thinking"):
        return False
    if rules.fmt == "anthropic":
        if kind == "text":
            return not _bad_text(block.get("text"))
        return kind in _ANTHROPIC_OK
    if kind == "text" or (kind is None and "text" in block):
        return not _bad_text(block.get("text"))
    if rules.fmt == "native":
        return kind is None and any(k in block for k in ("image", "video", "audio"))
    return kind in _OPENAI_OK


def _blocks(body: dict[str, Any], rules: ProfileRules) -> list[tuple[str, Any]]:
    """Top-level blocks in render order as (section, block); strings stay strings."""
    out: list[tuple[str, Any]] = []
    if rules.fmt == "anthropic":
        out.extend(("tools", t) for t in body.get("tools") or [])
        system = body.get("system")
        if isinstance(system, list):
            out.extend(("system", b) for b in system)
        elif system is not None:
            out.append(("system", system))
        messages = body.get("messages") or []
    elif rules.fmt == "openai":
        messages = body.get("messages") or []
    else:
        messages = (body.get("input") or {}).get("messages") or []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            out.extend(("messages", b) for b in content)
        elif content is not None:
            out.append(("messages", content))
    return out


def _nested_markers(block: Any, depth: int = 0) -> list[Any]:
    """Markers inside a block's sub-content: ``content`` lists and a document's ``source.content``."""
    if not isinstance(block, dict):
        return []
    source = block.get("source")
    found: list[Any] = []
    for content in (block.get("content"), source.get("content") if isinstance(source, dict) else None):
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, dict):
                if isinstance(part.get("cache_control"), dict):  # null is no marker
                    found.append(part["cache_control"])
                if depth < 3:
                    found.extend(_nested_markers(part, depth + 1))
    return found


def _strip(value: Any, original: Any, path: str, problems: list[str], rules: ProfileRules) -> None:
    """Compare planned ``value`` with ``original``, allowing only the permitted differences."""
    if isinstance(original, str) and isinstance(value, list):
        # String -> one-block list carrying a marker.
        if len(value) != 1 or not isinstance(value[0], dict) or "cache_control" not in value[0]:
            problems.append(f"{path}: string converted without a marker")
            return
        block = dict(value[0])
        block.pop("cache_control")
        expected = {"text": original} if rules.fmt == "native" else {"type": "text", "text": original}
        if block != expected or list(block) != list(expected):
            problems.append(f"{path}: conversion changed the text block: {block!r}")
        return
    if isinstance(original, dict) and isinstance(value, dict):
        keys_v = [k for k in value if k != "cache_control"]
        keys_o = [k for k in original if k != "cache_control"]
        if keys_v != keys_o:
            problems.append(f"{path}: keys changed {keys_o} -> {keys_v}")
            return
        if original.get("cache_control") is None and "cache_control" in original:
            # "cache_control": null is no marker (the SDKs' field is optional): a marker
            # may take its place, where it stands; nothing else may.
            if "cache_control" not in value:
                problems.append(f"{path}: a null cache_control was removed")
            elif list(value).index("cache_control") != list(original).index("cache_control"):
                problems.append(f"{path}: a null cache_control moved")
            elif value["cache_control"] is not None and not _target_ok(original, rules):
                problems.append(f"{path}: a marker was placed on a block that cannot take one")
        elif "cache_control" in original:
            if "cache_control" in value:
                if value["cache_control"] != original["cache_control"]:
                    problems.append(f"{path}: caller marker changed")
                elif list(value).index("cache_control") != list(original).index("cache_control"):
                    problems.append(f"{path}: caller marker moved")
            elif _target_ok(original, rules) and isinstance(original["cache_control"], dict):
                problems.append(f"{path}: a valid caller marker was removed")
        elif "cache_control" in value and list(value)[-1] != "cache_control":
            problems.append(f"{path}: added marker is not the last key")
        for k in keys_o:
            _strip(value[k], original[k], f"{path}.{k}", problems, rules)
        return
    if isinstance(original, list) and isinstance(value, list):
        if len(original) != len(value):
            problems.append(f"{path}: list length changed")
            return
        for i, (v, o) in enumerate(zip(value, original, strict=True)):
            _strip(v, o, f"{path}.{i}", problems, rules)
        return
    if type(value) is not type(original) or value != original:
        problems.append(f"{path}: value changed")


def _check_added_markers(
    planned: dict[str, Any], original: dict[str, Any], rules: ProfileRules, problems: list[str]
) -> None:
    """Added markers: on valid targets, not nested, no forbidden ttl, tools only where allowed."""
    orig_blocks = _blocks(original, rules)
    new_blocks = _blocks(planned, rules)
    if len(orig_blocks) != len(new_blocks):
        problems.append("block count changed")
        return
    for i, ((section, new), (_, old)) in enumerate(zip(new_blocks, orig_blocks, strict=True)):
        if isinstance(new, list):  # converted string
            new = new[0]
        if not isinstance(new, dict) or "cache_control" not in new:
            continue
        if isinstance(old, dict) and "cache_control" in old:
            continue  # the caller's own
        marker = new["cache_control"]
        if marker.get("type") != "ephemeral" or set(marker) - {"type", "ttl"}:
            problems.append(f"block {i}: malformed marker {marker!r}")
        if "ttl" in marker and not rules.ttl_field:
            problems.append(f"block {i}: ttl field on a profile that forbids it")
        if section == "tools" and not rules.tool_markers:
            problems.append(f"block {i}: marker on a tool definition")
        if section == "tools" and new.get("defer_loading") is True:
            problems.append(f"block {i}: marker on a deferred tool (defer_loading)")
        if section != "tools" and not _target_ok(new, rules):
            problems.append(f"block {i}: marker on an invalid target {new.get('type')!r}")
        if isinstance(old, dict):
            for nested_new, nested_old in zip(
                (new.get("content") if isinstance(new.get("content"), list) else []),
                (old.get("content") if isinstance(old.get("content"), list) else []),
                strict=False,
            ):
                if (
                    isinstance(nested_new, dict)
                    and "cache_control" in nested_new
                    and "cache_control" not in (nested_old if isinstance(nested_old, dict) else {})
                ):
                    problems.append(f"block {i}: nested marker added")


def _markers(body: dict[str, Any], rules: ProfileRules) -> list[str]:
    ttls: list[str] = []
    for _, block in _blocks(body, rules):
        if isinstance(block, dict):
            # A nested part's prefix ends inside its parent block: it comes first.
            ttls.extend(_ttl(m) for m in _nested_markers(block))
            if "cache_control" in block:
                ttls.append(_ttl(block["cache_control"]))
    return ttls


def validate(profile: str, original: bytes, planned: bytes | None) -> list[str]:
    """Violations of the provider rules in ``planned`` (None = unchanged) for ``original``."""
    rules = RULES.get(profile)
    if planned is None or rules is None:
        return [] if planned is None else [f"profile {profile!r} must not change bodies"]
    orig = orjson.loads(original)
    new = orjson.loads(planned)
    problems: list[str] = []
    top_orig = orig.get("cache_control")
    top_new = new.get("cache_control")
    orig_stripped = {k: v for k, v in orig.items() if k not in ("cache_control", "stream_options")}
    new_stripped = {k: v for k, v in new.items() if k not in ("cache_control", "stream_options")}
    if [k for k in new if k != "cache_control"] != [k for k in orig if k != "cache_control"] and not (
        "stream_options" in new and "stream_options" not in orig
    ):
        problems.append("top-level keys changed")
    _strip(new_stripped, orig_stripped, "$", problems, rules)
    if top_orig is not None and top_new != top_orig:
        problems.append("caller's top-level cache_control changed")
    if top_new is not None and top_orig is None:
        if not rules.top_level:
            problems.append("top-level cache_control on a profile without automatic caching")
        if "cache_control" in orig:
            # In place of the caller's "cache_control": null (no marker), where it stood.
            if list(new).index("cache_control") != list(orig).index("cache_control"):
                problems.append("a top-level cache_control added for a null moved")
        elif list(new)[-1] != "cache_control":
            problems.append("added top-level cache_control is not the last key")
    _check_added_markers(new, orig, rules, problems)

    ttls = _markers(new, rules)
    count = len(ttls) + (1 if top_new is not None else 0)
    limit = rules.max_markers - rules.reserved
    original_count = len(_markers(orig, rules)) + (1 if top_orig is not None else 0)
    if count > max(limit, original_count) or (count > limit and count > original_count):
        problems.append(f"{count} breakpoints, {limit} allowed")
    order = ttls + ([_ttl(top_new)] if top_new is not None else [])
    orig_order = _markers(orig, rules) + ([_ttl(top_orig)] if top_orig is not None else [])
    if _disordered(order) and not _disordered(orig_order):
        problems.append(f"1h marker after a 5m marker: {order}")
    if _top_conflict(new, rules) and not _top_conflict(orig, rules):
        problems.append("top-level TTL conflicts with the marker on the last block")
    return problems


def _top_conflict(body: dict[str, Any], rules: ProfileRules) -> bool:
    top = body.get("cache_control")
    if top is None:
        return False
    blocks = [b for _, b in _blocks(body, rules)]
    # The automatic breakpoint lands on the last cacheable block; string content renders
    # as a text block and is cacheable unless blank.
    last = next(
        (b for b in reversed(blocks) if (isinstance(b, str) and b.strip()) or _target_ok(b, rules)),
        None,
    )
    return isinstance(last, dict) and "cache_control" in last and _ttl(last["cache_control"]) != _ttl(top)


def _disordered(ttls: list[str]) -> bool:
    seen_5m = False
    for ttl in ttls:
        if ttl == "5m":
            seen_5m = True
        elif seen_5m:
            return True
    return False
