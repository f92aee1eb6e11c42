"""The layout walk of OpenAI-compatible and DashScope-native bodies.

Data flow: request body -> ``_walk.walk`` -> **this walker** -> layout.

``chat_completions`` (OpenAI-compatible, DashScope compatible mode) and
``dashscope_generation`` (DashScope native, under ``input.messages``): leading
``system``/``developer`` messages are the system region; the tool definitions are not
positions but are folded into the digest before the first one; a message's ``name``,
``tool_call_id`` and ``tool_calls`` are part of its record.
"""

from __future__ import annotations

from typing import Any

import orjson

from ._canonical import (
    ROLE_RECORDS,
    SEED,
    TEXT_RECORD,
    block_digest,
    new_hasher,
    role_record,
    tagged,
    text_digest,
)
from ._layout import INPUT_ROLES, Layout, Location
from ._markers import drop_invalid, eligible_part, marker_of, rejects_marker
from ._tokens import PrefixCounter

__all__ = ["walk_openai"]


def walk_openai(
    messages: Any, counter: PrefixCounter, remove_invalid: bool, layout: Layout, *, native: bool
) -> Layout | None:
    if not isinstance(messages, list):
        return None
    positions = layout.positions
    digests = layout.digests
    blocks = layout.block_digests
    roles = layout.roles
    h = new_hasher(SEED)
    update = h.update
    digest = h.digest
    tools = layout.tools
    if tools:
        layout.tools_digest = tagged(b"T", orjson.dumps(tools))
        update(layout.tools_digest)
    layout.head = digest()
    leading_system = True
    system_anchor = new_hasher(SEED)
    first_input: Any = None
    first_reply: Any = None
    per_message = counter.per_message
    # A local: CPython 3.11 compiles a method call on a name bound by an import without
    # LOAD_METHOD (a bound method per call), and ROLE_RECORDS is imported.
    role_records = ROLE_RECORDS
    for m, message in enumerate(messages):
        if type(message) is not dict:
            return None
        role = message.get("role")
        role_s = role if type(role) is str else ""
        is_system = role_s in ("system", "developer")
        if not is_system and leading_system:
            leading_system = False
            layout.first_message = len(positions)
        loc: Location = "system" if is_system and leading_system else "messages"
        roles.append(role_s if loc == "messages" else "system")
        if role_s == "assistant":
            layout.first_turn = False
            layout.assistants += 1
        anchor_h = None
        if loc == "system":
            anchor_h = system_anchor
        elif first_input is None and role_s in INPUT_ROLES:
            first_input = anchor_h = new_hasher(SEED)
        elif role_s == "assistant" and first_reply is None:
            first_reply = anchor_h = new_hasher(SEED)
        counter.raw += per_message  # counter.add_message()
        name = message.get("name")
        call_id = message.get("tool_call_id")
        if name is None and call_id is None:
            head = role_records.get(role_s) or role_record(role_s)
        else:
            head = tagged(b"m", orjson.dumps([role_s, name, call_id]))
        update(head)
        if anchor_h is not None:
            anchor_h.update(head)
        content = message.get("content")
        start = len(positions)
        if type(content) is str:
            raw = counter.add_block(content)
            ok = content != "" and not content.isspace()
            d = text_digest(content.encode("utf-8", "surrogatepass"), TEXT_RECORD)
            update(d)
            if anchor_h is not None:
                anchor_h.update(d)
            positions.append((loc, (m, 0), message, "content", ok, None, raw))
            digests.append(digest())
            if loc == "system":
                blocks.append(d)
        elif isinstance(content, list):
            for b, block in enumerate(content):
                raw = counter.add_block(block)
                if not isinstance(block, dict):
                    return None
                ok = eligible_part(block, native)
                has, ttl = marker_of(block)
                if has and (ttl is None or (not ok and rejects_marker(block))):
                    ok = drop_invalid(
                        block,
                        loc,
                        (m, b),
                        f"messages.{m}.content.{b}",
                        len(positions),
                        layout,
                        remove_invalid,
                    )
                    ttl = None
                d = block_digest(block)
                update(d)
                if anchor_h is not None:
                    anchor_h.update(d)
                positions.append((loc, (m, b), content, b, ok, ttl, raw))
                digests.append(digest())
                if loc == "system":
                    blocks.append(d)
        elif content is not None:
            return None
        calls = message.get("tool_calls")
        if isinstance(calls, list) and calls:
            counter.add_json(calls)
            d = tagged(b"k", orjson.dumps(calls))
            update(d)
            if anchor_h is not None:
                anchor_h.update(d)
            if len(positions) > start:
                # The calls render after the message's content: they end its last position.
                digests[-1] = digest()
        if anchor_h is first_reply and anchor_h is not None:
            layout.first_reply_anchor = anchor_h.digest()
        elif anchor_h is not None and anchor_h is not system_anchor:
            layout.first_input_anchor = anchor_h.digest()
        if len(positions) > start:
            layout.spans[m] = (start, len(positions))
    if leading_system:
        layout.first_message = len(positions)
    if layout.first_message > 0:
        layout.system_anchor = system_anchor.digest()
    return layout
