"""The emulated model: a deterministic, short completion or a tool call.

The reply is derived from the prompt's cumulative hash, so the same prompt always
gets the same reply, and costs a deterministic number of output tokens (counted
with the rule of ``_tokens``).

Tool-use rule (so a demo agent loop can run): the model answers with a call to a
tool when the request declares client tools (Anthropic ``input_schema`` tools or
OpenAI ``function`` tools), tool choice is not ``none``, the last message is a
user turn that carries no tool result, and either

* tool choice forces a call (Anthropic ``any``/``tool``, OpenAI ``required`` or a
  named function), or
* the last user turn's text contains ``use the tool`` (case-insensitive).

The tool called is the forced one, else the first tool whose name appears in that
text, else the first tool. Its arguments fill each required property (or every
property when none is required) with a placeholder of the schema type. After a
tool result comes back, the model answers with text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import orjson

from ._tokens import count_text_tokens, json_tokens

__all__ = ["TRIGGER_PHRASE", "Completion", "ToolCall", "ToolSpec", "complete", "pick_tool", "split_json"]

#: Text in the last user turn that makes the emulated model call a tool.
TRIGGER_PHRASE = "use the tool"

_WORDS = (
    "cache", "prefix", "token", "stream", "model", "reply", "hit", "write", "read", "block",
    "prompt", "window", "budget", "agent", "tool", "result", "context", "turn", "usage", "fast",
    "stable", "cheap", "ready", "fresh", "warm", "cold", "short", "clear", "exact", "small",
    "good", "done",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    schema: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: Mapping[str, object]

    @property
    def arguments_json(self) -> str:
        return orjson.dumps(self.arguments).decode()


@dataclass(frozen=True, slots=True)
class Completion:
    """What the emulated model says: text pieces and/or one tool call."""

    pieces: tuple[str, ...]
    tool_call: ToolCall | None
    stop: Literal["end", "max_tokens", "tool"]
    output_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def pick_tool(
    tools: Sequence[ToolSpec], *, forced: str | bool, last_user_text: str | None, tool_result_last: bool
) -> ToolSpec | None:
    """The tool to call under the module's rule, or ``None`` for a text reply.

    ``forced`` is a tool name, ``True`` (any tool), or ``False`` (model's choice).
    ``last_user_text`` is ``None`` when the last message is not a user turn.
    """
    if not tools or last_user_text is None or tool_result_last:
        return None
    lowered = last_user_text.lower()
    if isinstance(forced, str):
        return next((t for t in tools if t.name == forced), tools[0])
    if not forced and TRIGGER_PHRASE not in lowered:
        return None
    return next((t for t in tools if t.name.lower() in lowered), tools[0])


def _placeholder(schema: object, name: str) -> object:
    kind = schema.get("type") if isinstance(schema, Mapping) else None
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return {}
    if isinstance(schema, Mapping) and isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    return f"example {name}"


def _arguments(schema: Mapping[str, object]) -> dict[str, object]:
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return {}
    required = schema.get("required")
    names = (
        [n for n in required if n in properties]
        if isinstance(required, list) and required
        else list(properties)
    )
    return {str(n): _placeholder(properties[n], str(n)) for n in names}


def complete(
    fingerprint: bytes,
    *,
    max_tokens: int | None,
    tool: ToolSpec | None = None,
    preamble: bool = False,
    words_per_piece: int = 1,
) -> Completion:
    """The deterministic reply to the prompt whose cumulative hash is ``fingerprint``.

    With ``tool``, the reply is a call to it, preceded by a one-sentence text when
    ``preamble`` is set. Otherwise it is 4 to 9 words, cut at ``max_tokens``.
    """
    seed = hashlib.sha256(b"completion\x00" + fingerprint).digest()
    if max_tokens == 0:
        return Completion((), None, "max_tokens", 0)
    if tool is not None:
        call = ToolCall(id=seed[:12].hex(), name=tool.name, arguments=_arguments(tool.schema))
        words = ["Calling", f"{tool.name}."] if preamble else []
        pieces = _pieces(words, words_per_piece)
        tokens = (
            count_text_tokens("".join(pieces)) + count_text_tokens(tool.name) + json_tokens(call.arguments)
        )
        return Completion(pieces, call, "tool", max(1, tokens))
    count = 4 + seed[0] % 6
    words = [_WORDS[b % len(_WORDS)] for b in seed[1 : 1 + count]]
    words[0] = words[0].capitalize()
    words[-1] += "."
    stop: Literal["end", "max_tokens"] = "end"
    if max_tokens is not None:
        kept: list[str] = []
        used = 0
        for word in words:
            cost = count_text_tokens(word)
            if used + cost > max_tokens:
                stop = "max_tokens"
                break
            kept.append(word)
            used += cost
        words = kept
    pieces = _pieces(words, words_per_piece)
    return Completion(pieces, None, stop, max(1, count_text_tokens("".join(pieces))))


def _pieces(words: Sequence[str], per_piece: int) -> tuple[str, ...]:
    per_piece = max(1, per_piece)
    spaced = [w if i == 0 else " " + w for i, w in enumerate(words)]
    return tuple("".join(spaced[i : i + per_piece]) for i in range(0, len(spaced), per_piece))


def split_json(text: str, parts: int = 3) -> list[str]:
    """``text`` cut into up to ``parts`` pieces (streamed tool arguments)."""
    if not text:
        return []
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]
