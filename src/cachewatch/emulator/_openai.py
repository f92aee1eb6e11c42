"""OpenAI-compatible Chat Completions wire format (OpenAI, DashScope ``/compatible-mode``).

Positions: each tool definition, then each message's content parts in order (a
string content is one position), then each assistant tool call. The message's
role and other fields (``tool_call_id``, ``name``) are hashed with every position
of that message. Markers are ``cache_control`` on content parts (research B.2/B.3).

Usage: ``prompt_tokens`` is the whole prompt and ``prompt_tokens_details.cached_tokens``
a subset (plus ``cache_write_tokens`` for OpenAI models that bill writes, GPT-5.6+). Profiles that bill writes also report
``prompt_tokens_details.cache_creation_input_tokens`` (plus ``cache_type:
"ephemeral"`` and ``cache_creation.ephemeral_5m_input_tokens`` on DashScope when a
marker applied). Streams send ``usage: null`` on every chunk and, with
``stream_options.include_usage``, one last usage-only chunk with ``choices: []``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from ._cache import CacheUsage, Position, Prompt
from ._completion import Completion, ToolSpec, pick_tool, split_json
from ._profiles import Profile
from ._wire import ParsedRequest, RequestError, position

__all__ = [
    "chat_body",
    "error_body",
    "last_user",
    "openai_tools",
    "parse",
    "render_messages",
    "stream_chunks",
    "usage_body",
]

_FINISH = {"end": "stop", "max_tokens": "length", "tool": "tool_calls"}


def render_messages(model: str, messages: Any, tools: Any, *, where: str = "messages") -> Prompt:
    """Prompt positions of OpenAI-style ``tools`` + ``messages`` (also DashScope native)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(f"{where}: must be a non-empty list")
    positions: list[Position] = []
    if isinstance(tools, list):
        positions.extend(position("tools", f"tools.{i}", tool) for i, tool in enumerate(tools))
    for m, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise RequestError(f"{where}.{m}: must be an object")
        role = message.get("role")
        section = "system" if role in ("system", "developer") else "messages"
        header = [m, sorted([str(k), v] for k, v in message.items() if k not in ("content", "tool_calls"))]
        content = message.get("content")
        if isinstance(content, str):
            positions.append(position(section, f"{where}.{m}.content", content, header=header))
        elif isinstance(content, list):
            positions.extend(
                position(section, f"{where}.{m}.content.{p}", part, header=header)
                for p, part in enumerate(content)
            )
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            positions.extend(
                position(section, f"{where}.{m}.tool_calls.{c}", call, header=header)
                for c, call in enumerate(calls)
            )
    return Prompt(model, positions)


def openai_tools(tools: Any) -> list[ToolSpec]:
    specs: list[ToolSpec] = []
    for tool in tools if isinstance(tools, list) else []:
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
            params = fn.get("parameters")
            specs.append(ToolSpec(fn["name"], params if isinstance(params, Mapping) else {}))
    return specs


def last_user(messages: list[Any]) -> tuple[str | None, bool]:
    """The text of the last message if it is a user turn, and whether a tool result is last."""
    last = messages[-1] if messages and isinstance(messages[-1], Mapping) else {}
    if last.get("role") == "tool":
        return None, True
    if last.get("role") != "user":
        return None, False
    content = last.get("content")
    if isinstance(content, str):
        return content, False
    texts = [p["text"] for p in content or [] if isinstance(p, Mapping) and isinstance(p.get("text"), str)]
    return " ".join(texts), False


def pick(tools: Any, tool_choice: Any, messages: list[Any]) -> tuple[ToolSpec | None, bool]:
    """The tool to call (rule in ``_completion``) and whether to say words before it."""
    if tool_choice == "none":
        return None, False
    forced: str | bool = False
    if tool_choice == "required":
        forced = True
    elif isinstance(tool_choice, Mapping):
        fn = tool_choice.get("function")
        if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
            forced = fn["name"]
    text, tool_result = last_user(messages)
    tool = pick_tool(openai_tools(tools), forced=forced, last_user_text=text, tool_result_last=tool_result)
    return tool, False


def parse(body: Mapping[str, Any]) -> ParsedRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("you must provide a model parameter")
    messages = body.get("messages")
    prompt = render_messages(model, messages, body.get("tools"))
    assert isinstance(messages, list)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    options = body.get("stream_options")
    tool, preamble = pick(body.get("tools"), body.get("tool_choice"), messages)
    return ParsedRequest(
        model=model,
        prompt=prompt,
        stream=body.get("stream") is True,
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        tool=tool,
        preamble=preamble,
        options={"include_usage": isinstance(options, Mapping) and options.get("include_usage") is True},
    )


def prompt_details(
    usage: CacheUsage, profile: Profile, explicit: bool, *, implicit: bool = False
) -> dict[str, Any]:
    """``prompt_tokens_details``; a DashScope implicit hit is ``cached_tokens`` alone (research Q7)."""
    details: dict[str, Any] = {"cached_tokens": usage.cache_read}
    if profile.implicit and usage.cache_write:
        details["cache_write_tokens"] = usage.cache_write  # GPT-5.6+ bill their writes
    if not profile.implicit and not implicit:
        details["cache_creation_input_tokens"] = usage.cache_write
        if profile.name == "dashscope" and explicit:
            details["cache_type"] = "ephemeral"
            details["cache_creation"] = {"ephemeral_5m_input_tokens": usage.cache_write_5m}
        elif usage.cache_write_1h:
            details["cache_creation"] = {
                "ephemeral_5m_input_tokens": usage.cache_write_5m,
                "ephemeral_1h_input_tokens": usage.cache_write_1h,
            }
    return details


def usage_body(
    usage: CacheUsage, output_tokens: int, profile: Profile, explicit: bool, *, implicit: bool = False
) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.total,
        "completion_tokens": output_tokens,
        "total_tokens": usage.total + output_tokens,
        "prompt_tokens_details": prompt_details(usage, profile, explicit, implicit=implicit),
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _message(completion: Completion) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": completion.text if completion.pieces else None}
    if completion.tool_call is not None:
        call = completion.tool_call
        message["tool_calls"] = [
            {
                "id": f"call_{call.id}",
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json},
            }
        ]
    elif message["content"] is None:
        message["content"] = ""
    return message


def chat_body(
    completion_id: str,
    req: ParsedRequest,
    usage: CacheUsage,
    completion: Completion,
    profile: Profile,
    explicit: bool,
    *,
    implicit: bool = False,
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "choices": [
            {
                "index": 0,
                "message": _message(completion),
                "logprobs": None,
                "finish_reason": _FINISH[completion.stop],
            }
        ],
        "usage": usage_body(usage, completion.output_tokens, profile, explicit, implicit=implicit),
        "system_fingerprint": None,
    }


def stream_chunks(
    completion_id: str,
    req: ParsedRequest,
    usage: CacheUsage,
    completion: Completion,
    profile: Profile,
    explicit: bool,
    *,
    implicit: bool = False,
) -> Iterator[bytes]:
    include_usage = bool(req.options.get("include_usage"))
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        data: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": req.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            data["usage"] = None
        return b"data: " + orjson.dumps(data) + b"\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for piece in completion.pieces:
        yield chunk({"content": piece})
    if completion.tool_call is not None:
        call = completion.tool_call
        head = {
            "index": 0,
            "id": f"call_{call.id}",
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        yield chunk({"tool_calls": [head]})
        for part in split_json(call.arguments_json):
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
    yield chunk({}, _FINISH[completion.stop])
    if include_usage:
        final = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": req.model,
            "choices": [],
            "usage": usage_body(usage, completion.output_tokens, profile, explicit, implicit=implicit),
        }
        yield b"data: " + orjson.dumps(final) + b"\n\n"
    yield b"data: [DONE]\n\n"


def error_body(message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}
