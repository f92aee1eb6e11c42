"""Values shared by every stage of the data flow.

request -> planner -> transport -> stream observer -> usage record -> sinks

Everything here is a plain frozen value: no I/O, no httpx, no sync/async split.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

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


@dataclass(frozen=True, slots=True)
class ParsedResponse:
    """What the sans-IO response parser learned from one response body."""

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
