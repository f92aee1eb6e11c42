"""The prompt layout: a request body flattened into positions, in the provider's render order.

Data flow: request body -> **layout** -> planner (where markers may go) and miss
diagnosis (what each prefix is). Both read the same :class:`Layout`, so their
positions agree by construction.

A *position* is one tool definition, one system block or one message content block
(a plain-string ``system`` or ``content`` is one text block), in tools -> system ->
messages order, for the three wire formats that take markers:

* ``messages`` (Anthropic Messages and the relays that speak it);
* ``chat_completions`` (OpenAI-compatible, DashScope compatible mode): leading
  ``system``/``developer`` messages are the system region; ``tools`` are not
  positions (no marker goes on them) but are part of every prefix;
* ``dashscope_generation`` (DashScope native): as chat completions, under
  ``input.messages`` and ``parameters.tools``.

For each position the layout holds its location, index, the container and key to
rewrite it, whether a marker may go there, the caller's marker TTL, a running raw
token estimate (:class:`~cachewatch.planning._tokens.PrefixCounter`) and a
**cumulative digest**: XXH3-128 over a canonical record of every position so far.
The canonical record ignores ``cache_control`` and treats a plain string and a
one-text-block list as the same block (the providers render them the same way), so
inserting or moving a marker never changes a digest, and the digest of a prefix is
the same in every request that shares it. Records are length-prefixed, so different
block boundaries never collide. Anything else that invalidates a prefix is folded
in where it applies: chat-completions tools before the first position, Anthropic
``tool_choice``/``thinking`` before the first message (they invalidate the messages
cache only), message boundaries and roles, OpenAI ``tool_calls``, ``name`` and
``tool_call_id``. Digests are model-free; consumers bind them to a model and scope.

Only digests, indices, estimates and a closed set of block kinds leave this module:
never content.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson
import xxhash

from ._tokens import PrefixCounter

__all__ = [
    "BLOCK_KINDS",
    "CONT",
    "CUM",
    "IDX",
    "KEY",
    "LOC",
    "MARK",
    "OK",
    "Layout",
    "Location",
    "Pos",
    "RemovedMarker",
    "walk",
]

Location = Literal["tools", "system", "messages", "top_level"]

#: Anthropic block types that accept ``cache_control`` (research A.2).
_ANTHROPIC_TARGETS: Final = frozenset(
    {"text", "image", "document", "tool_use", "tool_result", "search_result", "server_tool_use"}
)
#: OpenAI-compatible content-part types that accept a marker (DashScope, research B.2).
_OPENAI_TARGETS: Final = frozenset({"text", "image_url", "video_url", "input_audio", "file"})
_NEVER_TARGETS: Final = frozenset({"thinking", "redacted_thinking"})

#: Block kinds reported in spans and logs; anything else is ``other`` (a ``type`` is caller data).
BLOCK_KINDS: Final = frozenset(
    {
        "text",
        "image",
        "document",
        "tool_use",
        "tool_result",
        "search_result",
        "server_tool_use",
        "web_search_tool_result",
        "thinking",
        "redacted_thinking",
        "image_url",
        "video_url",
        "input_audio",
        "file",
        "video",
        "audio",
        "tool",
        "tool_calls",
    }
)

#: A position, as a plain tuple (the hot path builds one per block):
#: (location, index, container, key, eligible, caller marker TTL, raw cumulative estimate).
#: ``container[key]`` is the block (a dict) or the string to convert.
Pos = tuple[Location, tuple[int, ...], Any, Any, bool, "str | None", float]
LOC: Final = 0
IDX: Final = 1
CONT: Final = 2
KEY: Final = 3
OK: Final = 4
MARK: Final = 5
CUM: Final = 6

#: Version of the canonical records: a change of format changes every digest.
_SEED: Final = b"cachewatch-layout-3"
_CC: Final = b'"cache_control"'
_INPUT_ROLES: Final = frozenset({"user", "tool", "function"})

_new_hasher = xxhash.xxh3_128
_text_digest = xxhash.xxh3_128_digest
#: Seeds of the per-record digests, so records of different types never collide.
_TEXT: Final = 1
_JSON: Final = 2
_OTHER: Final = 3
_TAGS: Final = {b"m": 4, b"c": 5, b"T": 6, b"k": 7}


@dataclass(frozen=True, slots=True)
class RemovedMarker:
    """A caller's marker the provider would reject, removed from the body."""

    location: Location
    index: tuple[int, ...]
    path: str
    position: int


@dataclass(slots=True)
class Layout:
    """One request body, flattened (see the module docstring)."""

    api: str
    positions: list[Pos] = field(default_factory=list)
    #: Cumulative model-free digest (XXH3-128, 16 bytes) per position.
    digests: list[bytes] = field(default_factory=list)
    #: Index of the first message position (== number of tools + system positions).
    first_message: int = 0
    #: Message index -> (first position, last position + 1).
    spans: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: Role per message ("" when not a string); leading system messages are ``system``.
    roles: list[str] = field(default_factory=list)
    removed: list[RemovedMarker] = field(default_factory=list)
    #: Markers the caller put inside sub-content (or left invalid): (render position, TTL).
    #: A nested marker renders inside its parent block, so it sits at ``parent - 0.5``.
    nested: list[tuple[float, str]] = field(default_factory=list)
    #: The request has no assistant turn yet (a first turn or a one-shot request).
    first_turn: bool = True
    #: Assistant messages in the request.
    assistants: int = 0
    #: Chat-completions / DashScope-native tool definitions (not positions), or None.
    tools: Any = None
    #: Digest of everything before the first position (chat-completions tools).
    head: bytes = b""
    #: Model-free anchor digests: the system region alone, the first input message alone.
    system_anchor: bytes | None = None
    first_input_anchor: bytes | None = None
    #: The first assistant message alone (with the first input message, it identifies a
    #: conversation across its turns).
    first_reply_anchor: bytes | None = None
    #: Digest of the tool definitions alone (tools changed?), or None without tools.
    tools_digest: bytes | None = None
    #: Per-position digest of the block alone (static region only: tools and system),
    #: for learning which blocks change between requests.
    block_digests: list[bytes] = field(default_factory=list)

    def path(self, index: int) -> str:
        """Dotted JSON path of a position (``tools.2``, ``system.0``, ``messages.3.content.1``)."""
        return position_path(self.positions[index])

    def digest_before(self, index: int) -> bytes:
        """The digest of the prefix ending just before position ``index``."""
        return self.digests[index - 1] if index > 0 else self.head

    def kind(self, index: int) -> str:
        """The block kind of a position (:data:`BLOCK_KINDS` or ``other``)."""
        pos = self.positions[index]
        block = pos[CONT][pos[KEY]]
        if type(block) is list and len(block) == 1:
            block = block[0]  # a string the planner turned into one marked block
        return _kind(block)


def position_path(pos: Pos) -> str:
    loc = pos[LOC]
    idx = pos[IDX]
    if loc == "tools":
        return f"tools.{idx[0]}"
    if loc == "system" and len(idx) == 1:
        return f"system.{idx[0]}" if isinstance(pos[CONT], list) else "system"
    msg, block = idx
    if isinstance(pos[CONT], dict):
        return f"messages.{msg}.content"
    return f"messages.{msg}.content.{block}"


# -- canonical records ----------------------------------------------------------------


def _strip(block: dict[str, Any]) -> dict[str, Any]:
    """``block`` without ``cache_control`` (also one level down in ``content`` lists)."""
    out = {k: v for k, v in block.items() if k != "cache_control"}
    content = out.get("content")
    if type(content) is list:
        out["content"] = [
            {k: v for k, v in c.items() if k != "cache_control"} if type(c) is dict else c for c in content
        ]
    return out


def _digest(block: Any) -> bytes:
    """The digest of one block's canonical form: markers ignored, a string is a text block."""
    if type(block) is str:
        return _text_digest(block.encode("utf-8", "surrogatepass"), _TEXT)
    if type(block) is dict:
        text = block.get("text")
        if type(text) is str:
            n = len(block)
            if "cache_control" in block:
                n -= 1
            if n == 1 or (n == 2 and block.get("type") == "text"):
                return _text_digest(text.encode("utf-8", "surrogatepass"), _TEXT)
        return _json_digest(block, orjson.dumps(block))
    return _text_digest(orjson.dumps(block), _OTHER)


def _json_digest(block: dict[str, Any], raw: bytes) -> bytes:
    """The digest of a block that is not a plain text block, from its JSON ``raw``.

    The canonical record is the JSON of :func:`_strip` of the block, which is ``raw``
    itself when there is nothing to strip: checked on the dict (two key lookups for most
    blocks) rather than by searching ``raw``.
    """
    if _has_markers(block):
        raw = orjson.dumps(_strip(block))
    return _text_digest(raw, _JSON)


def _has_markers(block: dict[str, Any]) -> bool:
    """Whether :func:`_strip` would remove anything from ``block``."""
    if "cache_control" in block:
        return True
    content = block.get("content")
    if type(content) is list:
        for c in content:
            if type(c) is dict and "cache_control" in c:
                return True
    return False


def _kind(block: Any) -> str:
    if type(block) is str:
        return "text"
    if type(block) is dict:
        kind = block.get("type")
        if kind is None:
            for key in ("text", "image", "video", "audio"):
                if key in block:
                    return key
            return "other"
        return kind if type(kind) is str and kind in BLOCK_KINDS else "other"
    return "other"


def _tagged(tag: bytes, value: bytes) -> bytes:
    """A 16-byte chain record for something that is not a block (a role, a header)."""
    return _text_digest(value, _TAGS[tag])


# -- markers ------------------------------------------------------------------------


def _marker_of(block: dict[str, Any]) -> tuple[bool, str | None]:
    """(has a cache_control key, its TTL when it is a well-formed marker)."""
    cc = block.get("cache_control")
    if cc is None:
        return ("cache_control" in block), None
    if isinstance(cc, dict):
        return True, ("1h" if cc.get("ttl") == "1h" else "5m")
    return True, None


def _eligible_anthropic(block: Any) -> bool:
    if not isinstance(block, dict):
        return False
    kind = block.get("type")
    if kind not in _ANTHROPIC_TARGETS:
        return False
    if kind == "text":
        text = block.get("text")
        return isinstance(text, str) and not text.isspace() and text != ""
    return True


def _eligible_part(block: Any, native: bool) -> bool:
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


def _nested_markers(block: dict[str, Any], layout: Layout, at: int, depth: int = 0) -> None:
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
                _nested_markers(part, layout, at, depth + 1)


def _drop_invalid(
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
        layout.nested.append((position - 0.5, "5m"))  # left in place: still counted
    return False


# -- the walk -----------------------------------------------------------------------

#: Chain records of the common roles, computed once.
_ROLES: dict[str, bytes] = {}


def _role(role: str) -> bytes:
    found = _ROLES.get(role)
    if found is None:
        found = _tagged(b"m", role.encode("utf-8", "surrogatepass"))
        if len(_ROLES) < 64:
            _ROLES[role] = found
    return found


def walk(
    api: str,
    obj: Mapping[str, Any],
    counter: PrefixCounter,
    *,
    markers_on_tools: bool = False,
    remove_invalid: bool = False,
) -> Layout | None:
    """Flatten ``obj`` (a parsed body of ``api``) into its layout; None for an invalid shape.

    Feeds every block to ``counter`` (running raw token estimates). With
    ``remove_invalid``, caller markers the provider would reject are deleted from
    ``obj`` and listed in ``Layout.removed``.
    """
    layout = Layout(api)
    if api == "messages":
        return _walk_anthropic(obj, counter, markers_on_tools, remove_invalid, layout)
    if api == "chat_completions":
        tools = obj.get("tools")
        if isinstance(tools, list):
            counter.add_tools(tools)
            for tool in tools:
                counter.add_json(tool)
            layout.tools = tools
        return _walk_openai(obj.get("messages"), counter, remove_invalid, layout, native=False)
    if api == "dashscope_generation":
        inp = obj.get("input")
        if not isinstance(inp, dict):
            return None
        params = obj.get("parameters")
        layout.tools = params.get("tools") if isinstance(params, dict) else None
        return _walk_openai(inp.get("messages"), counter, remove_invalid, layout, native=True)
    return None


def _walk_anthropic(
    obj: Mapping[str, Any], counter: PrefixCounter, on_tools: bool, remove_invalid: bool, layout: Layout
) -> Layout | None:
    positions = layout.positions
    digests = layout.digests
    blocks = layout.block_digests
    h = _new_hasher(_SEED)
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
            ok = on_tools
            ttl = None
            # A plain definition (no text) is digested from the JSON it was measured by,
            # unless it has a marker (which may be removed here).
            serialised = jsons[t]
            if "cache_control" in tool:
                serialised = None
                has, ttl = _marker_of(tool)
                if has and ttl is None:
                    ok = _drop_invalid(
                        tool, "tools", (t,), f"tools.{t}", len(positions), layout, remove_invalid
                    )
            d = _digest(tool) if serialised is None else _json_digest(tool, serialised)
            update(d)
            positions.append(("tools", (t,), tools, t, ok, ttl, cums[t]))
            digests.append(digest())
            blocks.append(d)
        if tools:
            layout.tools_digest = digests[-1]
    system = obj.get("system")
    if system is not None:
        counter.add_message()
        anchor = _new_hasher(_SEED)
        if isinstance(system, str):
            raw = counter.add_block(system)
            ok = system != "" and not system.isspace()
            d = _digest(system)
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
                ok = _eligible_anthropic(block)
                has, ttl = _marker_of(block)
                if has and (ttl is None or not ok):
                    ok = _drop_invalid(
                        block, "system", (s,), f"system.{s}", len(positions), layout, remove_invalid
                    )
                    ttl = None
                d = _digest(block)
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
        update(_tagged(b"c", orjson.dumps(ctx)))
    roles = layout.roles
    per_message = counter.per_message
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
        if first_input is None and role_s in _INPUT_ROLES:
            first_input = anchor_h = _new_hasher(_SEED)
        elif role_s == "assistant" and layout.first_reply_anchor is None and first_reply is None:
            first_reply = anchor_h = _new_hasher(_SEED)
        counter.raw += per_message  # counter.add_message()
        update(_ROLES.get(role_s) or _role(role_s))
        content = message.get("content")
        start = len(positions)
        if type(content) is str:
            raw = add_block(content)
            ok = content != "" and not content.isspace()
            d = _text_digest(content.encode("utf-8", "surrogatepass"), _TEXT)
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
                            d = _text_digest(text.encode("utf-8", "surrogatepass"), _TEXT)
                        else:
                            d = _digest(block)
                    else:
                        ok = False
                        raw = add_block(block)
                        d = _digest(block)
                else:
                    ok = kind in _ANTHROPIC_TARGETS
                    raw = add_block(block)
                    if type(block.get("content")) is list or "source" in block:
                        _nested_markers(block, layout, len(positions))
                    # Without a "text" key, _digest goes straight to the JSON record.
                    d = _digest(block) if "text" in block else _json_digest(block, dumps(block))
                ttl = None
                if "cache_control" in block:
                    has, ttl = _marker_of(block)
                    if has and (ttl is None or not ok):
                        ok = _drop_invalid(
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


def _walk_openai(
    messages: Any, counter: PrefixCounter, remove_invalid: bool, layout: Layout, *, native: bool
) -> Layout | None:
    if not isinstance(messages, list):
        return None
    positions = layout.positions
    digests = layout.digests
    blocks = layout.block_digests
    roles = layout.roles
    h = _new_hasher(_SEED)
    update = h.update
    digest = h.digest
    tools = layout.tools
    if tools:
        layout.tools_digest = _tagged(b"T", orjson.dumps(tools))
        update(layout.tools_digest)
    layout.head = digest()
    leading_system = True
    system_anchor = _new_hasher(_SEED)
    first_input: Any = None
    first_reply: Any = None
    per_message = counter.per_message
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
        elif first_input is None and role_s in _INPUT_ROLES:
            first_input = anchor_h = _new_hasher(_SEED)
        elif role_s == "assistant" and first_reply is None:
            first_reply = anchor_h = _new_hasher(_SEED)
        counter.raw += per_message  # counter.add_message()
        name = message.get("name")
        call_id = message.get("tool_call_id")
        if name is None and call_id is None:
            head = _ROLES.get(role_s) or _role(role_s)
        else:
            head = _tagged(b"m", orjson.dumps([role_s, name, call_id]))
        update(head)
        if anchor_h is not None:
            anchor_h.update(head)
        content = message.get("content")
        start = len(positions)
        if type(content) is str:
            raw = counter.add_block(content)
            ok = content != "" and not content.isspace()
            d = _text_digest(content.encode("utf-8", "surrogatepass"), _TEXT)
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
                ok = _eligible_part(block, native)
                has, ttl = _marker_of(block)
                if has and (ttl is None or not ok):
                    ok = _drop_invalid(
                        block,
                        loc,
                        (m, b),
                        f"messages.{m}.content.{b}",
                        len(positions),
                        layout,
                        remove_invalid,
                    )
                    ttl = None
                d = _digest(block)
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
            d = _tagged(b"k", orjson.dumps(calls))
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
