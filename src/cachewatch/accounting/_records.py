"""Values shared by every stage of the data flow.

request -> planner -> transport -> stream observer -> usage record -> sinks

Everything here is a plain frozen value: no I/O, no httpx, no sync/async split.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any, Final, NamedTuple, Protocol, TypeVar

__all__ = [
    "API_LABELS",
    "Breakpoints",
    "Cost",
    "MissVerdict",
    "TOKEN_TYPES",
    "Outcome",
    "PrefixAdvice",
    "ParsedResponse",
    "RequestInfo",
    "ShadowEstimate",
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
class Breakpoints:
    """The planner's marker decisions for one request: where (location) and what (action).

    ``decisions`` holds one ``(location, action)`` pair per decision, in the planner's
    order (``location``: ``tools``, ``system``, ``messages``, ``top_level``; ``action``:
    ``inserted``, ``kept``, ``skipped_*``, ``removed_invalid``); ``profile`` is the
    endpoint profile that planned them. No positions, no content.
    """

    profile: str
    decisions: tuple[tuple[str, str], ...] = ()

    def counts(self) -> dict[str, int]:
        """Decisions per action, in action order."""
        counts: dict[str, int] = {}
        for _, action in self.decisions:
            counts[action] = counts.get(action, 0) + 1
        return dict(sorted(counts.items()))


@dataclass(frozen=True, slots=True)
class MissVerdict:
    """Why a request read less from the cache than its prefix allowed (the miss diagnosis)."""

    reason: str
    #: Position (in this request) of the prefix it could have read, or of the first changed block.
    position: int | None = None
    #: Dotted path of that position (``messages.3.0``) and the block's kind; never content.
    block: str | None = None
    kind: str | None = None
    #: Estimated tokens it could have read, and what it read.
    expected_tokens: int = 0
    read_tokens: int = 0
    #: Provider reason (``provider_reported``), or a short numeric detail.
    detail: str | None = None
    #: The local verdict when the provider's reason won.
    local_reason: str | None = None

    def as_extra(self) -> dict[str, object]:
        """The span/log attributes of this verdict (part of :attr:`UsageRecord.extra`)."""
        out: dict[str, object] = {"miss_reason": self.reason}
        if self.reason.startswith("prefix_changed") and self.block is not None:
            out["miss_changed_block"] = self.block
            out["miss_changed_position"] = self.position if self.position is not None else -1
            if self.kind is not None:
                out["miss_changed_kind"] = self.kind
        elif self.block is not None:
            out["miss_block"] = self.block
        if self.expected_tokens:
            out["miss_expected_tokens"] = self.expected_tokens
        if self.detail is not None:
            out["miss_detail"] = self.detail
        if self.local_reason is not None:
            out["miss_local_reason"] = self.local_reason
        return out


@dataclass(frozen=True, slots=True)
class ShadowEstimate:
    """What ``breakpoints="auto"`` would have been billed for a request sent unchanged
    (``breakpoints="shadow"``): the shadow estimate of ``cachewatch.simulation``."""

    #: The partition ``auto`` would have been billed (the prompt total is the real one).
    usage: TokenUsage
    #: Its money, when the model has a price.
    cost: Cost | None = None
    #: False: ``auto`` would have sent this request as it was (nothing to mark, an endpoint
    #: without markers, or a fault in the estimate), so ``usage`` is the real one.
    simulated: bool = True

    def as_extra(self) -> dict[str, object]:
        """The span/log attributes of the estimate (part of :attr:`UsageRecord.extra`)."""
        usage = self.usage
        out: dict[str, object] = {
            "shadow.simulated": self.simulated,
            "shadow.usage.uncached_input_tokens": usage.input,
            "shadow.usage.cache_read.input_tokens": usage.cache_read,
            "shadow.usage.cache_creation.ephemeral_5m.input_tokens": usage.cache_write_5m,
            "shadow.usage.cache_creation.ephemeral_1h.input_tokens": usage.cache_write_1h,
        }
        cost = self.cost
        if cost is not None:
            out["shadow.cost"] = round(cost.total * 1e9) / 1e9
            out["shadow.currency"] = cost.currency
        return out


class PrefixAdvice(Protocol):
    """A volatile block that cuts a family's cacheable prefix short (the planner's advice).

    Position and kind, never content: ``block`` is its dotted path (``system.0``; with
    ``:first_line`` when only its first line changes), ``tokens`` the estimated tokens
    that would become cacheable if it moved after the stable part.
    """

    @property
    def block(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def tokens(self) -> int: ...


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """Everything cachewatch knows about one exchange once its body has ended.

    This is what every sink receives, the bundled ones and custom ones alike. It holds
    no prompt or completion text and no credential: only labels, counts, timings,
    identifiers and block positions.
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
    #: The planner's marker decisions (``breakpoints="auto"``), None when it did not plan.
    breakpoints: Breakpoints | None = None
    #: Why the cache missed, when the miss diagnosis found a miss.
    miss: MissVerdict | None = None
    #: The miss reason the provider reported (Anthropic cache diagnostics), passed through,
    #: and the ``cache_missed_input_tokens`` it gave with it.
    provider_miss_reason: str | None = None
    provider_missed_tokens: int | None = None
    #: A volatile block that cuts this request's cacheable prefix short, when the planner saw one.
    advice: PrefixAdvice | None = None
    #: ``explicit`` or ``implicit``: which cache served a request priced apart per mode (DashScope).
    cache_mode: str | None = None
    #: False when a successful response did not report usage (counted apart, never a silent 0).
    usage_reported: bool = True
    #: The body could not be parsed (bad encoding, not JSON...).
    unparsed: bool = False
    #: The observation cap the response crossed (it was relayed unchanged, no longer observed).
    observation_truncated: str | None = None
    #: ``breakpoints="shadow"``: what ``auto`` would have been billed (None in other modes,
    #: or when the provider reported no usage).
    shadow: ShadowEstimate | None = None

    @property
    def extra(self) -> dict[str, object]:
        """The stage fields above as flat span/log attributes (names without ``cachewatch.``).

        ``breakpoints.<action>`` counts and ``breakpoints.profile``, ``observation_truncated``,
        ``unparsed``, ``usage_reported`` (only when False), ``provider_miss_reason``,
        ``provider_missed_input_tokens``, the verdict's ``miss_*`` keys, ``cache_mode`` and
        ``prefix_advice.block`` / ``.kind`` / ``.tokens`` and the shadow estimate's
        ``shadow.*`` keys. Values are numbers and short identifiers, never request text.
        Built on each access.
        """
        out: dict[str, object] = {}
        bp = self.breakpoints
        if bp is not None:
            for action, n in bp.counts().items():
                out[f"breakpoints.{action}"] = n
            if bp.profile:
                out["breakpoints.profile"] = bp.profile
        if self.observation_truncated is not None:
            out["observation_truncated"] = self.observation_truncated
        if self.unparsed:
            out["unparsed"] = True
        if not self.usage_reported:
            out["usage_reported"] = False
        if self.provider_miss_reason:
            out["provider_miss_reason"] = self.provider_miss_reason
            if self.provider_missed_tokens is not None:
                out["provider_missed_input_tokens"] = self.provider_missed_tokens
        if self.miss is not None:
            out.update(self.miss.as_extra())
        if self.cache_mode is not None:
            out["cache_mode"] = self.cache_mode
        advice = self.advice
        if advice is not None:
            out["prefix_advice.block"] = advice.block
            out["prefix_advice.kind"] = advice.kind
            out["prefix_advice.tokens"] = advice.tokens
        if self.shadow is not None:
            out.update(self.shadow.as_extra())
        return out


# -- fast constructors -------------------------------------------------------------------
#
# A frozen dataclass's generated ``__init__`` sets each field through
# ``object.__setattr__``, about twice the cost of the slot descriptor's own ``__set__``,
# itself several times the cost of a plain attribute store on a class that does not
# forbid it. The values built once per request (usage, cost, the record, the planner's
# plan, placements and sightings) are built through positional factories instead: same
# class, same values, a fraction of the cost.

_T = TypeVar("_T")


def slot_factory(cls: type[_T]) -> Callable[..., _T]:
    """A positional ``cls(...)`` taking every field, in field order, for a slots dataclass
    (the trailing fields with a plain default may be left out).

    The function is generated, as dataclasses generates ``__init__``. For a class that
    does not forbid attribute stores it allocates the instance and stores each field.
    A frozen class forbids them, so the instance is allocated as a *builder*: a plain
    class with the very same ``__slots__``, hence the same memory layout, whose stores
    are plain attribute stores; once every field is set, the instance's ``__class__``
    becomes ``cls`` (Python allows ``__class__`` assignment between classes of the same
    layout, and checks it). The result is an ordinary, frozen ``cls`` instance. Where the
    layouts differ (a base with slots, a ``__weakref__`` slot...) the check fails when the
    factory is built and each field is set through its slot descriptor instead.
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    env: dict[str, object] = {"new": object.__new__, "cls": cls}
    # The plain defaults (not default factories) of the trailing fields are the
    # parameters' defaults, so a call may leave those fields out as it may for the class.
    params = list(names)
    for i, f in reversed(list(enumerate(fields(cls)))):  # type: ignore[arg-type]
        if f.default is MISSING:
            break
        env[f"default{i}"] = f.default
        params[i] = f"{f.name}=default{i}"
    lines = [f"def make({', '.join(params)}):"]
    if cls.__setattr__ is object.__setattr__:
        lines.append("    o = new(cls)")
        lines.extend(f"    o.{name} = {name}" for name in names)
    elif (builder := _builder(cls)) is not None:
        env["builder"] = builder
        # Calling the builder (it has no ``__new__`` or ``__init__`` of its own) allocates
        # through the type's own slot: ~500 instructions less than ``object.__new__(builder)``,
        # which checks its arguments in Python's generic wrapper first.
        lines.append("    o = builder()")
        lines.extend(f"    o.{name} = {name}" for name in names)
        lines.append("    o.__class__ = cls")
    else:
        lines.append("    o = new(cls)")
        for i, name in enumerate(names):
            slot = next(k.__dict__[name] for k in cls.__mro__ if name in k.__dict__)
            env[f"set{i}"] = slot.__set__
            lines.append(f"    set{i}(o, {name})")
    lines.append("    return o")
    exec("\n".join(lines), env)  # the field names of the class itself, nothing else
    make = env["make"]
    make.__doc__ = f"``{cls.__name__}(...)`` with the fields in field order."
    return make  # type: ignore[return-value]


def slot_replace(cls: type[_T], make: Callable[..., _T]) -> Callable[..., _T]:
    """``dataclasses.replace(obj, **changes)`` for a slots dataclass built by ``make``
    (its :func:`slot_factory`), for a class without ``__post_init__`` or init-only fields.

    ``dataclasses.replace`` walks ``fields()``, gathers every field into a keyword dict
    and calls the frozen ``__init__``: about 15x the cost of this generated function,
    which takes each field as an optional keyword and passes the others on from ``obj``.
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    keep = object()
    env: dict[str, object] = {"make": make, "keep": keep}
    head = ", ".join(f"{name}=keep" for name in names)
    args = ", ".join(f"o.{name} if {name} is keep else {name}" for name in names)
    exec(f"def replace(o, *, {head}):\n    return make({args})", env)  # field names only
    replace = env["replace"]
    replace.__doc__ = f"``dataclasses.replace`` of a ``{cls.__name__}``."
    return replace  # type: ignore[return-value]


def _builder(cls: type) -> type | None:
    """A plain class with the layout of ``cls`` (see :func:`slot_factory`), or None if none fits."""
    slots = cls.__dict__.get("__slots__")
    if cls.__bases__ != (object,) or not isinstance(slots, tuple):
        return None
    builder = type(f"_{cls.__name__}Builder", (), {"__slots__": slots, "__module__": cls.__module__})
    probe: Any = object.__new__(builder)
    try:
        probe.__class__ = cls  # raises TypeError unless the layouts are the same
    except TypeError:
        return None
    return builder


new_token_usage: Final[Callable[[int, int, int, int, int, int | None], TokenUsage]] = slot_factory(TokenUsage)
new_cost: Final[Callable[[float, float, float, str], Cost]] = slot_factory(Cost)
new_usage_record: Final[Callable[..., UsageRecord]] = slot_factory(UsageRecord)
new_breakpoints: Final[Callable[[str, tuple[tuple[str, str], ...]], Breakpoints]] = slot_factory(Breakpoints)
