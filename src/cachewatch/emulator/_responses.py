"""OpenAI Responses wire format (``/v1/responses``): request -> prompt, and the JSON / SSE reply.

Positions: each tool definition, then ``instructions`` (system), then every ``input``
item in order: a message's content parts (a string content is one position, the same
as a one-part list), or the whole item for ``function_call``, ``function_call_output``
and the other item types. The item's role and type are hashed with every position of
that item. Caching is OpenAI's automatic prefix caching (the ``openai`` profile).

Reply (openai-python ``types/responses``, research Q6): a ``response`` object with an
``output`` list (a ``message`` item with one ``output_text`` part, and/or a
``function_call`` item), ``status`` ``completed`` (``incomplete`` with
``incomplete_details.reason = "max_output_tokens"`` when cut), and ``usage``:
``input_tokens`` (the whole prompt), ``input_tokens_details.cached_tokens`` and
``cache_write_tokens`` (non-zero for models that bill writes, GPT-5.6 and later),
``output_tokens``, ``output_tokens_details.reasoning_tokens``, ``total_tokens``.

Streams are ``event: <type>`` / ``data: <json>`` frames with an increasing
``sequence_number``: ``response.created``, ``response.in_progress``, then per output
item ``response.output_item.added``, ``response.content_part.added``,
``response.output_text.delta``... (or ``response.function_call_arguments.delta``...),
the matching ``.done`` events, and ``response.completed`` (or ``response.incomplete``)
with the usage. There is no ``[DONE]``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from ._cache import CacheUsage, Position, Prompt
from ._completion import Completion, ToolSpec, pick_tool, split_json
from ._wire import ParsedRequest, RequestError, position

__all__ = ["error_body", "parse", "response_body", "stream_events", "usage_body"]


def render(model: str, body: Mapping[str, Any]) -> Prompt:
    """The prompt positions of a Responses request body."""
    positions: list[Position] = []
    tools = body.get("tools")
    if isinstance(tools, list):
        positions.extend(position("tools", f"tools.{i}", tool) for i, tool in enumerate(tools))
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        positions.append(position("system", "instructions", instructions))
    items = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise RequestError("input: must be a string or a non-empty list")
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise RequestError(f"input.{i}: must be an object")
        kind = item.get("type", "message")
        role = item.get("role")
        header = [i, kind, role]
        if kind == "message" and role is not None:
            section = "system" if role in ("system", "developer") else "messages"
            content = item.get("content")
            if isinstance(content, str):
                positions.append(position(section, f"input.{i}.content", content, header=header))
            elif isinstance(content, list):
                positions.extend(
                    position(section, f"input.{i}.content.{p}", _as_text(part), header=header)
                    for p, part in enumerate(content)
                )
            else:
                raise RequestError(f"input.{i}.content: must be a string or a list")
        else:
            record = {k: v for k, v in item.items() if k not in ("id", "status")}
            positions.append(position("messages", f"input.{i}", record, header=header))
    return Prompt(model, positions)


def _as_text(part: object) -> object:
    """``input_text`` / ``output_text`` parts render like a text block (the same tokens and prefix)."""
    if isinstance(part, Mapping) and part.get("type") in ("input_text", "output_text"):
        return {**{k: v for k, v in part.items() if k != "annotations"}, "type": "text"}
    return part


def _tools(tools: Any) -> list[ToolSpec]:
    specs: list[ToolSpec] = []
    for tool in tools if isinstance(tools, list) else []:
        if isinstance(tool, Mapping) and tool.get("type") == "function" and isinstance(tool.get("name"), str):
            params = tool.get("parameters")
            specs.append(ToolSpec(tool["name"], params if isinstance(params, Mapping) else {}))
    return specs


def _last_user(items: Any) -> tuple[str | None, bool]:
    if isinstance(items, str):
        return items, False
    last = items[-1] if isinstance(items, list) and items and isinstance(items[-1], Mapping) else {}
    if last.get("type") == "function_call_output":
        return None, True
    if last.get("role") != "user":
        return None, False
    content = last.get("content")
    if isinstance(content, str):
        return content, False
    texts = [p["text"] for p in content or [] if isinstance(p, Mapping) and isinstance(p.get("text"), str)]
    return " ".join(texts), False


def parse(body: Mapping[str, Any]) -> ParsedRequest:
    """Validate and reduce a Responses body; :class:`RequestError` when malformed."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("Missing required parameter: 'model'.")
    prompt = render(model, body)
    choice = body.get("tool_choice")
    forced: str | bool = False
    if choice == "required":
        forced = True
    elif isinstance(choice, Mapping) and isinstance(choice.get("name"), str):
        forced = choice["name"]
    text, tool_result = _last_user(body.get("input"))
    tool = (
        None
        if choice == "none"
        else pick_tool(
            _tools(body.get("tools")), forced=forced, last_user_text=text, tool_result_last=tool_result
        )
    )
    max_tokens = body.get("max_output_tokens")
    return ParsedRequest(
        model=model,
        prompt=prompt,
        stream=body.get("stream") is True,
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        tool=tool,
        options={
            "instructions": body.get("instructions") if isinstance(body.get("instructions"), str) else None
        },
    )


def usage_body(usage: CacheUsage, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": usage.total,
        "input_tokens_details": {"cached_tokens": usage.cache_read, "cache_write_tokens": usage.cache_write},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total + output_tokens,
    }


def _message_item(response_id: str, text: str, status: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {
        "id": f"msg_{response_id}",
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [part] if status != "in_progress" else [],
    }


def _call_item(response_id: str, completion: Completion, arguments: str, status: str) -> dict[str, Any]:
    call = completion.tool_call
    assert call is not None
    return {
        "id": f"fc_{response_id}",
        "type": "function_call",
        "status": status,
        "call_id": f"call_{call.id}",
        "name": call.name,
        "arguments": arguments,
    }


def _output(response_id: str, completion: Completion) -> list[dict[str, Any]]:
    output: list[dict[str, Any]] = []
    if completion.pieces:
        output.append(_message_item(response_id, completion.text, "completed"))
    if completion.tool_call is not None:
        output.append(_call_item(response_id, completion, completion.tool_call.arguments_json, "completed"))
    return output


def response_body(
    response_id: str,
    req: ParsedRequest,
    usage: CacheUsage | None,
    completion: Completion | None,
    created_at: int | None = None,
) -> dict[str, Any]:
    """A ``response`` object: final with ``completion`` and ``usage``, in progress without."""
    done = completion is not None
    cut = completion is not None and completion.stop == "max_tokens"
    return {
        "id": f"resp_{response_id}",
        "object": "response",
        "created_at": int(time.time()) if created_at is None else created_at,
        "status": ("incomplete" if cut else "completed") if done else "in_progress",
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": req.options.get("instructions"),
        "max_output_tokens": req.max_tokens,
        "model": req.model,
        "output": _output(response_id, completion) if completion is not None else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "metadata": {},
        "temperature": 1.0,
        "top_p": 1.0,
        "text": {"format": {"type": "text"}},
        "usage": usage_body(usage, completion.output_tokens) if usage is not None and completion else None,
    }


def stream_events(
    response_id: str, req: ParsedRequest, usage: CacheUsage, completion: Completion
) -> Iterator[bytes]:
    """The SSE frames of a streamed response, in the order the openai SDK's helpers expect."""
    created_at = int(time.time())
    sequence = 0

    def frame(kind: str, data: dict[str, Any]) -> bytes:
        nonlocal sequence
        payload = {"type": kind, "sequence_number": sequence, **data}
        sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    snapshot = response_body(response_id, req, None, None, created_at)
    yield frame("response.created", {"response": snapshot})
    yield frame("response.in_progress", {"response": snapshot})
    index = 0
    if completion.pieces:
        item_id = f"msg_{response_id}"
        yield frame(
            "response.output_item.added",
            {"output_index": index, "item": _message_item(response_id, "", "in_progress")},
        )
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        yield frame("response.content_part.added", {**where, "part": empty})
        for piece in completion.pieces:
            yield frame("response.output_text.delta", {**where, "delta": piece, "logprobs": []})
        yield frame("response.output_text.done", {**where, "text": completion.text, "logprobs": []})
        part = {**empty, "text": completion.text}
        yield frame("response.content_part.done", {**where, "part": part})
        item = _message_item(response_id, completion.text, "completed")
        yield frame("response.output_item.done", {"output_index": index, "item": item})
        index += 1
    if completion.tool_call is not None:
        item_id = f"fc_{response_id}"
        added = _call_item(response_id, completion, "", "in_progress")
        yield frame("response.output_item.added", {"output_index": index, "item": added})
        arguments = completion.tool_call.arguments_json
        for part_text in split_json(arguments):
            yield frame(
                "response.function_call_arguments.delta",
                {"item_id": item_id, "output_index": index, "delta": part_text},
            )
        yield frame(
            "response.function_call_arguments.done",
            {"item_id": item_id, "output_index": index, "arguments": arguments},
        )
        done = _call_item(response_id, completion, arguments, "completed")
        yield frame("response.output_item.done", {"output_index": index, "item": done})
    final = response_body(response_id, req, usage, completion, created_at)
    kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
    yield frame(kind, {"response": final})


def error_body(message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}
