"""Values shared by every stage of the data flow.

request -> planner -> transport -> stream observer -> usage record -> sinks

Everything here is a plain frozen value: no I/O, no httpx, no sync/async split.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Final, NamedTuple, TypeVar

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
    #: A terminal event was seen (``message_stop``, ``[DONE]``, ``response.completed``...), or the
    #: final Anthropic ``message_delta`` with its stop reason and usage, or the JSON body parsed.
    complete: bool = False
    #: The body could not be parsed (bad encoding, not JSON, over the size cap...).
    unparsed: bool = False
    #: Provider-reported cache-miss reason (Anthropic cache diagnostics), passed through as-is.
    provider_miss_reason: str | None = None
    #: ``cache_missed_input_tokens`` of that reason, when the provider gave one.
    provider_missed_tokens: int | None = None
    #: ``prompt_tokens_details.cache_type`` as reported (DashScope: ``ephemeral`` for explicit
    #: and session cache, ``implicit`` for implicit cache), when present.
    cache_type: str | None = None


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
# The values built once per request (usage, cost, the record, the planner's plan and
# placements) are built through positional factories instead: same class, same values,
# half the cost.

_T = TypeVar("_T")


def slot_factory(cls: type[_T]) -> Callable[..., _T]:
    """A positional ``cls(...)`` taking every field, in field order, for a frozen slots dataclass.

    The function is generated, as dataclasses generates ``__init__``: it allocates the
    instance and calls each field's slot setter, without ``object.__setattr__``.
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    env: dict[str, object] = {"new": object.__new__, "cls": cls}
    lines = [f"def make({', '.join(names)}):", "    o = new(cls)"]
    for i, name in enumerate(names):
        env[f"set{i}"] = cls.__dict__[name].__set__
        lines.append(f"    set{i}(o, {name})")
    lines.append("    return o")
    exec("\n".join(lines), env)  # the field names of the class itself, nothing else
    make = env["make"]
    make.__doc__ = f"``{cls.__name__}(...)`` with every field given, positionally."
    return make  # type: ignore[return-value]


new_token_usage: Final[Callable[[int, int, int, int, int, int | None], TokenUsage]] = slot_factory(TokenUsage)
new_cost: Final[Callable[[float, float, float, str], Cost]] = slot_factory(Cost)
new_usage_record: Final[Callable[..., UsageRecord]] = slot_factory(UsageRecord)
