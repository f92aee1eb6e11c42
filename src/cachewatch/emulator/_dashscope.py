"""DashScope native generation wire format (``/api/v1/services/aigc/*/generation``).

Request: ``{"model", "input": {"messages": [...]} | {"prompt": "..."}, "parameters": {...}}``.
Messages are rendered as in ``_openai`` (parts may also be ``{"text": ...}`` or
``{"image": ...}`` without a ``type``); ``parameters.tools`` are OpenAI-style.

Reply: ``output.choices[0].message`` (``result_format: "message"``, the default
here, and always for multimodal) or ``output.text`` (``result_format: "text"``).
``usage.input_tokens`` is the whole prompt, ``usage.prompt_tokens_details`` holds
``cached_tokens`` and ``cache_creation_input_tokens`` (research B.4). Streams
(``X-DashScope-SSE: enable`` or ``Accept: text/event-stream``) send ``event:result``
frames, each with the *cumulative* usage; the text is cumulative too unless
``parameters.incremental_output`` is true. ``finish_reason`` is the string
``"null"`` until the last frame, as on the real service.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from ._cache import CacheUsage
from ._completion import Completion
from ._openai import pick, render_messages
from ._profiles import Profile
from ._tokens import count_text_tokens
from ._wire import ParsedRequest, RequestError

__all__ = ["error_body", "generation_body", "parse", "stream_events"]

_FINISH = {"end": "stop", "max_tokens": "length", "tool": "tool_calls"}


def parse(body: Mapping[str, Any], *, multimodal: bool, stream: bool) -> ParsedRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("Model not specified")
    data = body.get("input")
    if not isinstance(data, Mapping):
        raise RequestError("input must contain messages or prompt")
    messages = data.get("messages")
    if messages is None and isinstance(data.get("prompt"), str):
        messages = [{"role": "user", "content": data["prompt"]}]
    params = body.get("parameters")
    params = params if isinstance(params, Mapping) else {}
    prompt = render_messages(model, messages, params.get("tools"), where="input.messages")
    assert isinstance(messages, list)
    tool, preamble = pick(params.get("tools"), params.get("tool_choice"), messages)
    max_tokens = params.get("max_tokens")
    result_format = "message" if multimodal else params.get("result_format", "message")
    return ParsedRequest(
        model=model,
        prompt=prompt,
        stream=stream,
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        tool=tool,
        preamble=preamble,
        options={
            "result_format": result_format,
            "incremental": params.get("incremental_output") is True,
            "multimodal": multimodal,
        },
    )


def usage_body(
    usage: CacheUsage, output_tokens: int, explicit: bool, *, implicit: bool = False, model: str = ""
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "input_tokens": usage.total,
        "output_tokens": output_tokens,
        "total_tokens": usage.total + output_tokens,
    }
    if implicit and _VL.search(model.lower()):
        # A VL model's implicit hits are ``usage.cached_tokens`` (research B.4: all of them
        # in Singapore, qwen3-vl-plus and -flash in Beijing; "to move later").
        body["cached_tokens"] = usage.cache_read
        return body
    details: dict[str, Any] = {"cached_tokens": usage.cache_read}
    if not implicit:  # an implicit hit is cached_tokens alone (research Q7)
        details["cache_creation_input_tokens"] = usage.cache_write
    if explicit:
        details["cache_type"] = "ephemeral"
        details["cache_creation"] = {"ephemeral_5m_input_tokens": usage.cache_write_5m}
    body["prompt_tokens_details"] = details
    return body


_VL = re.compile(r"(?:^|[-.])vl(?:$|[-.])")


def _output(
    req: ParsedRequest, text: str, finish: str, completion: Completion, final: bool
) -> dict[str, Any]:
    if req.options.get("result_format") == "text":
        return {"text": text, "finish_reason": finish}
    content: Any = [{"text": text}] if req.options.get("multimodal") else text
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if completion.tool_call is not None and final:
        call = completion.tool_call
        message["tool_calls"] = [
            {
                "index": 0,
                "id": f"call_{call.id}",
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json},
            }
        ]
    return {"choices": [{"finish_reason": finish, "message": message}]}


def generation_body(
    request_id: str,
    req: ParsedRequest,
    usage: CacheUsage,
    completion: Completion,
    profile: Profile,
    explicit: bool,
    *,
    implicit: bool = False,
) -> dict[str, Any]:
    del profile
    return {
        "output": _output(req, completion.text, _FINISH[completion.stop], completion, True),
        "usage": usage_body(usage, completion.output_tokens, explicit, implicit=implicit, model=req.model),
        "request_id": request_id,
    }


def stream_events(
    request_id: str,
    req: ParsedRequest,
    usage: CacheUsage,
    completion: Completion,
    profile: Profile,
    explicit: bool,
    *,
    implicit: bool = False,
) -> Iterator[bytes]:
    del profile
    incremental = bool(req.options.get("incremental"))
    pieces = list(completion.pieces) or [""]
    so_far = ""
    spent = 0
    for n, piece in enumerate(pieces, start=1):
        so_far += piece
        final = n == len(pieces)
        spent = (
            completion.output_tokens
            if final
            else min(completion.output_tokens, spent + count_text_tokens(piece))
        )
        data = {
            "output": _output(
                req,
                piece if incremental else so_far,
                _FINISH[completion.stop] if final else "null",
                completion,
                final,
            ),
            "usage": usage_body(usage, spent, explicit, implicit=implicit, model=req.model),
            "request_id": request_id,
        }
        yield b"id:%d\nevent:result\n:HTTP_STATUS/200\ndata:" % n + orjson.dumps(data) + b"\n\n"


def error_body(message: str, code: str = "InvalidParameter", request_id: str = "") -> dict[str, Any]:
    return {"code": code, "message": message, "request_id": request_id}
