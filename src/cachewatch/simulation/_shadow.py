"""The shadow estimate: what ``breakpoints="auto"`` would have cost, on traffic sent unchanged.

Data flow (``breakpoints="shadow"``)::

    request (sent byte-identical) -> Shadow.begin -> response starts -> Shadow.started
        -> usage billed -> Shadow.finish -> the usage auto would have been billed

* :meth:`Shadow.begin`: a :class:`~cachewatch.planning._planner.Planner` of the shadow's
  own plans the request as ``auto`` would (its plan is never sent). The markers it would
  place (and the caller's own, which ``auto`` keeps) become breakpoints on the planner's
  layout: position ``i`` is identified by the layout's cumulative prefix digest, bound to
  the profile, model and credential scope; its size is the planner's running estimate.
  The cache model (``_cache``, the emulator's own) looks every breakpoint up with the
  20-position lookback, refreshes what it finds and reserves the writes.
* :meth:`Shadow.started`: the writes become readable (a write is readable once the
  response that made it has started; a failed request writes nothing).
* :meth:`Shadow.finish`: the prompt total the provider really billed rescales the
  estimates, so the partition (reads up to the deepest hit, 1h then 5m writes up to
  the last breakpoint written, the rest uncached) adds up to what was billed. A prefix
  that was a whole earlier prompt has a known size (that prompt's billed total): a read
  of it counts that size, and only the rest is shared out by estimate (so a large tool
  result the local estimate undercounts does not shift tokens into the read). A write
  whose rescaled prefix is below the model's minimum is withdrawn, and a read of such a
  prefix (an entry reserved on an estimate, read while its writer was still running) is
  undone and the entry dropped. The result is fed
  back to the shadow planner as its own outcome, so it learns from what it would have
  got, exactly as ``auto`` learns from what it gets.

A request to which ``auto`` would add nothing (an endpoint without markers, nothing worth
marking) would have gone out as it did: its real usage stands (``simulated=False``).

What the estimate assumes: the provider honours every marker and keeps every entry for
its whole TTL (no eviction, no relay that drops markers), the positions' share of the
prompt is as estimated locally, and the calls ``auto`` would have made happen at the
same times as the real ones. Only digests, indices and counts are kept: no prompt text.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..accounting._records import TokenUsage
from ..planning._layout import CUM, OK
from ..planning._plan import Plan
from ..planning._planner import Planner
from ..planning._profiles import Profile
from ._cache import Breakpoint, CacheStore, Reservation, Ttl, bill

__all__ = ["Shadow", "ShadowOutcome", "ShadowTicket", "breakpoints_of"]

#: At :meth:`Shadow.begin` the prompt is known only by estimate: a write is reserved when
#: the estimate reaches this share of the minimum, and withdrawn at the end if the billed
#: total shows the prefix below it.
_MIN_SLACK = 0.8


@dataclass(frozen=True, slots=True)
class ShadowOutcome:
    """What ``auto`` would have been billed for one request."""

    usage: TokenUsage
    #: False: ``auto`` would have sent this request unchanged, and ``usage`` is the real one.
    simulated: bool


@dataclass(slots=True, eq=False)
class ShadowTicket:
    """One request's shadow state, from :meth:`Shadow.begin` to :meth:`Shadow.finish`."""

    plan: Plan
    reservation: Reservation | None = None
    min_tokens: int = 0
    #: The simulated cache's namespace of this request (scope, profile, model).
    namespace: str = ""
    started: bool = False
    ended: bool = False


def breakpoints_of(plan: Plan, profile: Profile) -> list[Breakpoint]:
    """The breakpoints a planned request would carry: markers inserted or kept, and the
    top-level automatic one on the last cacheable block, at most ``max_breakpoints`` (the
    last ones win, as on a lenient endpoint)."""
    layout = plan.layout
    if layout is None:
        return []
    at: dict[int, Ttl] = {}
    top: Ttl | None = None
    for p in plan.placements:
        if p.action not in ("inserted", "kept"):
            continue
        ttl: Ttl = "1h" if p.ttl == "1h" and profile.honours_1h else "5m"
        if p.location == "top_level":
            top = ttl
        elif p.position >= 0:
            at[p.position] = ttl
    if top is not None:
        positions = layout.positions
        target = next((i for i in range(len(positions) - 1, -1, -1) if positions[i][OK]), None)
        if target is not None:
            at.setdefault(target, top)
    out = [Breakpoint(i, ttl) for i, ttl in sorted(at.items())]
    limit = profile.max_breakpoints
    return out[len(out) - limit :] if len(out) > limit else out


def _calibrated(
    positions: Sequence[Any], needed: int, raw: float, total: int, reservation: Reservation
) -> list[int]:
    """Tokens through each position ``0..needed``, adding up to the billed ``total``.

    The planner's raw estimates are rescaled to the billed total. When the prefix read was
    measured (a whole earlier prompt, :meth:`Reservation.measure`), that prefix counts its
    measured size and only the rest of the prompt is shared out by the estimates.
    """
    hit, measured = reservation.hit, reservation.hit_tokens
    if hit >= 0 and measured is not None and 0 < measured <= total:
        base = positions[hit][CUM]
        rest = raw - base
        if rest > 0:
            scale = (total - measured) / rest
            return [
                min(measured, round(measured * positions[i][CUM] / base))
                if i < hit
                else min(total, measured + round((positions[i][CUM] - base) * scale))
                for i in range(needed + 1)
            ]
    scale = total / raw
    return [min(total, round(positions[i][CUM] * scale)) for i in range(needed + 1)]


class Shadow:
    """Plans what ``auto`` would place and simulates the provider's cache for it.

    Thread-safe through its parts (the planner and the cache store lock their own state; a
    ticket belongs to one exchange).

    Args:
        planner: the shadow's own planner (default: a new :class:`Planner` on ``clock``
            with ``planner_options``); never the one that plans real traffic.
        clock: wall clock in seconds, for TTLs (the engine's ``wall_clock``).
        max_entries: simulated cache entries kept (least recently used first out).

    Example::

        shadow = Shadow()
        ticket = shadow.begin(api="messages", host="api.anthropic.com", path="/v1/messages", body=raw)
        ...                                   # the request goes out unchanged
        shadow.started(ticket, 200)           # its response started
        outcome = shadow.finish(ticket, usage)  # usage: what the provider billed
    """

    def __init__(
        self,
        planner: Planner | None = None,
        *,
        clock: Callable[[], float] = time.time,
        max_entries: int = 100_000,
        **planner_options: Any,
    ) -> None:
        self.clock = clock
        # The plan is never sent: its decisions are made, its body is not serialised.
        self.planner = (
            planner if planner is not None else Planner(clock=clock, **{"render": False, **planner_options})
        )
        self.cache = CacheStore(clock, max_entries=max_entries)

    def begin(self, *, api: str, host: str, path: str, body: bytes, scope: str = "") -> ShadowTicket | None:
        """Plan ``body`` as ``auto`` would and look its breakpoints up; None: nothing to follow.

        A fault the planner contained (``plan.fault``) is raised here, for the caller to
        count: the shadow planner's faults are the shadow's.
        """
        plan = self.planner.plan(api=api, host=host, path=path, body=body, scope=scope)
        if plan.fault is not None:
            raise plan.fault
        if plan.ticket is None and (plan.layout is None or plan.error is not None):
            return None
        ticket = ShadowTicket(plan)
        try:
            self._reserve(ticket, scope)
        except BaseException:
            self.planner.finished(plan)  # its claims end with it, as auto's do on a fault
            raise
        return ticket

    def _reserve(self, ticket: ShadowTicket, scope: str) -> None:
        """Look the breakpoints ``auto`` would have placed up in the simulated cache."""
        plan = ticket.plan
        layout = plan.layout
        raw = plan.raw_estimate
        if layout is None or plan.error is not None or not raw:
            return
        profile = self.planner.registry.get(plan.profile)
        breakpoints = breakpoints_of(plan, profile)
        if not breakpoints:
            return
        ticket.min_tokens = profile.min_tokens_for(plan.model)
        ratio = (plan.estimated_tokens or raw) / raw
        positions = layout.positions
        last = breakpoints[-1].index
        estimate = [int(positions[i][CUM] * ratio / _MIN_SLACK) for i in range(last + 1)]
        ticket.namespace = f"{scope}\x00{plan.profile}\x00{plan.model}"
        ticket.reservation = self.cache.reserve(
            layout.digests,
            estimate,
            breakpoints,
            lookback=profile.lookback,
            min_tokens=ticket.min_tokens,
            namespace=ticket.namespace,
        )

    def started(self, ticket: ShadowTicket, status_code: int = 200) -> None:
        """The real response started: what the request would have written is readable now."""
        if ticket.started or ticket.ended:
            return
        ticket.started = True
        if ticket.reservation is not None and status_code < 400:
            ticket.reservation.commit()
        self.planner.started(ticket.plan, status_code)

    def finish(
        self, ticket: ShadowTicket, usage: TokenUsage | None, status_code: int = 200
    ) -> ShadowOutcome | None:
        """The exchange ended with ``usage`` billed (None: not reported); what auto would have been billed."""
        if ticket.ended:
            return None
        ticket.ended = True
        plan = ticket.plan
        reservation = ticket.reservation
        outcome: ShadowOutcome | None = None
        if usage is not None:
            outcome = ShadowOutcome(usage, False)
            total = usage.prompt_total
            raw = plan.raw_estimate
            if reservation is not None and total > 0 and raw and plan.layout is not None:
                if not ticket.started or status_code >= 400:
                    reservation.withdraw([bp.index for bp in reservation.written])
                positions = plan.layout.positions
                needed = max([reservation.hit, *(bp.index for bp in reservation.written)], default=-1)
                cumulative = _calibrated(positions, needed, raw, total, reservation)
                hit = reservation.hit
                if hit >= 0 and cumulative[hit] < ticket.min_tokens:
                    # It read an entry reserved on an estimate while its writer was still
                    # running; this prompt's billed size shows that prefix below the model's
                    # minimum: the provider never wrote it, and nobody reads it again.
                    self.cache.discard((ticket.namespace, plan.layout.digests[hit]))
                    hit = -1
                small = [bp.index for bp in reservation.written if cumulative[bp.index] < ticket.min_tokens]
                if small:
                    reservation.withdraw(small)
                last = len(positions) - 1
                if any(bp.index == last for bp in reservation.written):
                    # A whole billed prompt: its size is known, not estimated.
                    reservation.measure(last, cumulative[last])
                split = bill(cumulative, hit, reservation.written, total)
                outcome = ShadowOutcome(
                    TokenUsage(
                        split.input_tokens,
                        split.cache_read,
                        split.cache_write_5m,
                        split.cache_write_1h,
                        usage.output,
                        usage.reasoning,
                    ),
                    True,
                )
        elif reservation is not None and not ticket.started:
            reservation.withdraw([bp.index for bp in reservation.written])
        shadow_usage = outcome.usage if outcome is not None else None
        planner = self.planner
        planner.finished(plan, shadow_usage)
        if shadow_usage is not None or 200 <= status_code < 300:
            planner.observe(plan, shadow_usage)
        return outcome
