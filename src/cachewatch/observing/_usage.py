"""Fold provider response JSON (a whole body or SSE event payloads) into a ParsedResponse.

Place in the flow: ``_observer`` decodes the body and calls :class:`UsageAccumulator`;
the result becomes part of the ``UsageRecord``. Pure functions, no I/O, no httpx.

Token partition (SPEC section 4): ``input + cache_read + cache_write_5m +
cache_write_1h`` equals the prompt total the provider billed. :func:`partition_usage`
recognises the usage *shape* rather than trusting the API label, because relays mix
them (a Kimi ``message_delta`` may carry OpenAI-style fields):

* DeepSeek (``prompt_cache_hit_tokens`` / ``prompt_cache_miss_tokens``): input = miss,
  cache_read = hit.
* Anthropic (a top-level ``cache_read_input_tokens`` or ``cache_creation_input_tokens``):
  the counters are disjoint; the 5m/1h split comes from ``cache_creation.ephemeral_*``
  only when it sums to ``cache_creation_input_tokens``, otherwise every write is 5m.
* Subset shapes (OpenAI Chat ``prompt_tokens``; OpenAI Responses and DashScope native
  ``input_tokens`` with details): the total includes reads and writes, so
  input = total - cached - written. Reads: ``*_tokens_details.cached_tokens``, else
  top-level ``cached_tokens`` (DashScope VL models, Together via Hugging Face), else
  Mistral ``num_cached_tokens``, else a top-level ``cache_read_input_tokens``. Writes:
  ``cache_write_tokens`` (OpenAI GPT-5.6+, OpenRouter) or ``cache_creation_input_tokens``
  (DashScope; LiteLLM puts it at the top level), split 5m/1h by a nested
  ``cache_creation`` when present and consistent. DashScope's Responses API (session
  cache) gives the write, with its ``cache_type``, only in
  ``x_details[].prompt_tokens_details`` (research B.3): read there when the usage itself
  has no count. A ``prompt_tokens`` total with
  Anthropic's counters beside it and no ``input_tokens`` (LiteLLM's Chat usage for
  Anthropic models) is this shape too, not Anthropic's.

Counts are clamped so that none is negative and the invariant still holds. A usage that
counts no prompt at all (output only, from a relay) is not reported: ``None``, never an
input of 0.
``output`` is ``output_tokens``/``completion_tokens`` (reasoning included);
``reasoning`` comes from ``completion_tokens_details.reasoning_tokens`` or
``output_tokens_details.reasoning_tokens`` (Anthropic ``thinking_tokens`` too).

Cache mode: ``ParsedResponse.cache_type`` is ``prompt_tokens_details.cache_type`` when the
provider says it (DashScope: ``ephemeral`` for explicit and session cache, ``implicit`` for
implicit cache; research B.3, Q7). Implicit hits often come with ``cached_tokens`` alone,
so the engine falls back on whether the request carried markers.

Completion: a terminal event (Anthropic ``message_stop``, Chat ``[DONE]``, a Responses
terminal event, a DashScope final ``finish_reason``) or, for Anthropic streams, the
final ``message_delta`` carrying both a stop reason and the usage: everything billed is
known then, and some clients (LiteLLM's sync ``completion(stream=True)``) close the body
right after it without reading ``message_stop``.

Finish reasons: Anthropic ``stop_reason``; Chat Completions every choice's
``finish_reason`` in choice-index order; DashScope native ``finish_reason`` (the
literal string ``"null"`` it sends mid-stream is skipped); Responses the
``incomplete_details.reason`` when there is one (``max_output_tokens``...), otherwise
the response ``status`` (``completed``, ``failed``...).

Corpus quirks handled here:

* Groq streams put the usage in ``x_groq.usage`` (newer ones in both places); Groq's
  ``usage_breakdown.models[].usage`` is per-model detail and is ignored.
* Moonshot (Kimi) Chat streams put it in the final chunk's ``choices[0].usage``, the
  chunk's own ``usage`` being null.
* Responses streams recorded by some clients have ``event:`` names shifted by one
  against the data ``type``; the data ``type`` wins.
* Chat streams may end with ``event: error`` (Groq tool validation) after content.

Anthropic cache diagnostics (opt-in, ``cache-diagnosis-2026-04-07``): a Message carries
``diagnostics`` when the request did; in streams it is on the ``message_start`` message
(a ``message_delta`` copy is read too). ``diagnostics: null`` means no divergence (or
nothing to compare), ``{"cache_miss_reason": null}`` that the comparison was still
pending when the response was serialised, and ``{"cache_miss_reason": {"type": ...,
"cache_missed_input_tokens": N}}`` a reason: ``model_changed``, ``system_changed``,
``tools_changed`` or ``messages_changed`` (with the token count), or
``previous_message_not_found`` / ``unavailable`` (without). ``provider_miss_reason`` is
that type (a bare string ``cache_miss_reason`` is accepted too; only a short
``[a-z0-9_]`` identifier is kept) and ``provider_missed_tokens`` the count. Shape:
anthropic-sdk-python ``types/beta/beta_diagnostics.py`` and the cache-diagnostics page
(https://platform.claude.com/docs/en/build-with-claude/cache-diagnostics); each case is
tested in tests/test_cache_diagnostics.py.

Only identifiers, counts and status strings are kept: never prompt or completion text.
"""

from __future__ import annotations

import re
from typing import Any

from cachewatch.accounting._records import ParsedResponse, TokenUsage, new_token_usage

__all__ = ["UsageAccumulator", "partition_usage", "unwrap_envelope"]

_MESSAGES = "messages"
_CHAT = "chat_completions"
_RESPONSES = "responses"
_DASHSCOPE = "dashscope_generation"

_RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_RESPONSES_CARRY_RESPONSE = frozenset(
    {"response.created", "response.in_progress", "response.queued", *_RESPONSES_TERMINAL}
)


#: Keys a stream's merged Anthropic usage keeps (a real one has about ten): message_delta
#: events that each bring new keys must not grow it for as long as the stream lasts.
_MERGED_KEYS_MAX = 64


def _count(value: object) -> int | None:
    """A non-negative token count, or None when absent or not a number."""
    if type(value) is int:
        return value if value >= 0 else 0
    if type(value) is float and value == value and value not in (float("inf"), float("-inf")):
        return max(int(value), 0)
    return None


def _dict(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _provider_miss_reason(obj: dict[str, Any]) -> tuple[str | None, int | None]:
    """``diagnostics.cache_miss_reason``'s ``type`` and ``cache_missed_input_tokens`` (Anthropic)."""
    diagnostics = obj.get("diagnostics")
    if type(diagnostics) is not dict:
        return None, None  # not asked for, or no divergence
    reason = diagnostics.get("cache_miss_reason")  # None: the comparison is still pending
    missed = None
    if type(reason) is dict:
        missed = _count(reason.get("cache_missed_input_tokens"))
        reason = reason.get("type")
    if isinstance(reason, str) and 0 < len(reason) <= 64:
        reason = reason.lower()
        if reason.replace("_", "").isalnum() and reason.isascii():
            return reason, missed
    return None, None


def _whole_prompt(before: dict[str, Any], delta: dict[str, Any]) -> bool:
    """Whether ``before`` (a message_start's usage) counted the whole prompt in ``input_tokens``
    where ``delta`` (a later message_delta's, without ``input_tokens``) splits off a cache read
    or write: ``before`` has an input count and no cache counter that counts anything (absent,
    null or 0), while the delta's count something (research B.5 and C.4)."""
    if not (_count(delta.get("cache_read_input_tokens")) or _count(delta.get("cache_creation_input_tokens"))):
        return False
    return (
        _count(before.get("input_tokens")) is not None
        and not _count(before.get("cache_read_input_tokens"))
        and not _count(before.get("cache_creation_input_tokens"))
    )


def _first_count(*values: object) -> int | None:
    for value in values:
        n = _count(value)
        if n is not None:
            return n
    return None


def _split_writes(write: int, breakdown: object) -> tuple[int, int]:
    """(5m, 1h) from a ``cache_creation`` object, used only when it sums to ``write``."""
    detail = _dict(breakdown)
    if detail is not None:
        m5 = _count(detail.get("ephemeral_5m_input_tokens")) or 0
        h1 = _count(detail.get("ephemeral_1h_input_tokens")) or 0
        if m5 + h1 == write:
            return m5, h1
    return write, 0


def _x_details(value: object) -> tuple[int | None, int | None, dict[str, int] | None]:
    """Reads, writes and their 5m/1h breakdown summed over DashScope ``x_details[].prompt_tokens_details``.

    None for a count no entry gives; the breakdown only when an entry has ``cache_creation``.
    """
    read = write = None
    breakdown: dict[str, int] | None = None
    if type(value) is not list:
        return None, None, None
    for entry in value:
        detail = _dict(entry.get("prompt_tokens_details")) if type(entry) is dict else None
        if detail is None:
            continue
        n = _count(detail.get("cached_tokens"))
        if n is not None:
            read = (read or 0) + n
        n = _count(detail.get("cache_creation_input_tokens"))
        if n is not None:
            write = (write or 0) + n
        split = _dict(detail.get("cache_creation"))
        if split is not None:
            if breakdown is None:
                breakdown = {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}
            for key in breakdown:
                breakdown[key] += _count(split.get(key)) or 0
    return read, write, breakdown


def _reasoning(usage: dict[str, Any]) -> int | None:
    for key in ("completion_tokens_details", "output_tokens_details"):
        detail = usage.get(key)
        if isinstance(detail, dict):
            n = _first_count(detail.get("reasoning_tokens"), detail.get("thinking_tokens"))
            if n is not None:
                return n
    return None


def partition_usage(usage: object) -> TokenUsage | None:
    """The SPEC section 4 partition of one provider ``usage`` object (None if it has no counts)."""
    if not isinstance(usage, dict):
        return None
    u: dict[str, Any] = usage
    fresh = u.get("input_tokens")
    read = u.get("cache_read_input_tokens")
    write = u.get("cache_creation_input_tokens")
    output = u.get("output_tokens")
    if (
        type(fresh) is int
        and type(read) is int
        and type(write) is int
        and type(output) is int
        and fresh >= 0
        and read >= 0
        and write >= 0
        and output >= 0
        and "output_tokens_details" not in u
        and "completion_tokens_details" not in u
        and "prompt_cache_hit_tokens" not in u
        and "prompt_cache_miss_tokens" not in u
    ):
        # The commonest shape, Anthropic's four counters as plain counts and nothing that
        # the general path below would read first: its Anthropic branch, in one pass.
        m5 = h1 = 0
        if write:
            # _split_writes, for its commonest input: both TTL counts as plain counts.
            detail = u.get("cache_creation")
            if type(detail) is dict:
                a = detail.get("ephemeral_5m_input_tokens")
                b = detail.get("ephemeral_1h_input_tokens")
                if type(a) is int and type(b) is int and a >= 0 and b >= 0:
                    m5, h1 = (a, b) if a + b == write else (write, 0)
                else:
                    m5, h1 = _split_writes(write, detail)
            else:
                m5 = write
        return new_token_usage(fresh, read, m5, h1, output, None)
    # This runs once per response (and per usage-carrying event): absent fields are
    # skipped with a dict membership test rather than a _count(None) call.
    output = _count(output)
    if output is None:
        output = _count(u.get("completion_tokens"))
    reasoning = None
    if "completion_tokens_details" in u or "output_tokens_details" in u:
        reasoning = _reasoning(u)
        if reasoning is not None and output is not None:
            reasoning = min(reasoning, output)
    hit = miss = None
    if "prompt_cache_hit_tokens" in u or "prompt_cache_miss_tokens" in u:
        hit = _count(u.get("prompt_cache_hit_tokens"))
        miss = _count(u.get("prompt_cache_miss_tokens"))
    m5 = h1 = 0
    if hit is not None or miss is not None:
        # DeepSeek: hit + miss is the billed prompt; no write surcharge.
        read = hit or 0
        if miss is None:
            miss = max((_count(u.get("prompt_tokens")) or 0) - read, 0)
        fresh = miss
    elif ("cache_read_input_tokens" in u or "cache_creation_input_tokens" in u) and (
        "input_tokens" in u or "prompt_tokens" not in u
    ):
        # Anthropic: disjoint counters. (With ``prompt_tokens`` and no ``input_tokens`` the
        # prompt total is given, as in LiteLLM's Chat usage: the subset path below.)
        fresh = _count(u.get("input_tokens"))
        read = _count(u.get("cache_read_input_tokens")) or 0
        write = _count(u.get("cache_creation_input_tokens")) or 0
        if fresh is None:
            if not read and not write:
                # ``input_tokens`` (required by Anthropic) null or absent and no cache
                # counter counting anything: the prompt is not reported, not 0 tokens.
                return None
            fresh = 0
        if write:
            m5, h1 = _split_writes(write, u.get("cache_creation"))
    else:
        total = _first_count(u.get("prompt_tokens"), u.get("input_tokens"))
        if total is None:
            # No count of the prompt at all (an output-only usage from a relay): the input
            # side is not reported, which a 0 would hide.
            return None
        total = total or 0
        details = _dict(u.get("prompt_tokens_details")) or _dict(u.get("input_tokens_details")) or {}
        read_n = _first_count(
            details.get("cached_tokens"),
            u.get("cached_tokens"),
            u.get("num_cached_tokens"),
            u.get("cache_read_input_tokens"),
        )
        write_n = _first_count(
            details.get("cache_write_tokens"),
            details.get("cache_creation_input_tokens"),
            u.get("cache_write_tokens"),
            u.get("cache_creation_input_tokens"),
        )
        # The 5m/1h split: Anthropic's ``cache_creation``, or LiteLLM's name for it in its
        # Chat usage of Anthropic models (``cache_creation_token_details``).
        breakdown = (
            details.get("cache_creation")
            or u.get("cache_creation")
            or details.get("cache_creation_token_details")
            or u.get("cache_creation_token_details")
        )
        if (read_n is None or write_n is None) and "x_details" in u:
            # DashScope Responses (session cache): the write is only in the billing detail.
            x_read, x_write, x_breakdown = _x_details(u.get("x_details"))
            if read_n is None:
                read_n = x_read
            if write_n is None:
                write_n, breakdown = x_write, x_breakdown
        read = read_n or 0
        write = write_n or 0
        read = min(read, total)
        if read + write > total:
            # Overlapping counters, not a partition. Seen from OpenRouter for Gemini
            # explicit caching (corpus: prompt 2168, cached 2161, cache_write 2161): the
            # prompt cost matches 2161 read + 7 fresh, the "write" being Gemini's
            # separate storage fee. Reads win; the write is dropped from the partition.
            write = 0
        if write:
            m5, h1 = _split_writes(write, breakdown)
        fresh = total - read - write
    return new_token_usage(fresh, read, m5, h1, output or 0, reasoning)


def unwrap_envelope(obj: object) -> object:
    """Unwrap ``{"code":200,"data":{...}}`` / ``{"success":true,"data":{...}}`` relay envelopes.

    Only when the top level has a ``data`` object and no ``content``/``choices``/``type``
    (research C.4), so real bodies that happen to have a ``data`` key are left alone.
    """
    if type(obj) is dict:
        data = obj.get("data")
        if type(data) is dict and "content" not in obj and "choices" not in obj and "type" not in obj:
            return data
    return obj


def _error_type(obj: dict[str, Any]) -> str | None:
    """The error type of an error body/event in either shape, else None.

    Only identifier-like values are passed through: relays put free text (which can
    quote the prompt) in ``error``, ``type`` or ``code``, and that must not reach a sink.
    """
    err = obj.get("error")
    if type(err) is dict:
        for key in ("type", "code"):
            value = err.get(key)
            if isinstance(value, str) and value:
                return _identifier(value)
            if type(value) is int:
                return str(value)
        return "error"
    if obj.get("type") == "error":
        # Responses stream `error` event: {"type":"error","code":...,"message":...}
        code = obj.get("code")
        if isinstance(code, str) and code:
            return _identifier(code)
        return "error"
    if isinstance(err, str) and err:
        return "error"
    return None


_IDENTIFIER = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

#: Longest response model, id or finish reason kept. These go to the log event and the
#: span as they are: a value that is longer, or holds a control character (a line break
#: would forge lines in a text log), is not an identifier and is not kept.
_MAX_TEXT = 256
#: Most choices whose finish reasons are kept (OpenAI's ``n`` is at most 128).
_MAX_CHOICES = 128


def _text(value: object) -> str | None:
    """``value`` when it is a short printable string (an identifier a provider sends), else None."""
    if isinstance(value, str) and value and len(value) <= _MAX_TEXT and value.isprintable():
        return value
    return None


#: What no error type or code looks like, but a key or token echoed in one does: eight
#: digits in all, a key's prefix (``sk-``), or letters and digits mixed in a run of eight
#: or more between separators (``abc123SECRET``, 32 hex digits). Error types and codes
#: are words and short numbers: ``invalid_request_error``, ``DataInspectionFailed``,
#: ``Throttling.RateQuota``, ``40001``.
_EIGHT_DIGITS = re.compile(r"(?:[^0-9]*[0-9]){8}")
_KEY_PREFIXES = ("sk-", "sk_", "pk-", "key-", "ak-")
_MIXED_RUN = re.compile(
    r"(?=[A-Za-z0-9]*[0-9][A-Za-z0-9]*[0-9])(?=[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]{8,}"
)


def _identifier(value: str) -> str:
    """``value`` when it reads as an error type or code, else ``"error"``."""
    if (
        not _IDENTIFIER.fullmatch(value)
        or _EIGHT_DIGITS.match(value) is not None
        or value.lower().startswith(_KEY_PREFIXES)
        or _MIXED_RUN.search(value) is not None
    ):
        return "error"
    return value


class UsageAccumulator:
    """Folds one response (a JSON body, or the JSON payloads of its SSE events) into a ParsedResponse.

    Args:
        api: the SPEC section 3 ``api`` label: ``messages``, ``chat_completions``,
            ``responses`` or ``dashscope_generation`` (anything else is read generically).

    Example::

        acc = UsageAccumulator("messages")
        acc.add_event("message_start", {"type": "message_start", "message": {...}})
        acc.add_event("message_delta", {"type": "message_delta", "usage": {...}})
        acc.result().usage
    """

    __slots__ = (
        "_api",
        "_cached",
        "_complete",
        "_error_type",
        "_finish",
        "_miss_reason",
        "_missed_tokens",
        "_response_id",
        "_response_model",
        "_usage",
    )

    def __init__(self, api: str) -> None:
        self._api = api
        #: The provider usage object: merged field by field for Anthropic streams, else the latest.
        self._usage: dict[str, Any] | None = None
        self._response_model: str | None = None
        self._response_id: str | None = None
        self._finish: dict[int, str] = {}
        self._error_type: str | None = None
        self._complete = False
        self._miss_reason: str | None = None
        self._missed_tokens: int | None = None
        self._cached: ParsedResponse | None = None

    def copy(self) -> UsageAccumulator:
        clone = UsageAccumulator(self._api)
        clone._usage = dict(self._usage) if self._usage is not None else None
        clone._response_model = self._response_model
        clone._response_id = self._response_id
        clone._finish = dict(self._finish)
        clone._error_type = self._error_type
        clone._complete = self._complete
        clone._miss_reason = self._miss_reason
        clone._missed_tokens = self._missed_tokens
        return clone

    @property
    def has_ids(self) -> bool:
        """Both the response id and model are known (later chunks need not repeat them)."""
        return self._response_id is not None and self._response_model is not None

    # -- inputs ---------------------------------------------------------------------

    def mark_complete(self) -> None:
        """A terminal marker outside the JSON (``data: [DONE]``) was seen."""
        self._complete = True
        self._cached = None

    def add_json(self, obj: object) -> None:
        """A whole (non-streamed) JSON response body."""
        self._cached = None
        self._complete = True
        if type(obj) is dict and "data" in obj:
            obj = unwrap_envelope(obj)
        if type(obj) is not dict:
            return
        # _error_type finds nothing without an "error" key or "type": "error".
        error = _error_type(obj) if "error" in obj or obj.get("type") == "error" else None
        if error is None and self._api == _DASHSCOPE:
            error = _dashscope_error(obj)
        if error is not None:
            self._error_type = error
        self._take_ids(obj)
        if self._api == _DASHSCOPE:
            self._take_ids_dashscope(obj)
            self._take_dashscope_finish(obj)
        elif self._api == _RESPONSES or obj.get("object") == "response":
            self._take_responses_finish(obj)
        elif self._api == _MESSAGES or obj.get("type") == "message":
            self._take_stop_reason(obj.get("stop_reason"))
            if "diagnostics" in obj:
                self._take_diagnostics(obj)
        else:
            self._take_choices(obj.get("choices"))
        usage = obj.get("usage")
        if not isinstance(usage, dict) and "x_groq" in obj:
            usage = (_dict(obj.get("x_groq")) or {}).get("usage")
        if isinstance(usage, dict):
            self._usage = dict(usage)

    def add_event(self, event: str | None, data: object) -> None:
        """The parsed JSON ``data`` of one SSE event, with its ``event:`` name (or None)."""
        self._cached = None
        data = unwrap_envelope(data)
        if type(data) is not dict:
            return
        kind = data.get("type")
        if not isinstance(kind, str):
            kind = event
        api = self._api
        if api == _MESSAGES:
            self._messages_event(kind, data)
        elif api == _RESPONSES:
            self._responses_event(kind, data)
        elif api == _DASHSCOPE:
            self._dashscope_event(event, data)
        else:
            self._chat_event(event, data)

    # -- per-API streams ------------------------------------------------------------

    def _messages_event(self, kind: str | None, data: dict[str, Any]) -> None:
        if kind == "message_start":
            message = _dict(data.get("message")) or {}
            self._take_ids(message)
            if "diagnostics" in message:
                self._take_diagnostics(message)
            usage = _dict(message.get("usage"))
            if usage is not None:
                self._usage = dict(usage)
        elif kind == "message_delta":
            if "diagnostics" in data:
                self._take_diagnostics(data)
            delta = _dict(data.get("delta"))
            stop_reason = delta.get("stop_reason") if delta is not None else None
            self._take_stop_reason(stop_reason)
            usage = _dict(data.get("usage"))
            if usage is not None and isinstance(stop_reason, str) and stop_reason:
                # The final message_delta (stop reason + usage) completes the accounting:
                # LiteLLM's sync stream stops reading right after it and closes the body
                # without ever reading message_stop.
                self._complete = True
            if usage is not None:
                # Overwrite every present, non-null field; never add across events
                # (anthropic-sdk-python accumulate_event). DashScope/Kimi/MiniMax send the
                # cache split only here, after a message_start with the full prompt.
                merged = self._usage if self._usage is not None else {}
                if usage.get("input_tokens") is None and merged and _whole_prompt(merged, usage):
                    # The split arrives without its uncached count (DashScope's Anthropic
                    # endpoint): message_start's input_tokens was the whole prompt, so what
                    # this split does not read or write of it is the uncached part. Adding the
                    # split on top of it would count the cached part twice (research C.4).
                    read = _count(usage.get("cache_read_input_tokens")) or 0
                    write = _count(usage.get("cache_creation_input_tokens")) or 0
                    whole = _count(merged.get("input_tokens")) or 0
                    merged["input_tokens"] = max(whole - read - write, 0)
                for key, value in usage.items():
                    if value is not None and (key in merged or len(merged) < _MERGED_KEYS_MAX):
                        merged[key] = value
                self._usage = merged
        elif kind == "message_stop":
            self._complete = True
        elif kind == "error" or "error" in data:
            error = _error_type(data)
            if error is not None:
                self._error_type = error

    def _chat_event(self, event: str | None, data: dict[str, Any]) -> None:
        if event == "error" or "error" in data:
            # OpenRouter can put an error *and* the final usage on the same chunk.
            error = _error_type(data)
            if error is not None:
                self._error_type = error
        if self._response_id is None or self._response_model is None:
            self._take_ids(data)
        choices = data.get("choices")
        if choices:
            self._take_choices(choices)
        usage = data.get("usage")
        if type(usage) is not dict:
            usage = (_dict(data.get("x_groq")) or {}).get("usage")
            if type(usage) is not dict and type(choices) is list:
                # Moonshot (Kimi): the final chunk's usage is in its choice.
                for choice in choices:
                    if type(choice) is dict and type(choice.get("usage")) is dict:
                        usage = choice["usage"]
                        break
        if type(usage) is dict:
            # Cumulative: some servers send it on every chunk, the last one wins.
            self._usage = dict(usage)

    def _responses_event(self, kind: str | None, data: dict[str, Any]) -> None:
        if kind in _RESPONSES_CARRY_RESPONSE:
            response = _dict(data.get("response")) or {}
            self._take_ids(response)
            usage = _dict(response.get("usage"))
            if usage is not None:
                self._usage = dict(usage)
            if kind in _RESPONSES_TERMINAL:
                self._complete = True
                self._take_responses_finish(response)
                error = _error_type(response)
                if error is not None:
                    self._error_type = error
        elif kind == "error" or kind == "response.error":
            self._error_type = _error_type(data) or "error"

    def _dashscope_event(self, event: str | None, data: dict[str, Any]) -> None:
        error = _error_type(data) or _dashscope_error(data)
        if event == "error" or error is not None:
            self._error_type = error or "error"
            return
        self._take_ids(data)
        self._take_ids_dashscope(data)
        if self._take_dashscope_finish(data):
            self._complete = True
        usage = _dict(data.get("usage"))
        if usage is not None:
            self._usage = dict(usage)  # cumulative in every event

    # -- field helpers --------------------------------------------------------------

    def _take_diagnostics(self, obj: dict[str, Any]) -> None:
        reason, missed = _provider_miss_reason(obj)
        if reason is not None:
            self._miss_reason = reason
            self._missed_tokens = missed

    def _take_ids(self, obj: dict[str, Any]) -> None:
        model = _text(obj.get("model"))
        if model is not None:
            self._response_model = model
        rid = _text(obj.get("id"))
        if rid is not None:
            self._response_id = rid

    def _take_ids_dashscope(self, obj: dict[str, Any]) -> None:
        if self._response_id is None:
            self._response_id = _text(obj.get("request_id"))

    def _take_stop_reason(self, reason: object) -> None:
        reason = _text(reason)
        if reason is not None:
            self._finish = {0: reason}

    def _take_choices(self, choices: object) -> bool:
        found = False
        if type(choices) is list:
            for position, choice in enumerate(choices):
                if type(choice) is not dict:
                    continue
                reason = choice.get("finish_reason")
                if isinstance(reason, str) and reason and reason != "null":
                    found = True
                    index = choice.get("index")
                    key = index if type(index) is int else position
                    finish = self._finish
                    if _text(reason) is not None and (key in finish or len(finish) < _MAX_CHOICES):
                        finish[key] = reason
        return found

    def _take_dashscope_finish(self, obj: dict[str, Any]) -> bool:
        output = _dict(obj.get("output"))
        if output is None:
            return False
        found = self._take_choices(output.get("choices"))
        reason = output.get("finish_reason")
        if isinstance(reason, str) and reason and reason != "null":
            found = True
            if _text(reason) is not None:
                self._finish.setdefault(0, reason)
        return found

    def _take_responses_finish(self, response: dict[str, Any]) -> None:
        incomplete = _dict(response.get("incomplete_details"))
        reason = incomplete.get("reason") if incomplete is not None else None
        if not (isinstance(reason, str) and reason):
            reason = response.get("status")
        reason = _text(reason)
        if reason is not None:
            self._finish = {0: reason}

    # -- output ---------------------------------------------------------------------

    def result(self) -> ParsedResponse:
        """What is known so far (cached until the next input)."""
        cached = self._cached
        if cached is None:
            finish = self._finish
            cached = ParsedResponse(
                usage=partition_usage(self._usage) if self._usage is not None else None,
                response_model=self._response_model,
                response_id=self._response_id,
                finish_reasons=(
                    tuple(finish.values()) if len(finish) < 2 else tuple(finish[k] for k in sorted(finish))
                ),
                error_type=self._error_type,
                complete=self._complete,
                provider_miss_reason=self._miss_reason,
                provider_missed_tokens=self._missed_tokens,
                cache_type=_cache_type(self._usage) if self._usage is not None else None,
            )
            self._cached = cached
        return cached


def _cache_type(usage: dict[str, Any]) -> str | None:
    """``*_tokens_details.cache_type`` (DashScope), as a short lower-case identifier, or None.

    DashScope's Responses API has it in ``x_details[].prompt_tokens_details`` instead.
    """
    details = usage.get("prompt_tokens_details")
    if type(details) is not dict:
        details = usage.get("input_tokens_details")
        if type(details) is not dict:
            details = {}
    value = details.get("cache_type")
    if value is None and type(x_details := usage.get("x_details")) is list:
        # DashScope Responses: the cache type is in the billing detail.
        for entry in x_details:
            detail = _dict(entry.get("prompt_tokens_details")) if type(entry) is dict else None
            if detail is not None and detail.get("cache_type") is not None:
                value = detail.get("cache_type")
                break
    if (
        isinstance(value, str)
        and 0 < len(value) <= 32
        and value.replace("_", "").isalnum()
        and value.isascii()
    ):
        return value.lower()
    return None


def _dashscope_error(obj: dict[str, Any]) -> str | None:
    """DashScope native errors: ``{"code":"InvalidParameter","message":...,"request_id":...}``."""
    code = obj.get("code")
    if isinstance(code, str) and code and "output" not in obj:
        return _identifier(code)  # free text from a relay is not kept (see _error_type)
    return None
