"""The in-process learned state: :class:`MemoryLearner`, the planner's default learner.

Data flow: planner -> :meth:`MemoryLearner.sight` (what is known of each candidate
prefix) ... response -> ``started`` / ``not_cached`` / ``feedback`` / minimums -> the
next request's sightings.

It implements :class:`~cachewatch.planning._learning.LearningState` with bounded,
lock-guarded tables: the LRU ledger of prefixes, the recurrence statistics per
(family, kind, run) bucket and their pool over every family, the settled first-run
opportunities per kind over every family (and the open ones), the provider's
reliability per family, the learned minimums and the stability of each family's
static region. ``_learning`` states what is learnt and why.
"""

from __future__ import annotations

import heapq
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from ._learning import (
    ANCHOR_WEIGHT,
    CLAIM_TIMEOUT,
    CONVERSATION_MODELS,
    GOES_ON_PRIOR,
    LATE_PRIOR_WEIGHT,
    LATE_Z,
    OPEN_MAX,
    PRIOR_WEIGHT,
    SETTLE_BATCH,
    SETTLED_Z,
    STATIC,
    TAIL_PRIORS,
    TTL_1H,
    TTL_5M,
    UNSETTLED_PRIOR,
    Sight,
    Sighting,
    history_change,
    min_tier_above,
    new_sight,
)

__all__ = ["MemoryLearner"]

#: The statistic of prefixes that came back 5-60 minutes after a sighting (not a run length).
_LATE: Final = 0


def _bucket(run: int) -> int:
    return 3 if run >= 3 else run


@dataclass(slots=True)
class _Bucket:
    """Recurrence counts of one (family, kind, run) bucket, exponentially forgotten.

    ``seen`` counts opportunities when they are sighted, ``recurred`` when their prefix
    comes back. Counting is pessimistic: until its prefix comes back an opportunity
    weighs as one that will not, so traffic that never reuses a prefix stops being
    written after one opportunity, and a burst of new prefixes is not all written on the
    strength of the prior. In steady traffic the ratio is unbiased (both counts are
    forgotten at the same pace; the credits only arrive later).
    """

    recurred: float = 0.0
    seen: float = 0.0


@dataclass(slots=True)
class _Prefix:
    last: float
    run: int
    family: int
    kind: str
    ttl: float = TTL_5M
    cached_until: float = 0.0
    late: int = 0
    writers: list[tuple[int, float]] = field(default_factory=list)
    #: Requests that sighted it uncached, do not write it and whose response has not
    #: begun (ticket, when): a request sighting it meanwhile could not read what they
    #: would have written.
    sighters: list[tuple[int, float]] = field(default_factory=list)
    #: The request that saw it last, and whether that request failed (a retry that
    #: follows is the same request again, not a reuse).
    ticket: int = 0
    void: bool = False
    #: An opportunity of the family's "late" statistic is open: it counted at a sighting of
    #: this prefix (one that came back late before) and is settled by the next idle gap
    #: past 5 minutes, as recurred if that gap ends within the hour. Uses within 5 minutes
    #: leave it open: what a 1h write pays for is the return after the idle gap.
    late_pending: bool = False
    #: Length of its run before the last time it came back late.
    previous_run: int = 0
    #: A static prefix: per tail kind, (recurred, settled) of the tails first sighted under
    #: it, each counted once its TTL ran out (``MemoryLearner._settle_anchored``).
    tails: dict[str, tuple[float, float]] | None = None
    #: A tail first sighted under a static prefix: that prefix's key (0: none or settled),
    #: its kind then, when its TTL runs out, and whether it came back before.
    anchor: int = 0
    anchor_kind: str = ""
    anchor_due: float = 0.0
    anchor_hit: bool = False
    #: When the response to the last request that sent it unmarked to an implicit cache
    #: began (-inf: never).
    implicit_at: float = -math.inf


@dataclass(slots=True)
class _Stability:
    #: Per static position: (last block digest, changes, observations), forgotten.
    blocks: list[tuple[bytes, float, float]] = field(default_factory=list)
    #: Per static position: (last first-line digest, last rest digest, rest changes).
    lines: dict[int, tuple[bytes, bytes, float]] = field(default_factory=dict)
    #: Whether the last change only reordered blocks (the ones that changed are the ones
    #: that were there, in another order).
    reordered: bool = False


class MemoryLearner:
    """The in-process learned state. Thread-safe; every table is bounded.

    Args:
        forget: per-opportunity forgetting of the recurrence counts (0.85: ~7 opportunities).
        prior: Beta prior (recurred, not recurred) of a new prefix's first run.
        max_prefixes: ledger size (LRU).
        max_families: families kept (the oldest is dropped past this).
        max_age: a prefix or conversation not seen for longer than this (seconds) is
            forgotten, as if never seen (None: kept until the LRU drops it). A shared
            learner expires its entries, and sets this to the same age.
    """

    def __init__(
        self,
        *,
        forget: float = 0.85,
        prior: tuple[float, float] = (1.0 / 3.0, 2.0 / 3.0),
        max_prefixes: int = 50_000,
        max_families: int = 4_096,
        max_age: float | None = None,
    ) -> None:
        self.forget = forget
        self.max_age = max_age
        self.prior = prior
        #: Per-kind priors of run 1 (a continued conversation usually goes on).
        self.priors: dict[str, tuple[float, float]] = dict(TAIL_PRIORS)
        #: The same counts, pooled over every family: the prior of a new family.
        self._pool: dict[tuple[str, int], _Bucket] = {}
        #: Conversation key -> (its static prefix key or -1, first reply, last seen, steady,
        #: model, tail position, then (model, static prefix key, tail position, last seen) of
        #: the last request in each other lane (model and static prefix), most recent first,
        #: whether the request before was steady
        #: (None when there was none), whether this request continued the conversation, and
        #: what it changed: its static prefix (a first request too), its history, neither).
        self._conversations: OrderedDict[
            int,
            tuple[
                int,
                bytes | None,
                float,
                bool,
                int,
                int,
                tuple[tuple[int, int, int, float, str], ...],
                bool | None,
                bool,
                str,
            ],
        ] = OrderedDict()
        #: (family, what changed) -> (conversations judged unsettled whose next request
        #: changed again, such judgements), forgotten; and the same pooled over every family.
        self._unsettled: dict[tuple[int, str], tuple[float, float]] = {}
        self._unsettled_pool: dict[str, tuple[float, float]] = {}
        #: family -> (continued requests followed by the next within 5 minutes, continued
        #: requests), forgotten; and the same pooled over every family.
        self._goes_on: dict[int, tuple[float, float]] = {}
        self._goes_on_pool: tuple[float, float] = (0.0, 0.0)
        self.max_prefixes = max_prefixes
        self.max_families = max_families
        self._prefixes: OrderedDict[int, _Prefix] = OrderedDict()
        #: Each prefix's open opportunity of a first-run bucket: key -> (when it matures,
        #: kind); a heap of (matures, key) to settle those that never came back.
        self._open: dict[int, tuple[float, str]] = {}
        #: (TTL end, key in decimal) of tails first sighted under a static prefix, to settle
        #: for it. Tails whose TTLs end at once are settled in the order of their keys as
        #: text, as RedisLearner's sorted set orders them (the forgotten count depends on it).
        self._anchored: list[tuple[float, str]] = []
        self._maturing: list[tuple[float, int]] = []
        #: kind -> (recurred, seen) of settled first-run opportunities over every family,
        #: forgotten: the unbiased pool (no opportunity still open counts).
        self._settled: dict[str, tuple[float, float]] = {}
        self._stats: OrderedDict[tuple[int, str, int], _Bucket] = OrderedDict()
        #: family -> (expected reads, confirmed reads), forgotten.
        self._reliability: dict[int, tuple[float, float]] = {}
        self._minimums: dict[str, int] = {}
        #: (profile, model) key -> (implicit reads expected, served), forgotten.
        self._implicit_hits: dict[str, tuple[float, float]] = {}
        self._stability: OrderedDict[int, _Stability] = OrderedDict()
        self._lock = threading.Lock()

    # -- recurrence -------------------------------------------------------------------

    def sight(self, family: int, sightings: Sequence[Sighting], now: float, ticket: int) -> list[Sight]:
        """Count this request's candidate prefixes; returns what was known before it.

        ``ticket`` identifies the request: it claims the shared prefixes that nobody else
        is writing (released by :meth:`release`, or by :meth:`started`).
        """
        out: list[Sight] = []
        prefixes = self._prefixes
        max_age = self.max_age
        # ``_credit`` and ``_opportunity``, inline below (a call each per sighting otherwise).
        stats = self._stats
        pools = self._pool
        f = self.forget
        with self._lock:
            maturing = self._maturing
            if maturing and maturing[0][0] < now:
                self._settle_matured(now)
            anchored = self._anchored
            if anchored and anchored[0][0] < now:
                self._settle_anchored(now)
            reliability = self._reliability_of(family)
            # The static prefix the request's tails are sighted under: its stable part when
            # it has one (a per-user block after shared instructions), else the whole
            # static region's.
            anchor: _Prefix | None = None
            anchor_key = 0
            for s in sightings:
                key = s.key
                kind = s.kind
                prefix = prefixes.get(key)
                if prefix is not None and max_age is not None and now - prefix.last > max_age:
                    del prefixes[key]
                    prefix = None
                run = 1
                cached = writing = concurrent = late = pending = False
                if prefix is not None:
                    prefixes.move_to_end(key)
                    gap = now - prefix.last
                    pending = prefix.late_pending
                    cached = prefix.cached_until > now
                    if prefix.writers:
                        live = [
                            (t, at) for t, at in prefix.writers if now - at < CLAIM_TIMEOUT and t != ticket
                        ]
                        prefix.writers = live
                        writing = bool(live) and not cached
                    if prefix.sighters and not cached:
                        others = [
                            (t, at) for t, at in prefix.sighters if now - at < CLAIM_TIMEOUT and t != ticket
                        ]
                        prefix.sighters = others
                        concurrent = bool(others)
                    if prefix.void or writing or concurrent:
                        # A retry of a failed request: the same sighting again (its
                        # opportunity was taken back; this one counts instead). Or the
                        # request that sighted it last has no response yet: this one could
                        # not read what it wrote (or would have written), so it is no
                        # recurrence (a burst of concurrent requests reads nothing); nor
                        # is it an opportunity where another request is writing it.
                        run = prefix.run
                    else:
                        if pending and gap > TTL_5M:
                            # The idle gap after a late return ended: within the hour or not.
                            if gap <= TTL_1H:
                                self._credit(prefix.family, prefix.kind, _LATE)
                            pending = False
                        opened = self._open.pop(key, None)
                        if opened is not None:
                            self._settle(opened[1], gap <= prefix.ttl)
                        if gap <= prefix.ttl:
                            if prefix.anchor and now <= prefix.anchor_due:
                                prefix.anchor_hit = True
                            previous = prefix.run
                            run = previous + 1
                            # self._credit(prefix.family, prefix.kind, _bucket(previous)):
                            credited = 3 if previous >= 3 else previous
                            bucket = stats.get((prefix.family, prefix.kind, credited))
                            if bucket is not None:
                                recurred = bucket.recurred + 1.0
                                bucket.recurred = recurred if recurred < bucket.seen else bucket.seen
                            pool = pools.get((prefix.kind, credited))
                            if pool is not None:
                                recurred = pool.recurred + 1.0
                                pool.recurred = recurred if recurred < pool.seen else pool.seen
                        elif gap <= TTL_1H:
                            prefix.late += 1
                            prefix.previous_run = prefix.run
                    late = prefix.late > 0
                bucket_id = 3 if run >= 3 else run
                p = self._p(family, kind, bucket_id, now)
                if bucket_id == 1 and anchor is not None and anchor.tails is not None:
                    got = anchor.tails.get(kind)
                    if got is not None:
                        p = (ANCHOR_WEIGHT * p + got[0]) / (ANCHOR_WEIGHT + got[1])
                p *= reliability
                p_late = 0.0
                if late and prefix is not None:
                    p_late = self._p_late(family, kind, prefix.previous_run, now) * reliability
                out.append(
                    new_sight(
                        key,
                        kind,
                        run,
                        cached,
                        writing,
                        late,
                        p,
                        p_late,
                        prefix is not None,
                        reliability,
                        cached and prefix is not None and prefix.ttl >= TTL_1H,
                        prefix is not None and prefix.implicit_at > now - TTL_5M,
                    )
                )
                if prefix is not None and anchor is None and (kind == "stable" or kind == "static"):
                    anchor = prefix
                    anchor_key = key
                if writing:
                    continue
                if prefix is None:
                    prefix = _Prefix(now, run, family, kind, ticket=ticket)
                    prefixes[key] = prefix
                    if len(prefixes) > self.max_prefixes:
                        prefixes.popitem(last=False)
                    self._opportunity(family, kind, bucket_id)
                    self._open_at(key, kind, now + prefix.ttl)
                    if anchor is None and (kind == "stable" or kind == "static"):
                        anchor = prefix  # a static prefix sighted for the first time
                        anchor_key = key
                    elif anchor is not None and kind.startswith("tail_first") and len(anchored) < OPEN_MAX:
                        prefix.anchor = anchor_key
                        prefix.anchor_kind = kind
                        prefix.anchor_due = now + prefix.ttl
                        heapq.heappush(anchored, (prefix.anchor_due, str(key)))
                elif not concurrent:
                    # self._opportunity(family, kind, bucket_id):
                    stats_key = (family, kind, bucket_id)
                    bucket = stats.get(stats_key)
                    if bucket is None:
                        bucket = stats[stats_key] = _Bucket()
                        if len(stats) > self.max_families * 8:
                            stats.popitem(last=False)
                    else:
                        stats.move_to_end(stats_key)
                    bucket.recurred *= f
                    bucket.seen = bucket.seen * f + 1.0
                    pool_key = (kind, bucket_id)
                    pool = pools.get(pool_key)
                    if pool is None:
                        pool = pools[pool_key] = _Bucket()
                    pool.recurred *= f
                    pool.seen = pool.seen * f + 1.0
                    if late and not pending:
                        self._opportunity(family, kind, _LATE)
                        pending = True
                    if bucket_id == 1:
                        self._open_at(key, kind, now + prefix.ttl)
                    else:
                        self._open.pop(key, None)
                    prefix.last = now
                    prefix.run = run
                    prefix.family = family
                    prefix.kind = kind
                    prefix.void = False
                    prefix.ticket = ticket
                    prefix.late_pending = pending
                if not cached:
                    if s.shared:
                        prefix.writers.append((ticket, now))
                    else:
                        # Nobody claims a tail, but it is sighted until this response
                        # begins: a copy of the request sent meanwhile is no recurrence.
                        prefix.sighters.append((ticket, now))
        return out

    def _open_at(self, key: int, kind: str, matures: float) -> None:
        """A first-run opportunity of ``key`` opens; it settles when the prefix comes back
        (recurred within its TTL or not) or, if it never does, when it matures."""
        opened = self._open
        if len(opened) >= OPEN_MAX and key not in opened:
            return
        opened[key] = (matures, kind)
        heapq.heappush(self._maturing, (matures, key))
        if len(self._maturing) > 2 * OPEN_MAX:  # superseded entries: rebuilt from the open ones
            self._maturing = [(m, k) for k, (m, _) in opened.items()]
            heapq.heapify(self._maturing)

    def _settle_matured(self, now: float) -> None:
        """Opportunities that matured before ``now`` without their prefix coming back: not
        reused (at most ``SETTLE_BATCH`` at a time)."""
        maturing = self._maturing
        opened = self._open
        settled = 0
        while maturing and maturing[0][0] < now and settled < SETTLE_BATCH:
            matures, key = heapq.heappop(maturing)
            found = opened.get(key)
            if found is not None and found[0] == matures:
                del opened[key]
                self._settle(found[1], False)
                settled += 1

    def _settle_anchored(self, now: float) -> None:
        """Tails whose TTL ran out: whether each came back before counts for the static
        prefix it was first sighted under (at most ``SETTLE_BATCH`` at a time).

        Counted at the end of the TTL whatever happened, not when a tail comes back (which
        only the ones that do would be, at first: the first minutes of any traffic would
        show its tails as all continued)."""
        anchored = self._anchored
        prefixes = self._prefixes
        f = self.forget
        settled = 0
        while anchored and anchored[0][0] < now and settled < SETTLE_BATCH:
            due, key = heapq.heappop(anchored)
            settled += 1
            prefix = prefixes.get(int(key))
            if prefix is None or not prefix.anchor or prefix.anchor_due != due:
                continue
            under = prefixes.get(prefix.anchor)
            prefix.anchor = 0
            if under is None:
                continue
            tails = under.tails
            if tails is None:
                tails = under.tails = {}
            r, n = tails.get(prefix.anchor_kind, (0.0, 0.0))
            tails[prefix.anchor_kind] = (r * f + (1.0 if prefix.anchor_hit else 0.0), n * f + 1.0)

    def _settle(self, kind: str, recurred: bool) -> None:
        f = self.forget
        r, n = self._settled.get(kind, (0.0, 0.0))
        self._settled[kind] = (r * f + (1.0 if recurred else 0.0), n * f + 1.0)

    def _credit(self, family: int, kind: str, bucket_id: int) -> None:
        """A prefix came back: its opportunity in that bucket recurred."""
        bucket = self._stats.get((family, kind, bucket_id))
        if bucket is not None:
            recurred = bucket.recurred + 1.0
            bucket.recurred = recurred if recurred < bucket.seen else bucket.seen  # min(seen, recurred)
        pool = self._pool.get((kind, bucket_id))
        if pool is not None:
            recurred = pool.recurred + 1.0
            pool.recurred = recurred if recurred < pool.seen else pool.seen

    def _opportunity(self, family: int, kind: str, bucket_id: int) -> None:
        stats = self._stats
        stats_key = (family, kind, bucket_id)
        bucket = stats.get(stats_key)
        if bucket is None:
            bucket = stats[stats_key] = _Bucket()
            if len(stats) > self.max_families * 8:
                stats.popitem(last=False)
        else:
            stats.move_to_end(stats_key)
        f = self.forget
        bucket.recurred *= f
        bucket.seen = bucket.seen * f + 1.0
        pool_key = (kind, bucket_id)
        pool = self._pool.get(pool_key)
        if pool is None:
            pool = self._pool[pool_key] = _Bucket()
        pool.recurred *= f
        pool.seen = pool.seen * f + 1.0

    def _p(self, family: int, kind: str, bucket_id: int, now: float) -> float:
        """P(recurs within TTL) of a bucket: its counts over a prior.

        The prior of run 1 has mean 1/3 (``prior``; 2/3 for a continued conversation's
        tail, which usually goes on), raised to the kind's rate over every family when
        that is higher; for a family without opportunities of its own, first lowered to
        the upper end of what every family's settled opportunities allow (``_settle``). A longer run's prior has the estimate of the run before it as its
        mean: a prefix that came back once is at least as likely to come back again as a
        new one was to come back at all. Every prior weighs ``PRIOR_WEIGHT`` (one
        opportunity), so a family's own evidence always decides.

        Computed from run 1 up: the operations of that recursive definition, in its order
        (``min``/``max`` written as the comparisons they make).
        """
        stats = self._stats
        # A new family starts from the reuse every family has shown for this kind (a
        # tenant's first chat from the other tenants' chats), never below the prior:
        # reuse seen elsewhere is evidence, another family's pending opportunities are not.
        # Their settled ones may lower it, while the family has none of its own.
        first = bucket_id if bucket_id < 1 else 1
        a, b = self.priors.get(kind, self.prior)
        pool = self._pool.get((kind, first))
        bucket = stats.get((family, kind, first))
        settled = self._settled.get(kind) if first == 1 and bucket is None else None
        if settled is not None:
            # A family with no opportunity of its own yet: what every family's settled
            # opportunities of this kind showed, which are unbiased, may lower the prior
            # (a gateway whose new tenants never reuse their prompts), to the upper end
            # of what they allow (SETTLED_Z standard deviations over their mean): a read
            # missed costs 1.15x, a write wasted 0.25x. The open ones raise it, as below.
            prior_mean = a / (a + b)
            n = settled[1] + a + b
            mean = (settled[0] + a) / n
            mean = mean + SETTLED_Z * math.sqrt(mean * (1.0 - mean) / (n + 1.0))
            if mean > prior_mean:
                mean = prior_mean
            if pool is not None and pool.recurred > 0.0:
                pooled = (pool.recurred + a) / (pool.seen + a + b)
                if pooled > mean:
                    mean = pooled
            a, b = PRIOR_WEIGHT * mean, PRIOR_WEIGHT * (1.0 - mean)
        elif pool is not None and pool.recurred > 0.0:
            prior_mean = a / (a + b)
            pooled = (pool.recurred + a) / (pool.seen + a + b)
            mean = pooled if pooled > prior_mean else prior_mean  # max(prior_mean, pooled)
            a, b = PRIOR_WEIGHT * mean, PRIOR_WEIGHT * (1.0 - mean)
        if bucket is None:
            p = a / (a + b)
        else:
            p = (bucket.recurred + a) / (bucket.seen + a + b)
            if not p < 1.0:  # min(1.0, p)
                p = 1.0
        i = first + 1
        while i <= bucket_id:  # for i in range(first + 1, bucket_id + 1), without the range object
            a, b = PRIOR_WEIGHT * p, PRIOR_WEIGHT * (1.0 - p)
            bucket = stats.get((family, kind, i))
            if bucket is None:
                p = a / (a + b)
            else:
                p = (bucket.recurred + a) / (bucket.seen + a + b)
                if not p < 1.0:
                    p = 1.0
            i += 1
        return p

    def _p_late(self, family: int, kind: str, previous_run: int, now: float) -> float:
        """P(a prefix that came back 5-60 minutes later comes back within the hour again).

        A 1h write costs 4 wasted 5m writes when it is not read, so only the family's own
        evidence bets on it: the prior is the kind's first-run prior (mean 1/3, under the
        1h threshold, weight ``LATE_PRIOR_WEIGHT``). Other families are no evidence here
        (in a gateway the rare tenants, whose gaps are long, are the ones that come back
        late), nor is one late return (a gap of 55 minutes says little of the next). The
        prior is capped by the chance that a prefix with the run it had before the gap
        would have gone on (a coincidence seen once is not a document asked about five
        times). What is returned is the posterior's lower bound (``LATE_Z`` standard
        deviations under its mean), so a family bets once several of its late returns
        were followed by another within the hour, not on the first two or three.
        """
        a, b = self.priors.get(kind, self.prior)
        mean = a / (a + b)
        before = self._p(family, kind, _bucket(previous_run + 1), now)
        if before < mean:
            mean = before
        a, b = LATE_PRIOR_WEIGHT * mean, LATE_PRIOR_WEIGHT * (1.0 - mean)
        bucket = self._stats.get((family, kind, _LATE))
        if bucket is not None:
            a = a + bucket.recurred
            b = b + (bucket.seen - bucket.recurred)
        # The posterior's lower bound (``LATE_Z``), not its mean.
        n = a + b
        low = a / n - LATE_Z * math.sqrt(a * b / (n * n * (n + 1.0)))
        if low < 0.0:
            low = 0.0
        return min(1.0, low)

    def recurrence(self, family: int, kind: str, run: int, now: float) -> float:
        """The current estimate of P(recurs within TTL) for a bucket (reliability excluded)."""
        with self._lock:
            return self._p(family, kind, _bucket(run), now)

    # -- conversations ------------------------------------------------------------------

    def conversation(
        self,
        key: int,
        static: int | None,
        reply: bytes | None,
        history_known: bool,
        now: float,
        model: int = 0,
        tail: int = -1,
        family: int = 0,
        tail_class: str = "",
    ) -> tuple[tuple[int, bytes | None, bool, float, float] | None, int]:
        """Remember a conversation's static prefix and first reply; returns what it had before.

        ``key`` identifies a conversation by its first input message (and scope), so its
        turns are linked even when something before them changes on every request; the
        first reply (None on a first turn) tells two conversations that opened with the
        same message apart. ``history_known``: this request's previous turn was seen.
        ``model`` tags the model the request goes to: after a switch of model (a router,
        an escalation) the conversation's previous request says nothing of its prompt
        (caches are per model, so its static prefix and previous turn are new to this
        one's), and it counts as not seen. ``tail``: where this request's tail is (its
        position, -1 for none), remembered for its model.

        Returns ``(before, earlier)``. *before*: ``(static key or -1, first reply, steady,
        unsettled, goes on)`` of the previous request with that key within the hour, or
        None (there was none, or this request switched lanes, below); *steady*: from the request before it to that one, its static prefix
        stayed the same and its previous turn was found (a change after a steady step is a
        one-time edit; two changes in a row, something that may change on every request).
        It is judged again at every step: a conversation that kept its prefix once and then
        broke it on every request is unstable again. *unsettled*: for ``family`` (the
        planner passes the scope's, whatever the prompt's structure), P(a conversation
        whose last two requests each changed its prefix changes it again at the next),
        learnt from every such conversation that went on (a timestamp at the top of the
        system prompt: always; a tool list that grew once at the second request and then
        held: never), apart for what this request changed: its history only (a loop that
        truncates old tool results at every step once they pile up), or else its static
        prefix; a history change apart for ``tail_class``, the size class of this request's
        tail when it has one (``history_change``). *goes on*: for ``family``, P(a continued conversation sends its next request
        within 5 minutes), learnt from every continued request. *earlier*: after a switch of lane,
        the tail position of the conversation's last request to this model within the
        hour, with this static prefix if it had one (-1: none, or the previous request was
        in this lane, whose tail is this one's previous turn). A lane is a model (the
        planner folds into ``model`` the settings that key the messages' cache: thinking,
        tool_choice) and a static prefix: a request to another model, or back to a static prefix this model
        had within the hour (two tool sets or system prompts taking turns over one
        history), switches lanes and counts as not seen, as a switch of model does; a
        static prefix not seen before changes the lane's. The record keeps the tails of
        ``CONVERSATION_MODELS`` lanes at most. An unsettled request left for another lane
        is judged by its own lane's next request (its prompt held, if that comes within 5
        minutes), not by the other lane's; whether the conversation goes on is counted
        whatever lane its requests are in.
        """
        static_id = static if static is not None else -1
        earlier = -1
        with self._lock:
            found = self._conversations.get(key)
            if found is not None and self.max_age is not None and now - found[2] > self.max_age:
                found = None
            # Whether the conversation goes on is the conversation's, whatever lane its
            # requests are in.
            last = found
            others: tuple[tuple[int, int, int, float, str], ...] = ()
            held = ""
            if found is not None and found[4] == model and found[0] == static_id:
                others = found[6]
            elif found is not None:
                # A switch of lane (model and static prefix): the previous request's tail
                # joins the other lanes'. Back to a model, or to a static prefix this model
                # had within the hour (a supervisor and its workers, a plan and an act mode
                # taking turns over one history), is a switch: that lane's last tail is
                # looked for, and it leaves the others (it is the record's own from now on).
                # A static prefix not seen before is a change of this lane.
                back = found[4] != model or any(
                    o[0] == model and o[1] == static_id and now - o[3] <= TTL_1H for o in found[6]
                )
                # Left for another known lane, an unsettled request's judgement waits for
                # its lane's next request (its prompt held if that comes within 5 minutes);
                # a static prefix not seen before judges it at once, below (it changed).
                pending = found[9] if back and not found[3] and not found[7] else ""
                kept: list[tuple[int, int, int, float, str]] = [
                    (found[4], found[0], found[5], found[2], pending)
                ]
                for other in found[6]:
                    if back and other[0] == model:
                        if now - other[3] <= TTL_1H and (earlier < 0 or other[1] == static_id):
                            earlier = other[2]
                            held = other[4] if other[1] == static_id and now - other[3] <= TTL_5M else ""
                    elif len(kept) < CONVERSATION_MODELS - 1:
                        kept.append(other)
                others = tuple(kept)
                if back:
                    found = None
            if held:
                self._judged(family, held, False)
            steady = found is not None and found[0] == static_id and history_known
            # What this request changed: a first request counts as a change of its static
            # prefix (it has no history to edit; nor has its next request, whose history is
            # the first message that keys the conversation).
            change = (
                STATIC
                if found is None or found[0] != static_id
                else (history_change(tail_class) if not history_known else "")
            )
            continued = last is not None and now - last[2] <= TTL_1H
            if continued and last is not None and last[8] and now - last[2] <= TTL_5M:
                self._went_on(family)
            goes_on = self._p_goes_on(family)
            if continued:
                self._continued(family)
            self._conversations[key] = (
                static_id,
                reply,
                now,
                steady,
                model,
                tail,
                others,
                found[3] if found is not None else None,
                continued,
                change,
            )
            self._conversations.move_to_end(key)
            if len(self._conversations) > self.max_prefixes // 4:
                self._conversations.popitem(last=False)
            if found is None or now - found[2] > TTL_1H:
                return None, earlier
            if not found[3] and not found[7]:
                # The previous request was unsettled (neither it nor the one before it kept
                # the prefix of its predecessor; a first request counts as a change, as it
                # does for the planner): did this one change again? Counted for what the
                # previous request changed.
                self._judged(family, found[9], not steady)
            return (
                found[0],
                found[1],
                found[3],
                self._p_unsettled(
                    family,
                    history_change(tail_class) if found[0] == static_id and not history_known else STATIC,
                ),
                goes_on,
            ), earlier

    def _judged(self, family: int, change: str, again: bool) -> None:
        f = self.forget
        key = (family, change)
        h, n = self._unsettled.get(key, (0.0, 0.0))
        if len(self._unsettled) >= self.max_families and key not in self._unsettled:
            self._unsettled.clear()
        self._unsettled[key] = (h * f + (1.0 if again else 0.0), n * f + 1.0)
        h, n = self._unsettled_pool.get(change, (0.0, 0.0))
        self._unsettled_pool[change] = (h * f + (1.0 if again else 0.0), n * f + 1.0)

    def _p_unsettled(self, family: int, change: str) -> float:
        """P(an unsettled conversation of ``family`` changes its prefix again at its next request).

        Counted apart for what its last request changed (``change``: its static prefix or its
        history). The prior is the pool of every family's judgements over
        ``UNSETTLED_PRIOR`` (weight ``PRIOR_WEIGHT`` each), so a family's own evidence
        decides after one judgement.
        """
        h, n = self._unsettled_pool.get(change, (0.0, 0.0))
        mean = (h + PRIOR_WEIGHT * UNSETTLED_PRIOR) / (n + PRIOR_WEIGHT)
        h, n = self._unsettled.get((family, change), (0.0, 0.0))
        return (h + PRIOR_WEIGHT * mean) / (n + PRIOR_WEIGHT)

    def _continued(self, family: int) -> None:
        """A continued request of ``family``: an opportunity for its next within 5 minutes."""
        f = self.forget
        h, n = self._goes_on.get(family, (0.0, 0.0))
        if len(self._goes_on) >= self.max_families and family not in self._goes_on:
            self._goes_on.clear()
        self._goes_on[family] = (h * f, n * f + 1.0)
        h, n = self._goes_on_pool
        self._goes_on_pool = (h * f, n * f + 1.0)

    def _went_on(self, family: int) -> None:
        """The previous (continued) request's conversation went on within 5 minutes."""
        h, n = self._goes_on.get(family, (0.0, 0.0))
        if n > 0.0:
            self._goes_on[family] = (h + 1.0 if h + 1.0 < n else n, n)
        h, n = self._goes_on_pool
        if n > 0.0:
            self._goes_on_pool = (h + 1.0 if h + 1.0 < n else n, n)

    def _p_goes_on(self, family: int) -> float:
        """P(a continued conversation of ``family`` sends its next request within 5 minutes).

        Counted as the recurrence statistics are (pessimistically: an opportunity at once,
        credited when the next request comes), over a prior ``GOES_ON_PRIOR`` pooled the
        same way as ``_p_unsettled``'s; read before this request's own opportunity counts.
        """
        h, n = self._goes_on_pool
        mean = (h + PRIOR_WEIGHT * GOES_ON_PRIOR) / (n + PRIOR_WEIGHT)
        h, n = self._goes_on.get(family, (0.0, 0.0))
        return (h + PRIOR_WEIGHT * mean) / (n + PRIOR_WEIGHT)

    # -- the provider's cache, as believed ---------------------------------------------

    def void(self, keys: Iterable[int], ticket: int) -> None:
        """The request ``ticket`` failed before its response: its sightings will be seen again."""
        with self._lock:
            for key in keys:
                prefix = self._prefixes.get(key)
                if prefix is not None and prefix.ticket == ticket and not prefix.void:
                    prefix.void = True
                    # Nor does it count for the static prefix it was sighted under (a retry
                    # is the same request again; a failure says nothing of whether the
                    # conversation goes on).
                    prefix.anchor = 0
                    # Its opportunity says nothing about reuse: take it back (from the
                    # family's counts and from their pool over every family).
                    bucket_id = _bucket(prefix.run)
                    for bucket in (
                        self._stats.get((prefix.family, prefix.kind, bucket_id)),
                        self._pool.get((prefix.kind, bucket_id)),
                    ):
                        if bucket is not None:
                            bucket.seen = max(0.0, bucket.seen - 1.0)
                            bucket.recurred = min(bucket.recurred, bucket.seen)
                # Its claims and sightings end with it, whoever sighted the prefix last (a
                # claim made while another request's sighting was open left the ticket alone).
                if prefix is not None and prefix.writers:
                    prefix.writers = [(t, at) for t, at in prefix.writers if t != ticket]
                if prefix is not None and prefix.sighters:
                    prefix.sighters = [(t, at) for t, at in prefix.sighters if t != ticket]

    def release(self, keys: Iterable[int], ticket: int) -> None:
        """The request ``ticket`` does not write these prefixes: its claims become sightings.

        (Until its response begins: :meth:`started` with a TTL of 0 ends them.)
        """
        with self._lock:
            for key in keys:
                prefix = self._prefixes.get(key)
                if prefix is not None and prefix.writers:
                    kept = []
                    for t, at in prefix.writers:
                        if t == ticket:
                            prefix.sighters.append((t, at))
                        else:
                            kept.append((t, at))
                    prefix.writers = kept

    def started(
        self, keys: Iterable[tuple[int, float]], ticket: int, now: float, implicit: Sequence[int] = ()
    ) -> None:
        """A response that marked these prefixes (key, TTL) started: readable from now on.

        A TTL of 0: a prefix it sighted and did not mark (its sighting ends). ``implicit``:
        the prefixes the request sent unmarked to an implicit cache, which holds them now.
        """
        with self._lock:
            for key in implicit:
                prefix = self._prefixes.get(key)
                if prefix is not None:
                    prefix.implicit_at = now
            for key, ttl in keys:
                prefix = self._prefixes.get(key)
                if prefix is None:
                    continue
                if ttl > 0.0:
                    # The entry's TTL: a write after the last entry expired starts a new one.
                    # (``max`` as the comparison it makes: the first argument unless the
                    # second is larger.)
                    until = prefix.cached_until
                    if until > now:
                        if ttl > prefix.ttl:
                            prefix.ttl = ttl
                    else:
                        prefix.ttl = ttl
                    end = now + ttl
                    prefix.cached_until = end if end > until else until
                if prefix.writers:
                    prefix.writers = [(t, at) for t, at in prefix.writers if t != ticket]
                if prefix.sighters:
                    prefix.sighters = [(t, at) for t, at in prefix.sighters if t != ticket]

    def claims(self) -> int:
        """How many in-flight write claims are held (introspection, tests)."""
        with self._lock:
            return sum(len(prefix.writers) for prefix in self._prefixes.values())

    def not_cached(self, keys: Iterable[int]) -> None:
        """The provider read and wrote nothing for a request that marked these prefixes."""
        with self._lock:
            for key in keys:
                prefix = self._prefixes.get(key)
                if prefix is not None:
                    prefix.cached_until = 0.0

    def feedback(self, family: int, expected: int, confirmed: int) -> None:
        """``expected`` prefixes believed cached were marked; the provider read ``confirmed``."""
        if expected <= 0:
            return
        with self._lock:
            e, c = self._reliability.get(family, (0.0, 0.0))
            f = self.forget
            n = expected
            while n > 0:  # ``expected`` times (no range object for what is usually once)
                e = e * f + 1.0
                c = c * f
                n -= 1
            c += min(confirmed, expected)
            if len(self._reliability) >= self.max_families and family not in self._reliability:
                self._reliability.clear()
            self._reliability[family] = (e, c)

    def _reliability_of(self, family: int) -> float:
        found = self._reliability.get(family)
        if found is None:
            return 1.0
        e, c = found
        return min(1.0, (c + 1.0) / (e + 1.0))

    def reliability(self, family: int) -> float:
        with self._lock:
            return self._reliability_of(family)

    # -- the implicit cache's hit rate ----------------------------------------------

    def implicit_read(self, model_key: str, served: bool) -> None:
        """An unmarked request expected a read from the implicit cache; its bill says
        whether it was ``served`` (counted per (profile, model) key, forgotten)."""
        f = self.forget
        with self._lock:
            hits = self._implicit_hits
            expected, count = hits.get(model_key, (0.0, 0.0))
            if len(hits) >= 4_096 and model_key not in hits:
                hits.clear()
            hits[model_key] = (expected * f + 1.0, count * f + (1.0 if served else 0.0))

    def implicit_hit_rate(self, model_key: str) -> float:
        """(served + 1) / (expected + 1): 1 until a bill says otherwise."""
        found = self._implicit_hits.get(model_key)
        if found is None:
            return 1.0
        expected, served = found
        return (served + 1.0) / (expected + 1.0)

    # -- learned minimums -------------------------------------------------------------

    def learned_minimum(self, model_key: str) -> int:
        """The learned minimum for a (profile, model) key; 0 when nothing was learned."""
        return self._minimums.get(model_key, 0)

    def raise_minimum(self, model_key: str, tokens: float) -> None:
        """A marked prefix of ``tokens`` was neither written nor read: the minimum is above it."""
        with self._lock:
            tier = min_tier_above(tokens)
            if tier > self._minimums.get(model_key, 0):
                if len(self._minimums) >= 4_096:
                    self._minimums.clear()
                self._minimums[model_key] = tier

    def lower_minimum(self, model_key: str) -> None:
        """A probe below the learned minimum was cached: forget the learned minimum."""
        with self._lock:
            self._minimums.pop(model_key, None)

    # -- stability of the static region ----------------------------------------------

    def stability(
        self, family: int, blocks: Sequence[bytes], lines: dict[int, tuple[bytes, bytes]]
    ) -> tuple[int | None, bool, bool]:
        """Record the static region's block digests; returns (first volatile position, rest
        stable, reordered).

        A position is volatile when it changed in at least 80% of at least 3 observations
        (forgotten). ``lines`` holds, for volatile text blocks, the digests of their first
        line and of the rest; the second value says whether the rest of the first volatile
        block stays the same (only its first line changes). The third, whether the last
        change of the region only reordered its blocks: the ones at the positions that
        changed are the ones that were there, in another order.
        """
        f = self.forget
        with self._lock:
            state = self._stability.get(family)
            if state is None:
                state = self._stability[family] = _Stability()
                if len(self._stability) > self.max_families:
                    self._stability.popitem(last=False)
            else:
                self._stability.move_to_end(family)
            old = state.blocks
            new: list[tuple[bytes, float, float]] = []
            first_volatile: int | None = None
            was: list[bytes] = []
            now: list[bytes] = []
            for i, digest in enumerate(blocks):
                if i < len(old):
                    last, changes, seen = old[i]
                    changed = 1.0 if digest != last else 0.0
                    if changed:
                        was.append(last)
                        now.append(digest)
                    changes = changes * f + changed
                    seen = seen * f + 1.0
                else:
                    changes, seen = 0.0, 0.0
                new.append((digest, changes, seen))
                if first_volatile is None and seen >= 2.0 and changes >= 0.8 * seen:
                    first_volatile = i
            if len(blocks) != len(old):
                state.reordered = False
            elif was:
                state.reordered = sorted(was) == sorted(now)
            state.blocks = new
            rest_stable = False
            for i, (head, rest) in lines.items():
                found = state.lines.get(i)
                rest_changes = 0.0
                if found is not None:
                    _, last_rest, rest_changes = found
                    rest_changes = rest_changes * f + (1.0 if rest != last_rest else 0.0)
                state.lines[i] = (head, rest, rest_changes)
                if i == first_volatile and found is not None and rest_changes < 0.5:
                    rest_stable = True
            if len(state.lines) > 64:
                state.lines.clear()
            reordered = state.reordered
        return first_volatile, rest_stable, reordered

    def volatile_candidates(self, family: int) -> set[int]:
        """Static positions that changed on their last observation (worth a line split)."""
        with self._lock:
            state = self._stability.get(family)
            if state is None:
                return set()
            return {i for i, (_, changes, seen) in enumerate(state.blocks) if seen >= 1.0 and changes > 0.5}
