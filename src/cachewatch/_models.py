"""Values shared by every stage of the data flow.

request -> planner -> transport -> stream observer -> usage record -> sinks

Everything here is a plain frozen value: no I/O, no httpx, no sync/async split.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Final, NamedTuple

__all__ = [
    "API_LABELS",
    "Cost",
    "TOKEN_TYPES",
    "Outcome",
    "ParsedResponse",
    "RequestInfo",
    "TokenUsage",
    "UsageRecord",
]

#: The closed set of `api` label values (SPEC section 3).
API_LABELS = ("messages", "chat_completions", "responses", "dashscope_generation")

#: The closed set of `type` label values of ``cachewatch_tokens_total`` (SPEC section 4).
TOKEN_TYPES = ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output")


class Outcome(str, enum.Enum):
    """How an exchange ended, as the `outcome` label."""

    OK = "ok"
    CLIENT_ERROR = "client_error"
    SERVER_ERROR = "server_error"
    TRANSPORT_ERROR = "transport_error"
    ABORTED = "aborted"

    def __init__(self, label: str) -> None:
        #: The label value as a plain ``str`` (``value`` is a property: slower on the hot path).
        self.label = label

    @classmethod
    def from_status(cls, status: int) -> Outcome:
        if status >= 500:
            return cls.SERVER_ERROR
        if status >= 400:
            return cls.CLIENT_ERROR
        return cls.OK


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """One request's billed tokens, partitioned as in SPEC section 4.

    ``input + cache_read + cache_write_5m + cache_write_1h`` is the total prompt the
    provider billed; ``output`` includes reasoning tokens.
    """

    input: int = 0
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    output: int = 0
    #: Reasoning tokens, a subset of ``output``, when the provider reports them.
    reasoning: int | None = None

    @property
    def cache_write(self) -> int:
        return self.cache_write_5m + self.cache_write_1h

    @property
    def prompt_total(self) -> int:
        """All prompt tokens, cache reads and writes included (OTel ``gen_ai.usage.input_tokens``)."""
        return self.input + self.cache_read + self.cache_write_5m + self.cache_write_1h

    def as_partition(self) -> dict[str, int]:
        """The five partition counts keyed by the ``type`` label."""
        return {
            "input": self.input,
            "cache_read": self.cache_read,
            "cache_write_5m": self.cache_write_5m,
            "cache_write_1h": self.cache_write_1h,
            "output": self.output,
        }


class ParsedResponse(NamedTuple):
    """What the sans-IO response parser learned from one response body.

    Internal to the data flow (observer -> engine), so a named tuple: as immutable as a
    frozen dataclass, and built by one call instead of one ``object.__setattr__`` per
    field (it is built once per response, or per ``result()`` of a stream).
    """

    usage: TokenUsage | None = None
    response_model: str | None = None
    response_id: str | None = None
    finish_reasons: tuple[str, ...] = ()
    #: Provider error type (``overloaded_error``, ``invalid_request_error``...) when the body is an error.
    error_type: str | None = None
    #: A terminal event was seen (``message_stop``, ``[DONE]``, ``response.completed``...), or the JSON body parsed.
    complete: bool = False
    #: The body could not be parsed (bad encoding, not JSON, over the size cap...).
    unparsed: bool = False
    #: Provider-reported cache-miss reason (Anthropic cache diagnostics), passed through as-is.
    provider_miss_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Cost:
    """The money of one request, in ``currency``."""

    total: float
    savings: float
    write_premium: float
    currency: str

    @property
    def net_savings(self) -> float:
        return self.savings - self.write_premium


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What cachewatch knows about a request before it goes out (labels and span attributes)."""

    provider: str
    api: str
    model: str
    workspace: str
    request_model: str | None
    server_address: str
    server_port: int | None
    operation: str = "chat"
    stream: bool = False


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """Everything cachewatch knows about one exchange once its body has ended.

    This is what every sink receives. It holds no prompt or completion text and no
    credential: only labels, counts, timings and identifiers.
    """

    request: RequestInfo
    outcome: Outcome
    status_code: int | None = None
    #: The response was a Server-Sent-Event stream.
    stream: bool = False
    usage: TokenUsage | None = None
    response_model: str | None = None
    response_id: str | None = None
    finish_reasons: tuple[str, ...] = ()
    #: Provider error type, or the exception class name for a transport error.
    error_type: str | None = None
    #: Seconds from sending the request to the end (or close) of the body.
    duration: float = 0.0
    #: Seconds from sending the request to the first body chunk (streams only).
    time_to_first_token: float | None = None
    #: Money of this request, when its model has a price.
    cost: Cost | None = None
    #: Stage-specific details for spans and logs (breakpoints placed, miss reason, cost...).
    #: Values are numbers, short identifiers or tuples of them, never request text.
    extra: dict[str, object] = field(default_factory=dict)


# -- fast constructors -------------------------------------------------------------------
#
# A frozen dataclass's generated ``__init__`` sets each field through
# ``object.__setattr__``, about twice the cost of the slot descriptor's own ``__set__``.
# The records built once per request (usage, cost, the record itself) are built through
# these positional factories instead: same class, same values, half the cost.


def _field_setters(cls: type, names: tuple[str, ...]) -> tuple[Callable[[object, object], None], ...]:
    """The slot setters of a frozen slots dataclass, checked against its field order."""
    if tuple(f.name for f in fields(cls)) != names:
        raise TypeError(f"{cls.__name__} fields changed: update its factory")
    return tuple(cls.__dict__[name].__set__ for name in names)


def _token_usage_factory() -> Callable[[int, int, int, int, int, int | None], TokenUsage]:
    new = object.__new__
    s0, s1, s2, s3, s4, s5 = _field_setters(
        TokenUsage, ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output", "reasoning")
    )

    def make(
        input: int,
        cache_read: int,
        cache_write_5m: int,
        cache_write_1h: int,
        output: int,
        reasoning: int | None,
    ) -> TokenUsage:
        """``TokenUsage(...)`` with every field given, without the frozen ``__init__``'s cost."""
        usage = new(TokenUsage)
        s0(usage, input)
        s1(usage, cache_read)
        s2(usage, cache_write_5m)
        s3(usage, cache_write_1h)
        s4(usage, output)
        s5(usage, reasoning)
        return usage

    return make


def _cost_factory() -> Callable[[float, float, float, str], Cost]:
    new = object.__new__
    s0, s1, s2, s3 = _field_setters(Cost, ("total", "savings", "write_premium", "currency"))

    def make(total: float, savings: float, write_premium: float, currency: str) -> Cost:
        """``Cost(...)`` with every field given, without the frozen ``__init__``'s cost."""
        cost = new(Cost)
        s0(cost, total)
        s1(cost, savings)
        s2(cost, write_premium)
        s3(cost, currency)
        return cost

    return make


def _usage_record_factory() -> Callable[..., UsageRecord]:
    new = object.__new__
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12 = _field_setters(
        UsageRecord,
        (
            "request",
            "outcome",
            "status_code",
            "stream",
            "usage",
            "response_model",
            "response_id",
            "finish_reasons",
            "error_type",
            "duration",
            "time_to_first_token",
            "cost",
            "extra",
        ),
    )

    def make(
        request: RequestInfo,
        outcome: Outcome,
        status_code: int | None,
        stream: bool,
        usage: TokenUsage | None,
        response_model: str | None,
        response_id: str | None,
        finish_reasons: tuple[str, ...],
        error_type: str | None,
        duration: float,
        time_to_first_token: float | None,
        cost: Cost | None,
        extra: dict[str, object],
    ) -> UsageRecord:
        """``UsageRecord(...)`` with every field given, without the frozen ``__init__``'s cost."""
        record = new(UsageRecord)
        s0(record, request)
        s1(record, outcome)
        s2(record, status_code)
        s3(record, stream)
        s4(record, usage)
        s5(record, response_model)
        s6(record, response_id)
        s7(record, finish_reasons)
        s8(record, error_type)
        s9(record, duration)
        s10(record, time_to_first_token)
        s11(record, cost)
        s12(record, extra)
        return record

    return make


new_token_usage: Final = _token_usage_factory()
new_cost: Final = _cost_factory()
new_usage_record: Final = _usage_record_factory()
