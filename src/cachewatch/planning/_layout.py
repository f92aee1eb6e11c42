"""The prompt layout: a request body flattened into positions, in the provider's render order.

Data flow: request body -> layout walk (``_walk``) -> **layout** -> planner (where
markers may go) and miss diagnosis (what each prefix is). Both read the same
:class:`Layout`, so their positions agree by construction.

This module holds the shared types: a *position* (:data:`Pos`) is one tool definition,
one system block or one message content block (a plain-string ``system`` or
``content`` is one text block), in tools -> system -> messages order. For each position
the layout holds its location, index, the container and key to rewrite it, whether a
marker may go there, the caller's marker TTL, a running raw token estimate
(:class:`~cachewatch.planning._tokens.PrefixCounter`) and a **cumulative digest** of
every position so far (``_canonical``: markers ignored, model-free).

Only digests, indices, estimates and a closed set of block kinds leave the layout:
never content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "BLOCK_KINDS",
    "CONT",
    "CUM",
    "IDX",
    "INPUT_ROLES",
    "KEY",
    "LOC",
    "MARK",
    "OK",
    "Layout",
    "Location",
    "Pos",
    "RemovedMarker",
    "block_kind",
    "new_layout",
    "position_path",
]

Location = Literal["tools", "system", "messages", "top_level"]

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

INPUT_ROLES: Final = frozenset({"user", "tool", "function"})


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
    #: What else keys the messages' cache besides the model (Anthropic ``tool_choice`` and
    #: ``thinking``: a change invalidates the cached messages, not the tools and system), as
    #: a 64-bit tag; 0 when there is none. Requests with different settings write and read
    #: apart, as requests to two models do: a conversation keeps a lane per setting.
    lane: int = 0

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
        return block_kind(block)


def new_layout(api: str) -> Layout:
    """``Layout(api)``: every other field at its default, without the generated ``__init__``'s
    default-factory calls (a layout is built per planned request)."""
    layout = _new(Layout)
    layout.api = api
    layout.positions = []
    layout.digests = []
    layout.first_message = 0
    layout.spans = {}
    layout.roles = []
    layout.removed = []
    layout.nested = []
    layout.first_turn = True
    layout.assistants = 0
    layout.tools = None
    layout.head = b""
    layout.system_anchor = None
    layout.first_input_anchor = None
    layout.first_reply_anchor = None
    layout.tools_digest = None
    layout.block_digests = []
    layout.lane = 0
    return layout


_new = object.__new__


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


def block_kind(block: Any) -> str:
    """The kind of a block (:data:`BLOCK_KINDS` or ``other``; a string is ``text``)."""
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
