"""What the planner learns from traffic: which prefixes come back, which writes get read.

Data flow: planner (each request's candidate prefixes) -> **learner** -> planner
(write, read or leave each one) ... response -> learner (what the provider billed).

The question behind every marker is whether a later request will read what it
writes before the entry expires. A write costs 1.25x (5m) or 2x (1h) of its tokens
instead of 1x; a read costs 0.1x. So writing a prefix whenever it is sighted uncached
costs less than never writing it when it is read again within its TTL with
probability above 0.25 / 1.15 = 0.217 (the ``threshold``; ``_policy``).

**Full information.** Every candidate prefix of every request has an identity (its
digest from ``_canonical``, bound to a *scope*: profile, host, model, credential and
workspace). The learner keeps a bounded ledger of the prefixes it has seen and
when. A prefix seen again within its TTL *recurred*: a write of it would have been
read. Not while the request that sighted it last has no response yet (a write is
readable only from then on): a burst of concurrent requests sharing a prefix is one
sighting, not a run of recurrences, so waves of them that start cold are not written
again and again (a sighting then ends when its response begins; a claim or sighting
that is never ended lapses after ``CLAIM_TIMEOUT``). This is observed whether or not a marker was placed, so what the learner
knows never depends on what it chose to write, and it needs no exploration to
find out that a prefix became reusable. A request's tail is read by the next turn
through the provider's lookback: the next request sights the previous turn's tail
(``previous_turn``). After a switch of model (a router that draws the model per
request, an escalation) the previous request wrote in another model's cache (caches
are per model), so the conversation's record (keyed without the model) keeps where
the last request to each of a few models ended (``CONVERSATION_MODELS``), and a
request also sights the tail of the last request to its own model when it lies within
the lookback of its tail: the write that tail made comes back there, whichever models
the turns in between went to.

**Statistics.** Per *family* (profile, host, model, scope, and a structural signature:
whether the request has tools, and its number of system blocks; not the number of tools,
which a growing or retrieved tool list varies from request to request), per marker *kind* (``static``,
``tail_first``, ``tail``, ``document``, ``previous_turn``; a tail's also per size class
of what its write adds, ``sized``) and per *run* bucket (how
many times this exact prefix was seen in a row: 1, 2, 3+), the learner estimates
P(recurs within TTL). Counting is pessimistic and immediate: a sighting counts as an
opportunity at once, and as recurred when the prefix is seen again; counts are
exponentially forgotten (``forget``, a window of about 7 opportunities) and start
from a prior of weight 1 (``PRIOR_WEIGHT``; mean 1/3, 2/3 for a continued
conversation's tail), so the first opportunity of an unknown family writes (1/3)
and one that is not reused stops the next (1/6). The prior weighs one opportunity
against the window's ~7, so however high it is (a prior borrowed from other
families can have mean 1), a family's own evidence takes it under the threshold:
at worst 1 / (1 + 1/(1 - forget)) = 0.13.

**Static prefix.** A first turn's tail (``tail_first``, any size class) is also judged by the static prefix
it is sighted under (its stable part when it has one): one process often serves a chat
and a one-shot job with one model, key and structure, in one family, whose count mixes
them. Each first tail sighted under a static prefix counts for that prefix once its TTL
has run out, as recurred if it came back before (counted when it comes back, only the
ones that do would count at first); a new tail's estimate is the family's, weighing
``ANCHOR_WEIGHT`` of those settled tails, with them.

**Settled opportunities.** A family with no opportunity of a kind yet (a gateway's new
tenant, with its own key) starts from what the first-run opportunities of that kind
showed over every family once *settled*: their prefix came back (within its TTL or
not), or their TTL ran out first (``OPEN_MAX`` of them are tracked). Unlike the
pessimistic counts, which hold an open opportunity as not reused and so only ever raise
a new family's prior, settled ones are unbiased, and may lower it: to their posterior
mean plus ``SETTLED_Z`` standard deviations, so only when nearly all were not reused (a
read missed costs 1.15x, a write wasted 0.25x). When the other tenants' prompts never
came back, a new tenant's first prompt is not written (from about 5 minutes into such
traffic, once four settled; before that its first write is the one of the regret bound).
The counts of a family with opportunities of its own are not changed by them.

**Provider feedback.** A prefix believed cached (a response that marked it has
started, within its TTL) that the provider did not read lowers the family's
*reliability*, which multiplies the estimate: a relay that drops markers or a
provider that evicts stops getting writes. A request whose marked prefix was
estimated above the model's minimum but came back with neither a read nor a write
raises the learned minimum for that model to the next tier above it (512, 1,024,
2,048, 4,096, 8,192...); one request in ``probe_every`` between the documented and
the learned minimum is still marked, so a minimum that comes down is found again.

**Stability.** For the static region (tools and system blocks) of each family the
learner tracks which positions keep changing between requests. A volatile block
that comes before stable tokens cuts every cacheable prefix short; the learner
reports where (position and kind, never content) and how many tokens would become
cacheable if the block moved after the stable part (:class:`Advice`). When the blocks
that changed are the ones that were there before, in another order (tools from a set, or
processes of a fleet that each list them in their own order), that is reported instead:
no block moved would help, one fixed order would.

**Implicit caches.** On an endpoint whose unmarked requests fill a cache of their own
(DashScope's implicit cache), what that cache holds is learnt as the explicit cache's is:
when the response to a request sent unmarked begins, its prefixes are held there for 5
minutes (``started``'s ``implicit``), and a sighting says so (``Sight.implicit``). That
cache is best effort: whether the bills of unmarked requests expecting a read from it
were served is counted per (profile, model) key (``implicit_read``), and
``implicit_hit_rate`` is (served + 1) / (expected + 1), forgotten as the recurrences are.
The processes behind one key share that cache, so a shared learner shares both.

**In flight.** A request that writes a shared prefix (static or document) claims it
until its response starts; siblings planned meanwhile do not write it again.

Everything is bounded (LRU ledger, capped tables) and deterministic for a given
history. This module holds what every learner shares: the marker kinds, the TTLs, what
the planner hands a learner (:class:`Sighting`) and gets back (:class:`Sight`,
:class:`Advice`) and the :class:`LearningState` protocol. ``_learning_memory``'s
:class:`~cachewatch.planning._learning_memory.MemoryLearner` is the in-process state;
``_learning_redis`` shares it across a fleet of processes.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from ..accounting._records import slot_factory

__all__ = [
    "ANCHOR_WEIGHT",
    "LATE_PRIOR_WEIGHT",
    "LATE_Z",
    "OPEN_MAX",
    "PRIOR_WEIGHT",
    "SETTLE_BATCH",
    "SETTLED_Z",
    "CLAIM_TIMEOUT",
    "CONVERSATION_MODELS",
    "GOES_ON_PRIOR",
    "HISTORY",
    "history_change",
    "KINDS",
    "SIZE_CLASSES",
    "STATIC",
    "TTL_1H",
    "TTL_5M",
    "UNSETTLED_PRIOR",
    "Advice",
    "LearningState",
    "Sight",
    "Sighting",
    "TAIL_PRIOR",
    "TAIL_PRIORS",
    "min_tier_above",
    "sized",
    "new_sight",
    "new_sighting",
]

#: Marker kinds, each with its own statistics (``hedge``: the statistics of a ``stable``
#: candidate placed before a family's stability is known, ``_candidates``).
KINDS: Final = ("static", "stable", "hedge", "tail_first", "tail", "document", "previous_turn")

#: Weight, in settled opportunities, of the family's estimate against what the tails first
#: sighted under one static prefix showed once settled (``MemoryLearner``: a process's
#: features, a chat and a one-shot job, each under its own system prompt in one family).
ANCHOR_WEIGHT: Final = 2.0

#: Bounds of a tail's size classes, in estimated tokens its write adds to the candidate
#: prefix before it (factors of 4 from 2,048): its statistics are kept per class.
SIZE_CLASSES: Final = (2_048, 8_192, 32_768)
_SIZED: Final = {
    kind: tuple(f"{kind}:{c}" for c in range(1, len(SIZE_CLASSES) + 1)) for kind in ("tail", "tail_first")
}

#: Prior (recurred, not) of a continued conversation's tail (it usually goes on), of every
#: size class.
TAIL_PRIOR: Final = (2.0 / 3.0, 1.0 / 3.0)
TAIL_PRIORS: Final = dict.fromkeys(("tail", *_SIZED["tail"]), TAIL_PRIOR)


def sized(kind: str, tokens: float) -> str:
    """The statistics' kind of a tail whose write adds ``tokens``: its kind under 2,048
    tokens, else ``<kind>:<class>`` (classes of a factor of 4, ``SIZE_CLASSES``).

    A write is worth making when what it saves pays for what it costs, and both are in
    tokens. Counted per opportunity, a family's 150-token chat tails that come back and
    its 13k-token pasted documents or tool results that do not (a one-shot summary, a
    result the agent drops from its history at the next step) average to "usually read",
    and every document is written at 1.25x for nothing. Within one class sizes differ by
    a factor of 4 at most, so counting opportunities is counting tokens to that factor:
    the regret bound's comparison of always and never writing holds in cost.
    """
    if tokens < SIZE_CLASSES[0]:
        return kind
    variants = _SIZED.get(kind)
    if variants is None:
        return kind
    return variants[bisect_right(SIZE_CLASSES, tokens) - 1]


#: Weight (in opportunities) of every prior: the first run's, one borrowed from the other
#: families, the estimate of the run before as the next run's, the pre-gap estimate as a
#: late one's. Less than the threshold x the window, so evidence always outweighs it.
PRIOR_WEIGHT: Final = 1.0
#: Weight of the late statistic's prior, whose mean (at most 1/3) is under the 1h threshold:
#: a 1h write that is not read wastes as much as four 5m writes, so a family bets on one
#: only once a late return of its own was followed by another within the hour (at the
#: second of two late returns in a row; one alone leaves the estimate at most 1/3).
#: (A prior under the threshold can weigh more: evidence of no reuse only confirms it.)
LATE_PRIOR_WEIGHT: Final = 3.0
#: The late estimate is the lower bound of its posterior, mean - LATE_Z standard deviations
#: (a one-sided 75% bound): a bet that wastes four writes when it loses is made on evidence
#: that holds up, not on two or three returns that happened to come within the hour (a
#: gateway's rare tenants, the last hour of any traffic). Evidence narrows the bound.
LATE_Z: Final = 0.67

#: Prior mean of P(a conversation whose prefix changed at two requests in a row changes it
#: again at the next): high, so a timestamp at the top of the system prompt costs one
#: write, not one per opportunity of the tail's window; a family whose conversations then
#: hold still (a tool list that grew once, a memory saved) shows it at its next request.
UNSETTLED_PRIOR: Final = 0.8
#: Prior mean of P(a continued conversation sends its next request within 5 minutes).
GOES_ON_PRIOR: Final = 2.0 / 3.0
#: What a conversation's request changed, for the unsettled statistic: its static prefix
#: (tools, system; a first request counts as this), or its history (an edited message, old
#: tool results truncated; ``history_change``).
STATIC: Final = "s"
HISTORY: Final = "h"


def history_change(tail_class: str) -> str:
    """What a request that changed its history changed, for the unsettled statistic: apart
    for the size class of its own tail when that has one (``sized``: 2,048 tokens or more).

    Whether the next request changes the history again can depend on what this one adds:
    an agent that drops each huge tool result from the history at the step after it
    changes its history again after a request that added one, and holds it after one that
    added a few hundred tokens. Counted together, the two average to "usually holds", and
    every huge result is written for nothing.
    """
    return HISTORY + "|" + tail_class if tail_class else HISTORY


#: Open first-run opportunities kept for the settled pool (``MemoryLearner._open``): past
#: this many, new ones are not tracked until some settle. And how many matured ones one
#: sighting settles at most (the rest at the next).
OPEN_MAX: Final = 50_000
SETTLE_BATCH: Final = 1_000
#: A new family's prior is lowered by the settled opportunities only to their posterior
#: mean plus this many standard deviations: only when they were nearly all not reused.
SETTLED_Z: Final = 1.0

TTL_5M: Final = 300.0
TTL_1H: Final = 3_600.0
#: A claim older than this is ignored (a request whose response never started or ended).
CLAIM_TIMEOUT: Final = 120.0
#: Models whose last tail a conversation's record keeps (a router's few): the tail of its last
#: request to each, so that after a switch of model the request to one of them sights it.
CONVERSATION_MODELS: Final = 4
#: Minimum tiers a learned minimum moves through.
_TIERS: Final = (512, 1_024, 2_048, 4_096, 8_192, 16_384, 32_768)


def min_tier_above(tokens: float) -> int:
    """The smallest minimum tier strictly above ``tokens``."""
    for tier in _TIERS:
        if tier > tokens:
            return tier
    return _TIERS[-1] * 2


@dataclass(frozen=True, slots=True)
class Sighting:
    """One candidate prefix of a request, as the planner hands it to the learner."""

    key: int
    kind: str
    #: The prefix is shared by other conversations (static, document): claim it while writing.
    shared: bool = False


@dataclass(frozen=True, slots=True)
class Sight:
    """What the learner knows of one candidate prefix, before this request counted."""

    key: int
    kind: str
    #: Sightings of this prefix in the current run, this one included.
    run: int
    #: Believed readable in the provider's cache now.
    cached: bool
    #: Another request is writing it and its response has not started.
    writing: bool
    #: It came back 5-60 minutes after a previous sighting (a 1h entry would have been read).
    late: bool
    #: P(it is read again within its TTL), reliability included.
    p: float
    #: For a prefix that came back late: P(it comes back again within the hour).
    p_late: float = 0.0
    #: The prefix was in the ledger (seen before, at any time).
    known: bool = False
    #: The family's reliability (already in ``p`` and ``p_late``).
    reliability: float = 1.0
    #: Believed cached with a 1h TTL (a read marked 1h keeps what that write paid for).
    cached_1h: bool = False
    #: Held by the endpoint's implicit cache: a response to a request that sent it unmarked
    #: began less than 5 minutes ago (``LearningState.started``'s ``implicit``).
    implicit: bool = False


#: ``Sight(...)`` and ``Sighting(...)`` with every field, positionally (the planner builds a
#: few per request; see ``accounting._records.slot_factory``).
new_sight: Final[
    Callable[[int, str, int, bool, bool, bool, float, float, bool, float, bool, bool], Sight]
] = slot_factory(Sight)
new_sighting: Final[Callable[[int, str, bool], Sighting]] = slot_factory(Sighting)


@dataclass(frozen=True, slots=True)
class Advice:
    """A volatile block that cuts the family's cacheable prefix short. Never content."""

    #: Dotted path of the block (``system.0``), ``:first_line`` when only its first line changes.
    block: str
    kind: str
    #: Estimated tokens that would become cacheable if the block moved after the stable part.
    tokens: int


@runtime_checkable
class LearningState(Protocol):
    """The planner's learned state; :class:`MemoryLearner` in process, or shared by a fleet."""

    def sight(self, family: int, sightings: Sequence[Sighting], now: float, ticket: int) -> list[Sight]: ...

    def release(self, keys: Iterable[int], ticket: int) -> None: ...

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
    ) -> tuple[tuple[int, bytes | None, bool, float, float] | None, int]: ...

    def void(self, keys: Iterable[int], ticket: int) -> None: ...

    def started(
        self, keys: Iterable[tuple[int, float]], ticket: int, now: float, implicit: Sequence[int] = ()
    ) -> None: ...

    def not_cached(self, keys: Iterable[int]) -> None: ...

    def feedback(self, family: int, expected: int, confirmed: int) -> None: ...

    def learned_minimum(self, model_key: str) -> int: ...

    def implicit_read(self, model_key: str, served: bool) -> None: ...

    def implicit_hit_rate(self, model_key: str) -> float: ...

    def raise_minimum(self, model_key: str, tokens: float) -> None: ...

    def lower_minimum(self, model_key: str) -> None: ...

    def stability(
        self, family: int, blocks: Sequence[bytes], lines: dict[int, tuple[bytes, bytes]]
    ) -> tuple[int | None, bool, bool]: ...
