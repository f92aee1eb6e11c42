"""Anthropic Messages wire format: request -> prompt, and the JSON / SSE reply.

Positions are rendered tools -> system -> messages (research A.3). A plain-string
``system`` or ``content`` is one position. ``tool_choice`` and ``thinking`` are
hashed into every message position, so changing them invalidates the messages
cache but not the tools or system cache (research A.4).

Usage is Anthropic's: ``input_tokens`` excludes cache reads and writes, and
``cache_creation`` splits writes by TTL. Under the DashScope profile the stream's
``message_start`` reports the full prompt with no cache counters and
``output_tokens: 0``; the split arrives only in ``message_delta`` (research B.5).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from ._cache import CacheUsage, Position, Prompt
from ._completion import Completion, ToolSpec, pick_tool, split_json
from ._profiles import Profile
from ._wire import ParsedRequest, RequestError, position

__all__ = ["error_body", "message_body", "parse", "stream_events", "usage_body"]

_STOP = {"end": "end_turn", "max_tokens": "max_tokens", "tool": "tool_use"}


def _require(body: Mapping[str, Any], name: str) -> Any:
    if name not in body:
        raise RequestError(f"{name}: Field required")
    return body[name]


def render(body: Mapping[str, Any]) -> Prompt:
    """The prompt positions of a Messages (or count_tokens) body."""
    model = _require(body, "model")
    messages = _require(body, "messages")
    if not isinstance(model, str) or not model:
        raise RequestError("model: Input should be a valid string")
    if not isinstance(messages, list):
        raise RequestError("messages: Input should be a valid list")
    positions: list[Position] = []
    tools = body.get("tools")
    if isinstance(tools, list):
        positions.extend(position("tools", f"tools.{i}", tool) for i, tool in enumerate(tools))
    system = body.get("system")
    if isinstance(system, str):
        if system:
            positions.append(position("system", "system", system))
    elif isinstance(system, list):
        positions.extend(position("system", f"system.{i}", block) for i, block in enumerate(system))
    context = {"tool_choice": body.get("tool_choice"), "thinking": body.get("thinking")}
    for m, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise RequestError(f"messages.{m}: Input should be a valid dictionary")
        header = [context, m, message.get("role")]
        content = message.get("content")
        if isinstance(content, str):
            positions.append(position("messages", f"messages.{m}.content", content, header=header))
        elif isinstance(content, list):
            positions.extend(
                position("messages", f"messages.{m}.content.{b}", block, header=header)
                for b, block in enumerate(content)
            )
        else:
            raise RequestError(f"messages.{m}.content: Field required")
    return Prompt(model, positions)


def _last_user(messages: list[Any]) -> tuple[str | None, bool]:
    if not messages or not isinstance(messages[-1], Mapping) or messages[-1].get("role") != "user":
        return None, False
    content = messages[-1].get("content")
    if isinstance(content, str):
        return content, False
    texts: list[str] = []
    tool_result = False
    for block in content if isinstance(content, list) else []:
        if isinstance(block, Mapping):
            if block.get("type") == "tool_result":
                tool_result = True
            elif isinstance(block.get("text"), str):
                texts.append(block["text"])
    return " ".join(texts), tool_result


def parse(body: Mapping[str, Any], *, count_only: bool = False) -> ParsedRequest:
    """Validate and reduce a Messages body; :class:`RequestError` when malformed."""
    prompt = render(body)
    max_tokens = body.get("max_tokens")
    if not count_only:
        max_tokens = _require(body, "max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 0:
            raise RequestError("max_tokens: Input should be a valid integer")
    specs = [
        ToolSpec(t["name"], t["input_schema"])
        for t in body.get("tools") or []
        if isinstance(t, Mapping)
        and isinstance(t.get("name"), str)
        and isinstance(t.get("input_schema"), Mapping)
    ]
    choice = body.get("tool_choice")
    choice_type = choice.get("type") if isinstance(choice, Mapping) else None
    forced: str | bool = False
    if choice_type == "tool" and isinstance(choice, Mapping) and isinstance(choice.get("name"), str):
        forced = choice["name"]
    elif choice_type == "any":
        forced = True
    text, tool_result = _last_user(body["messages"])
    tool = (
        None
        if choice_type == "none"
        else pick_tool(specs, forced=forced, last_user_text=text, tool_result_last=tool_result)
    )
    top = body.get("cache_control")
    return ParsedRequest(
        model=prompt.model,
        prompt=prompt,
        stream=body.get("stream") is True,
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        top_level=top if isinstance(top, Mapping) else None,
        tool=tool,
        preamble=tool is not None and forced is False,
    )


def usage_body(usage: CacheUsage, output_tokens: int, profile: Profile) -> dict[str, Any]:
    """The ``usage`` object of a Message (and of a DashScope ``message_delta``)."""
    creation: dict[str, int] = {"ephemeral_5m_input_tokens": usage.cache_write_5m}
    if profile.supports_1h:
        creation["ephemeral_1h_input_tokens"] = usage.cache_write_1h
    body: dict[str, Any] = {
        "input_tokens": usage.input_tokens,
        "cache_creation_input_tokens": usage.cache_write,
        "cache_read_input_tokens": usage.cache_read,
        "cache_creation": creation,
        "output_tokens": output_tokens,
    }
    if profile.name == "anthropic":
        body["service_tier"] = "standard"
    return body


def _content(completion: Completion) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    if completion.pieces:
        content.append({"type": "text", "text": completion.text})
    if completion.tool_call is not None:
        call = completion.tool_call
        content.append(
            {"type": "tool_use", "id": f"toolu_{call.id}", "name": call.name, "input": call.arguments}
        )
    return content


def message_body(
    message_id: str, req: ParsedRequest, usage: CacheUsage, completion: Completion, profile: Profile
) -> dict[str, Any]:
    """A complete (non-streamed) Message."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": _content(completion),
        "stop_reason": _STOP[completion.stop],
        "stop_sequence": None,
        "usage": usage_body(usage, completion.output_tokens, profile),
    }


def stream_events(
    message_id: str, req: ParsedRequest, usage: CacheUsage, completion: Completion, profile: Profile
) -> Iterator[bytes]:
    """The SSE frames of a streamed Message, in Anthropic's event order."""
    if profile.split_only_in_message_delta:
        start_usage: dict[str, Any] = {"input_tokens": usage.total, "output_tokens": 0}
    else:
        start_usage = usage_body(usage, 1, profile)
    message: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    yield _frame("message_start", {"type": "message_start", "message": message})
    pinged = False
    index = 0
    if completion.pieces:
        yield _frame(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
        )
        yield _frame("ping", {"type": "ping"})
        pinged = True
        for piece in completion.pieces:
            delta = {"type": "text_delta", "text": piece}
            yield _frame(
                "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
            )
        yield _frame("content_block_stop", {"type": "content_block_stop", "index": index})
        index += 1
    if completion.tool_call is not None:
        call = completion.tool_call
        block = {"type": "tool_use", "id": f"toolu_{call.id}", "name": call.name, "input": {}}
        yield _frame(
            "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}
        )
        if not pinged:
            yield _frame("ping", {"type": "ping"})
            pinged = True
        for part in split_json(call.arguments_json):
            delta = {"type": "input_json_delta", "partial_json": part}
            yield _frame(
                "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
            )
        yield _frame("content_block_stop", {"type": "content_block_stop", "index": index})
    if not pinged:
        yield _frame("ping", {"type": "ping"})
    if profile.split_only_in_message_delta:
        delta_usage = usage_body(usage, completion.output_tokens, profile)
    else:
        delta_usage = {
            "input_tokens": usage.input_tokens,
            "cache_creation_input_tokens": usage.cache_write,
            "cache_read_input_tokens": usage.cache_read,
            "output_tokens": completion.output_tokens,
        }
    yield _frame(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": _STOP[completion.stop], "stop_sequence": None},
            "usage": delta_usage,
        },
    )
    yield _frame("message_stop", {"type": "message_stop"})


def error_body(message: str, kind: str = "invalid_request_error", request_id: str = "") -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}


def _frame(event: str, data: Mapping[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
