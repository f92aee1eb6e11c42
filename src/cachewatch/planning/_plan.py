"""The engine <-> planner contract: the :class:`Plan` and the :class:`PlannerProtocol`.

Data flow: planner -> **plan** -> engine (the body to send, breakpoint counts, span
and log attributes) -> planner again (``started``/``finished``/``observe`` feedback).
Plain frozen data; the in-flight bookkeeping a plan carries (:class:`Ticket`) is
the planner's and opaque to everyone else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from ..accounting._records import TokenUsage, slot_factory
from ._layout import Layout, Location
from ._learning import Advice

__all__ = [
    "ACTIONS",
    "Placement",
    "Plan",
    "PlannerProtocol",
    "Ticket",
    "new_placement",
    "new_plan",
    "new_ticket",
]

#: Every ``action`` a :class:`Placement` can have (the ``action`` label of
#: ``cachewatch_breakpoints_total``).
ACTIONS: Final = (
    "inserted",
    "kept",
    "skipped_below_minimum",
    "skipped_no_slot",
    "skipped_ttl_order",
    "skipped_in_flight",
    "skipped_not_reused",
    "skipped_implicit",
    "removed_invalid",
)


@dataclass(frozen=True, slots=True)
class Placement:
    """One decision about one marker position.

    ``action`` is one of :data:`ACTIONS`: ``inserted``, ``kept`` (the caller's own),
    ``skipped_below_minimum``, ``skipped_no_slot``, ``skipped_ttl_order``,
    ``skipped_in_flight`` (another request is writing that prefix), ``skipped_not_reused``
    (what was learnt says a write there would not be read), ``skipped_implicit`` (on an
    endpoint with an implicit cache, the request pays less left unmarked), ``removed_invalid``.
    """

    location: Location
    action: str
    ttl: str | None
    #: Indices into the body: ``(tool,)``, ``(system_block,)``, ``(message, block)``, ``()`` for top-level.
    index: tuple[int, ...]
    #: Dotted JSON path of the block, e.g. ``messages.3.content.0`` (``cache_control`` for top-level).
    path: str
    #: Position of the block in the flattened tools -> system -> messages prompt (-1: top-level).
    position: int
    #: Estimated prompt tokens up to and including the block.
    prefix_tokens: int
    #: Why the planner considered it: ``tail``, ``static``, ``previous_turn``, ``document``, ``caller``.
    reason: str = "caller"


@dataclass(slots=True, eq=False)
class Ticket:
    """One planned request's claims on, and feedback to, the planner's learned state."""

    #: Identifies the request to the learner (its claims).
    id: int
    #: The family (see ``_learning``) and the (profile, model) key of learned minimums.
    family: int
    model_key: str
    #: Prefix keys this request marked (inserted or kept), with their TTL in seconds.
    marked: list[tuple[int, float]] = field(default_factory=list)
    #: Shared prefix keys this request claimed (it writes them first).
    claimed: list[int] = field(default_factory=list)
    #: Every candidate prefix key the learner counted for this request.
    sighted: list[int] = field(default_factory=list)
    #: Raw estimate of the deepest prefix believed cached that it marked (0: none).
    expected_read_raw: float = 0.0
    #: Raw estimate of the deepest marked prefix, and of the whole prompt.
    deepest_raw: float = 0.0
    total_raw: float = 0.0
    #: A marker went below the learned minimum (above the documented one) to re-test it.
    probe: bool = False
    started: bool = False
    ended: bool = False
    #: The learned minimum a probe went below (0: no probe).
    probed_minimum: int = 0
    #: Prefix keys it sighted uncached and does not write (shared ones it claimed, and the
    #: others): sighted until its response begins.
    released: list[int] = field(default_factory=list)
    #: Sent unmarked to an implicit cache: raw estimate of the deepest prefix another
    #: unmarked request sent within the TTL, which that cache should serve (0: none). Its
    #: bill measures the cache's hit rate (``Planner.implicit_hit_rate``).
    implicit_read_raw: float = 0.0
    #: Sent unmarked to an implicit cache: the prefix keys it puts there once its response
    #: begins (``Planner.started`` tells the learner: ``Sight.implicit``).
    implicit_keys: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    """The planner's answer for one request."""

    #: The body to send, or None to send the original bytes unchanged.
    body: bytes | None
    placements: tuple[Placement, ...] = ()
    profile: str = "unknown"
    model: str | None = None
    #: ``stream_options.include_usage`` was added (the response side hides the extra chunk).
    added_include_usage: bool = False
    #: Raw (uncalibrated) estimate of the whole prompt; None when the body was not walked.
    raw_estimate: float | None = None
    #: Calibrated estimate of the whole prompt.
    estimated_tokens: int | None = None
    #: Tokenizer family of the model (calibration key).
    family: str = "other"
    #: The request has no assistant turn yet (a first turn or a one-shot request).
    first_turn: bool = True
    #: The request has exactly one assistant turn: the first continuation of a conversation.
    second_turn: bool = False
    #: Estimated tokens up to the static (tools + system) prefix end.
    static_tokens: int = 0
    #: Why the body was left alone when it was: ``unsupported``, ``not_json``, ``invalid_shape``,
    #: ``lossy_json`` (re-serialising it would change an integer outside 64 bits),
    #: ``internal_error`` (see :attr:`fault`); None otherwise.
    error: str | None = None
    api: str | None = None
    provider: str = "other"
    #: The planner's bookkeeping for this request (see :meth:`Planner.started`).
    ticket: Ticket | None = field(default=None, repr=False, compare=False)
    #: The request's layout (positions and prefix digests), for the miss diagnosis to reuse
    #: instead of walking the body again; None when the plan has an error.
    layout: Layout | None = field(default=None, repr=False, compare=False)
    #: A volatile block that cuts this request's family's cacheable prefix short, if any.
    advice: Advice | None = None
    #: The fault the planner contained (``error == "internal_error"``), for the engine to count.
    fault: Exception | None = field(default=None, repr=False, compare=False)
    #: The family tokenizer's count of the whole prompt (uncalibrated), when this request
    #: was sampled to calibrate it against the billed total (``TokenEstimator.observe_precise``).
    precise_estimate: float | None = None
    #: The body's top-level ``stream`` is true; None when the body was not parsed.
    stream: bool | None = None

    @property
    def inserted(self) -> tuple[Placement, ...]:
        return tuple(p for p in self.placements if p.action == "inserted")


# The hot path builds one Plan and a few Placements per request, positionally, without
# the frozen ``__init__``'s cost (see ``accounting._records.slot_factory``).
new_placement: Final[
    Callable[[Location, str, str | None, tuple[int, ...], str, int, int, str], Placement]
] = slot_factory(Placement)
new_plan: Final[Callable[..., Plan]] = slot_factory(Plan)
new_ticket: Final[Callable[..., Ticket]] = slot_factory(Ticket)


class PlannerProtocol(Protocol):
    """What the engine asks of a planner (:class:`~cachewatch.planning._planner.Planner` is one).

    ``plan`` never raises for a body it cannot plan: it returns a plan with ``body=None``
    and an ``error`` (a fault it contained in :attr:`Plan.fault`). The feedback hooks are
    called for plans that carry a ``ticket`` (in-flight claims): ``started`` when the
    response's headers arrive, ``finished`` exactly once when the exchange ends (whatever
    its outcome, with the billed usage when known); ``observe`` after a response that
    reported usage or succeeded, for every plan.
    """

    def plan(self, *, api: str, host: str, path: str, body: bytes, scope: str = "") -> Plan: ...

    def started(self, plan: Plan, status_code: int = 200) -> None: ...

    def finished(self, plan: Plan, usage: TokenUsage | None = None) -> None: ...

    def observe(self, plan: Plan, usage: TokenUsage | None) -> None: ...
