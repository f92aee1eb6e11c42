"""The layout walk of Anthropic Messages bodies (``messages``: Anthropic and the relays that speak it).

Data flow: request body -> ``_walk.walk`` -> **this walker** -> layout.

Positions: every tool definition (one with ``defer_loading: true`` takes no marker),
then the system blocks, then every message's content blocks; ``tool_choice`` and
``thinking`` are folded into the digest before the first message (they invalidate the
messages cache only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ._canonical import (
    ROLE_RECORDS,
    SEED,
    TEXT_RECORD,
    block_digest,
    json_digest,
    new_hasher,
    role_record,
    tagged,
    text_digest,
)
from ._layout import INPUT_ROLES, Layout
from ._markers import (
    ANTHROPIC_TARGETS,
    drop_invalid,
    eligible_anthropic,
    marker_of,
    nested_markers,
    rejects_marker,
)
from ._tokens import PrefixCounter

__all__ = ["walk_anthropic"]


def walk_anthropic(
    obj: Mapping[str, Any], counter: PrefixCounter, on_tools: bool, remove_invalid: bool, layout: Layout
) -> Layout | None:
    positions = layout.positions
    digests = layout.digests
    blocks = layout.block_digests
    h = new_hasher(SEED)
    update = h.update
    digest = h.digest
    layout.head = digest()
    tools = obj.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return None
        counter.add_tools(tools)
        jsons: list[bytes | None] = []
        cums = counter.add_definitions(tools, jsons)
        for t, tool in enumerate(tools):
            if not isinstance(tool, dict):
                return None
            # A deferred tool (tool search) takes no marker: "Tools with defer_loading
            # cannot use prompt caching" (HTTP 400), so a caller's there is removed too.
            deferred = tool.get("defer_loading") is True
            ok = on_tools and not deferred
            ttl = None
            # A plain definition (no text) is digested from the JSON it was measured by,
            # unless it has a marker (which may be removed here).
            serialised = jsons[t]
            if "cache_control" in tool:
                serialised = None
                has, ttl = marker_of(tool)
                if has and (ttl is None or deferred):
                    ok = drop_invalid(
                        tool, "tools", (t,), f"tools.{t}", len(positions), layout, remove_invalid
                    )
                    ttl = None
            d = block_digest(tool) if serialised is None else json_digest(tool, serialised)
            update(d)
            positions.append(("tools", (t,), tools, t, ok, ttl, cums[t]))
            digests.append(digest())
            blocks.append(d)
        if tools:
            layout.tools_digest = digests[-1]
    system = obj.get("system")
    if system is not None:
        counter.add_message()
        anchor = new_hasher(SEED)
        if isinstance(system, str):
            raw = counter.add_block(system)
            ok = system != "" and not system.isspace()
            d = block_digest(system)
            update(d)
            anchor.update(d)
            positions.append(("system", (0,), obj, "system", ok, None, raw))
            digests.append(digest())
            blocks.append(d)
            layout.system_anchor = anchor.digest()
        elif isinstance(system, list):
            for s, block in enumerate(system):
                raw = counter.add_block(block)
                if not isinstance(block, dict):
                    return None
                ok = eligible_anthropic(block)
                has, ttl = marker_of(block)
                if has and (ttl is None or (not ok and rejects_marker(block))):
                    ok = drop_invalid(
                        block, "system", (s,), f"system.{s}", len(positions), layout, remove_invalid
                    )
                    ttl = None
                d = block_digest(block)
                update(d)
                anchor.update(d)
                positions.append(("system", (s,), system, s, ok, ttl, raw))
                digests.append(digest())
                blocks.append(d)
            if system:
                layout.system_anchor = anchor.digest()
        else:
            return None
    layout.first_message = len(positions)
    messages = obj.get("messages")
    if not isinstance(messages, list):
        return None
    ctx = obj.get("tool_choice"), obj.get("thinking")
    if ctx != (None, None):
        record = tagged(b"c", orjson.dumps(ctx))
        update(record)
        layout.lane = int.from_bytes(record[:8], "little")
    roles = layout.roles
    per_message = counter.per_message
    # A local: CPython 3.11 compiles a method call on a name bound by an import without
    # LOAD_METHOD (a bound method per call), and ROLE_RECORDS is imported.
    role_records = ROLE_RECORDS
    add_text = counter.add_text
    add_block = counter.add_block
    dumps = orjson.dumps
    first_input: Any = None
    first_reply: Any = None
    for m, message in enumerate(messages):
        if type(message) is not dict:
            return None
        role = message.get("role")
        role_s = role if type(role) is str else ""
        roles.append(role_s)
        if role_s == "assistant":
            layout.first_turn = False
            layout.assistants += 1
        anchor_h = None
        if first_input is None and role_s in INPUT_ROLES:
            first_input = anchor_h = new_hasher(SEED)
        elif role_s == "assistant" and layout.first_reply_anchor is None and first_reply is None:
            first_reply = anchor_h = new_hasher(SEED)
        counter.raw += per_message  # counter.add_message()
        update(role_records.get(role_s) or role_record(role_s))
        content = message.get("content")
        start = len(positions)
        if type(content) is str:
            raw = add_block(content)
            ok = content != "" and not content.isspace()
            d = text_digest(content.encode("utf-8", "surrogatepass"), TEXT_RECORD)
            update(d)
            if anchor_h is not None:
                anchor_h.update(d)
            positions.append(("messages", (m, 0), message, "content", ok, None, raw))
            digests.append(digest())
        elif type(content) is list:
            for b, block in enumerate(content):
                if type(block) is not dict:
                    return None
                kind = block.get("type")
                if kind == "text":
                    text = block.get("text")
                    if type(text) is str:
                        ok = text != "" and not text.isspace()
                        raw = add_text(text)
                        if len(block) == 2:  # {"type": "text", "text": ...}: the commonest block
                            d = text_digest(text.encode("utf-8", "surrogatepass"), TEXT_RECORD)
                        else:
                            d = block_digest(block)
                    else:
                        ok = False
                        raw = add_block(block)
                        d = block_digest(block)
                else:
                    ok = kind in ANTHROPIC_TARGETS
                    raw = add_block(block)
                    if type(block.get("content")) is list or "source" in block:
                        nested_markers(block, layout, len(positions))
                    # Without a "text" key, block_digest goes straight to the JSON record.
                    d = block_digest(block) if "text" in block else json_digest(block, dumps(block))
                ttl = None
                if "cache_control" in block:
                    has, ttl = marker_of(block)
                    if has and (ttl is None or (not ok and rejects_marker(block))):
                        ok = drop_invalid(
                            block,
                            "messages",
                            (m, b),
                            f"messages.{m}.content.{b}",
                            len(positions),
                            layout,
                            remove_invalid,
                        )
                        ttl = None
                update(d)
                if anchor_h is not None:
                    anchor_h.update(d)
                positions.append(("messages", (m, b), content, b, ok, ttl, raw))
                digests.append(digest())
        else:
            return None
        if anchor_h is not None:
            if anchor_h is first_reply:
                layout.first_reply_anchor = anchor_h.digest()
            else:
                layout.first_input_anchor = anchor_h.digest()
        if len(positions) > start:
            layout.spans[m] = (start, len(positions))
    return layout
