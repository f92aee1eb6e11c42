"""The placement policy: which candidate prefixes get a marker, and with which TTL.

Data flow: planner -> candidates (``_candidates``) -> what the learner knows of each
(``_learning``) -> **policy** -> markers inserted (``_rewrite``) -> planner.

Besides the candidates, a request after a switch of model sights where the
conversation's last request to its model ended (``_sight_earlier``, a previous turn).

The policy: a write costs 0.25x its tokens more than sending them unmarked (1x for a
1h write); a read saves 0.9x against sending them unmarked, and 1.15x against writing
them again. For each candidate the learner gives P(the prefix is read again within its
TTL), learnt per family, kind and run from whether prefixes really recur (see
``_learning``), times the provider's reliability. A prefix that recurs with chance p
costs 1.25 (1 - p) + 0.1 p per sighting when it is written whenever it is sighted
uncached, and 1.0 when it is never written: writing is the cheaper of the two from
p = 0.25 / 1.15 = 0.217 (``threshold``), which is the comparison the regret bound below
makes. (The one-step bar 0.25 / 0.9 = 0.28 holds only where the request that reads it
would not write it either; it is the unstable rule's, below.) Then:

* a prefix believed **cached** is marked: a read (and a refresh);
* a prefix another in-flight request is **writing** is not (``skipped_in_flight``);
* a prefix whose P reaches ``threshold`` (0.217) is **worth writing**; the
  deepest such candidate sets how far this request writes;
* any other candidate before that write extent is free to mark (Anthropic and
  DashScope bill only up to the last marker, so intermediate markers cost nothing)
  and is marked when a slot is left, so other requests can read it;
* the rest are ``skipped_not_reused``: nothing past the last candidate worth writing
  is written. A block that changes on every request never recurs, so a prefix that
  ends after it is never worth writing; when the learner has seen a static block change
  from one request to the next, a static prefix also ends before it (``_candidates``),
  so the stable part before a per-user profile or a timestamp block is still written;
* in a conversation whose prompt changed at its last two requests (*unstable*), the
  tail and a new static prefix are read by the next request only if the conversation
  goes on within 5 minutes and its prompt holds still this time: they are worth writing
  when the product of those two learnt chances reaches the one-step bar (0.28). Those
  chances are learnt per scope from a few conversations (a changed history apart for the
  size class of what the tail adds, ``_learning.history_change``), and a prompt that never holds
  (a timestamp at its top) would otherwise be written on the strength of their prior.

On an endpoint with an implicit cache (DashScope's compatible and native APIs) an
unmarked request reads a repeated prefix at 0.2x with no write premium, and any marker
turns that off for the whole request. There the plan is kept only when the family's
requests pay less with it than unmarked (``_implicit_pays``: per token of a prefix that
recurs with chance p, 1.25 (1 - p) + 0.1 p written, 1 past the marked extent, against
1 - 0.8 h p unmarked, h the rate at which the best-effort cache was found to serve
what it should), and a request changes caches only when that difference, over 20
requests, pays for what the change gives up (``skipped_implicit``).

A marker goes only where the estimated prefix plausibly reaches the model's minimum
(the documented table, raised by what was learnt; ``min_margin``: 25% under it, as a
marker below the minimum costs nothing and one left off costs the reads; on an
endpoint with an implicit cache, which a marked request gives up, over it by the
estimate's measured miss, ``TokenEstimator.error``). Slots: the
profile's maximum minus reserved relay slots, the caller's markers and a top-level
``cache_control``; priority: the write extent, the deepest read, then static,
document, previous turn. TTLs: ``5m``; ``1h`` (profiles that honour it) for a shared
prefix believed cached at 1h, or one that came back 5-60 minutes after its last use
when the chain of late returns that would read it pays the 1h premium against what the
request would otherwise do (``_bets_1h``) and what 1h bets saved (with a share of the
bill) pays its premium (``_budget``), and for every marker before it, or for the
static marker with ``static_ttl="1h"``; every ``1h`` marker precedes every ``5m`` one
(``skipped_ttl_order``). Top-level automatic mode (Anthropic first-party) marks the
tail when it is the request's last block and its content a plain string. The caller's
markers are kept and counted; markers the provider would reject are removed
(``removed_invalid``) unless ``remove_invalid=False``.

Regret: per (family, kind, run) the policy is the better of "always write" and
"never write" for the recurrence rate it observes, which it observes for every
request whatever it marked; a tail's kind holds the size class of its write
(``_learning.sized``), so within a kind the comparison is one of tokens, to a factor of 4.
Every prior weighs one opportunity against a window of
about 7, so on traffic that never reuses a prefix a new family makes 1 write (3 for a
continued tail) before the estimate falls under the threshold (none once the first-run
opportunities of other families settled unreused, ``_learning``), and after a change
from reused to unreused traffic at most 15 more (10 from the static prior, 12 from a
continued tail's: (S f^k + m) / (S + 1) < 0.217 with S = 1 / (1 - f)). README "The
adaptive policy", ``tests/test_regret.py`` and ``tests/test_learning_state.py`` state
and check the bound.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Final

import orjson
import xxhash

from ._advice import line_splits, volatile_advice
from ._candidates import find_candidates, last_eligible
from ._decision import ask
from ._layout import CONT, CUM, KEY, MARK, OK, Layout, Pos
from ._learning import TTL_1H, TTL_5M, Advice, LearningState, Sight, new_sight, new_sighting, sized
from ._plan import Placement, Plan, Ticket, new_placement, new_ticket
from ._profiles import Profile
from ._rewrite import insert_marker, last_is_cacheable, placement, tok
from ._tokens import PrefixCounter

if TYPE_CHECKING:
    from ._planner import Planner

__all__ = ["place"]

_EPHEMERAL: dict[str, str] = {"type": "ephemeral"}
_h64 = xxhash.xxh3_64_intdigest
#: Priority of the candidates that only compete for spare slots.
_SPARE_PRIORITY: Final = {
    "static": 0,
    "stable": 0,
    "document": 1,
    "previous_turn": 2,
    "tail": 3,
    "tail_first": 3,
    "hedge": 4,  # a slot only where no other free marker wants it
}
_SHARED_KINDS: Final = frozenset({"static", "stable", "document", "hedge"})
#: The reason a placement reports for a candidate kind: a first turn's tail is a tail, and
#: the static prefix before a changing block is a static prefix (its statistics are kept
#: apart: it recurs where the whole static region may not).
_REASON: Final = {"tail_first": "tail", "stable": "static", "hedge": "static"}
#: A 1h write instead of a 5m one costs 2.0 - 1.25 = 0.75x its tokens; a later return that
#: reads it (0.1x) instead of writing again (1.25x) saves 1.15x.
_UPGRADE_ODDS: Final = 0.75 / 1.15
#: A family's first requests (per process) whose static region is also cut before its last
#: block while no block is known to keep changing (``_candidates``'s hedge): a block that
#: changes at every request is found volatile at the fourth.
_HEDGE_REQUESTS: Final = 4
#: The unstable rule's bar against ``threshold``: a read by the next request saves 0.9x, not
#: the 1.15x of a read instead of a write (module docstring).
_ONE_STEP: Final = 1.15 / 0.9


def place(
    planner: Planner,
    obj: dict[str, Any],
    profile: Profile,
    model: str | None,
    counter: PrefixCounter,
    layout: Layout,
    host: str,
    scope: str,
) -> tuple[tuple[Placement, ...], bool, Ticket | None, Advice | None]:
    """The placements for one request, its ticket (what it sighted and claimed) and advice.

    A fault after the learner answered ends the request's ticket before it propagates
    (its claims and sightings are voided, as for a request that failed), so that the
    planner's fail-open path does not hold every request off its prefixes for
    ``CLAIM_TIMEOUT``.
    """
    held: list[Ticket] = []
    try:
        return _place(planner, obj, profile, model, counter, layout, host, scope, held)
    except BaseException:
        if held:
            planner.finished(Plan(body=None, ticket=held[0]))
        raise


def _place(
    planner: Planner,
    obj: dict[str, Any],
    profile: Profile,
    model: str | None,
    counter: PrefixCounter,
    layout: Layout,
    host: str,
    scope: str,
    held: list[Ticket],
) -> tuple[tuple[Placement, ...], bool, Ticket | None, Advice | None]:
    positions = layout.positions
    ratio = counter.ratio
    removed = layout.removed
    out: list[Placement] = (
        [
            Placement(r.location, "removed_invalid", None, r.index, r.path, r.position, 0, "caller")
            for r in removed
        ]
        if removed
        else []
    )
    changed = bool(removed)
    honours_1h = profile.honours_1h

    # The caller's markers and the top-level one.
    caller: list[int] = []
    for i, pos in enumerate(positions):
        if pos[MARK] is not None:
            caller.append(i)
            out.append(placement(pos, i, "kept", pos[MARK], "caller", ratio))
    top = obj.get("cache_control")
    top_ttl: str | None = None
    if isinstance(top, dict):
        top_ttl = "1h" if top.get("ttl") == "1h" else "5m"
        out.append(
            Placement(
                "top_level", "kept", top_ttl, (), "cache_control", -1, int(counter.raw * ratio), "caller"
            )
        )
    used = len(caller) + len(layout.nested) + (1 if top_ttl else 0)
    slots = profile.max_breakpoints - profile.reserved_slots  # Profile.slots
    budget = (slots if slots > 0 else 0) - used
    ordered: list[tuple[float, str]] = (
        sorted([(float(i), positions[i][MARK] or "5m") for i in caller] + layout.nested)
        if caller or layout.nested
        else []
    )
    automatic: int | None = None  # the block the caller's top-level marker lands on
    if top_ttl is not None:
        # Automatic caching marks the last cacheable block: its TTL sits there, and no
        # marker of ours may go on that block (two TTLs on one block are a 400).
        automatic = last_eligible(positions, 0, len(positions))
        ordered.append((float(len(positions) if automatic is None else automatic), top_ttl))

    fm = layout.first_message
    # What the learner knows of each candidate prefix (and this request counts).
    # The structural signature: whether the request has tools (positions, or chat-completions
    # definitions) and how many system positions it has. Not the number of tools: an agent
    # that adds tools as it finds them, or one-shot requests whose tools are retrieved per
    # request, would split one traffic into a family per count, each paying its own
    # learning (a wasted write or more) again.
    tool_positions = 0 if layout.tools else _count(positions, "tools")
    model_key, scope_tag, family, conversation_tag, model_tag, scope_family = _scope_of(
        planner, profile.name, host, model, scope, bool(layout.tools or tool_positions), fm - tool_positions
    )
    # Candidates: (position, kind), in prompt order. A static prefix also ends before the
    # first static block this family keeps changing (as the learner said at its last
    # request): a prefix through that block may never recur (a per-user profile, a
    # timestamp) or may (one of a few tenants' prompts, taking turns); the blocks before it
    # do. Which of the two is worth writing is the recurrence statistics' call.
    volatile_at = planner.volatile_at.get(family) if planner.learning and layout.block_digests else None
    # Until the family's stability is known (with the default forgetting, a block is found
    # volatile after it changed at three comparisons running: at the fourth request), its
    # first requests also end a prefix before the static region's last block: the request
    # that writes the region marks that one for free, and the next request reads it if the
    # last block is what changed (a timestamp, a profile).
    hedge = (
        volatile_at is None
        and planner.learning
        and len(layout.block_digests) >= 2
        and planner.static_seen.get(family, 0) < _HEDGE_REQUESTS
    )
    candidates = find_candidates(
        layout, ratio, profile.lookback, planner.document_tokens, top_ttl, volatile_at, hedge
    )
    # Ticket(id, family, model_key), total_raw set: its fields in order.
    ticket = new_ticket(
        next(planner.tickets),
        family,
        model_key,
        [],
        [],
        [],
        0.0,
        0.0,
        counter.raw,
        False,
        False,
        False,
        0,
        [],
    )
    held.append(ticket)
    for index in caller:
        ticket.deepest_raw = max(ticket.deepest_raw, positions[index][CUM])
        ttl_s = TTL_1H if positions[index][MARK] == "1h" else TTL_5M
        ticket.marked.append((_h64(scope_tag + layout.digests[index]), ttl_s))
    digests = layout.digests
    keys: list[int] = []
    kinds: list[str] = []
    for i, kind in candidates:
        keys.append(_h64(scope_tag + digests[i]))
        kinds.append(kind)
    # candidates, kinds, keys and sights (below) are parallel lists of one length: their
    # zips go without strict=True (a keyword argument costs zip() a second argument parse).
    sights: list[Sight] = []
    advice: Advice | None = None
    before: tuple[int, bytes | None, bool, float, float] | None = None
    if planner.learning and candidates:
        # One question to the learner (one round trip to a shared one): the sightings,
        # the static region's stability, and the conversation when planning goes on.
        stat_kinds = _sized(kinds, candidates, positions, ratio, caller)
        conversation = None
        if layout.first_input_anchor is not None and budget > 0 and not (ordered and _disordered(ordered)):
            # A conversation is one whatever model each of its requests goes to (a router,
            # an escalation); its record tags the model, so a switch is no evidence, and
            # keeps where each model's last request ended (``earlier``, below). The tag
            # also holds the settings that key the messages' cache (thinking, tool_choice):
            # requests with another setting write and read apart, as another model's do.
            conversation = (
                _h64(conversation_tag + layout.first_input_anchor),
                layout.first_reply_anchor,
                model_tag ^ layout.lane,
                candidates[-1][0] if kinds[-1] == "tail" or kinds[-1] == "tail_first" else -1,
                scope_family,
                # The tail's size class, when it has one: whether a changed history changes
                # again can depend on what this request adds (``history_change``).
                stat_kinds[-1] if stat_kinds is not kinds else "",
            )
        sights, stable, before, earlier = ask(
            planner.learner,
            family,
            [
                new_sighting(key, kind, kind in _SHARED_KINDS)
                for key, kind in zip(keys, stat_kinds)  # noqa: B905
            ],
            planner.clock,
            ticket.id,
            model_key=model_key,
            blocks=layout.block_digests,
            lines_for=lambda volatile: line_splits(layout, volatile),
            conversation=conversation,
        )
        if earlier >= 0:
            _sight_earlier(
                planner,
                layout,
                profile.lookback,
                candidates,
                kinds,
                keys,
                sights,
                earlier,
                scope_tag,
                family,
                ticket,
            )
        ticket.sighted = keys
        if stable is not None:
            seen = planner.static_seen
            if len(seen) >= 4_096 and family not in seen:
                seen.clear()
            seen[family] = seen.get(family, 0) + 1
            if stable[0] is not None:
                cuts = planner.volatile_at
                if stable[0] != cuts.get(family):
                    if len(cuts) >= 4_096:
                        cuts.clear()
                    cuts[family] = stable[0]
            else:
                planner.volatile_at.pop(family, None)
        advice = volatile_advice(planner, layout, stable, counter, profile, model, family)
        bets = planner.budget
        if bets is not None and bets.has_bets():
            # A bet's prefix found cached after a late return: what its 1h TTL saved.
            t = planner.threshold
            bets.sighted(
                [
                    (s.key, s.cached, 1.15 if s.p >= t else 0.9, positions[index][CUM] * ratio)
                    for (index, _), s in zip(candidates, sights)  # noqa: B905
                ],
                planner.clock(),
            )
    else:
        sights = [
            new_sight(key, kind, 1, False, False, False, 1.0, 0.0, False, 1.0, False, False)
            for key, kind in zip(keys, kinds)  # noqa: B905
        ]
    if len(sights) != len(candidates):
        raise ValueError("the learner answered for another number of prefixes than it was asked about")
    claimed = [
        s.key
        for s, kind in zip(sights, kinds)  # noqa: B905
        if kind in _SHARED_KINDS and not s.cached and not s.writing
    ]
    # The other prefixes it sighted uncached are nobody's claim, but the learner holds
    # their sighting until this response begins (a copy of the request sent meanwhile is
    # no recurrence): the ones it does not mark end then, as released claims do.
    watched = (
        [
            s.key
            for s, kind in zip(sights, kinds)  # noqa: B905
            if kind not in _SHARED_KINDS and not s.cached and not s.writing
        ]
        if planner.learning
        else []
    )

    if budget <= 0 or (ordered and _disordered(ordered)) or not candidates:
        _release_unused(planner.learner, ticket, claimed, set(), watched)
        return tuple(out), changed, (ticket if ticket.marked or ticket.sighted else None), advice

    documented = planner.min_tokens(profile, model)
    learned = planner.learner.learned_minimum(model_key) if planner.learning else 0
    minimum = documented
    if learned > documented:
        minimum = learned
        if planner.probe(model_key):
            minimum = documented
            ticket.probe = True
            ticket.probed_minimum = learned
    # Under the minimum a marker costs nothing only where an unmarked request has no cache
    # to lose: on an endpoint with an implicit cache, it gives that cache up.
    margin = planner.min_margin
    if profile.implicit_cache:
        # There a marker under the minimum gives up this request's implicit hits, and one
        # left off a prefix over it still reads it implicitly (0.2x instead of 0.1x): mark
        # only what is over the minimum by more than the estimate's measured miss.
        margin = max(margin, counter.error())
    threshold_tokens = minimum * (1.0 + margin)

    # A continued conversation seen before whose previous turn's prefix was never seen:
    # something before it changed since that turn (a timestamp at the top of the system
    # prompt, an edited message). Its own tail may not be found by the next turn either;
    # and if its static prefix changed since the conversation's last request, the static
    # prefix is the culprit. Whether the next request changes it again is learnt per
    # scope and per what changed (``unsettled``, from the learner's conversation record),
    # and so is whether a continued conversation goes on within 5 minutes (``goes_on``):
    # neither is written unless their product, the chance that the next request reads
    # it, pays for it. (A conversation not seen before, such as the first request of a
    # new process, is no evidence either way.)
    unstable = False
    unsettled = 1.0
    goes_on = 0.0
    if (
        planner.learning
        and layout.first_input_anchor is not None
        and before is not None
        and not layout.first_turn
    ):
        old_static, old_reply, steady, unsettled, goes_on = before
        # A conversation that never kept its prefix from one request to the next
        # (a one-time edit of a steady one is not this): its static prefix changed
        # again, or, surely the same conversation (same first reply), its previous
        # turn was never seen.
        if not steady:
            static_key: int | None = None
            history_known = True
            for kind, sight in zip(kinds, sights):  # noqa: B905
                if kind == "static":
                    static_key = sight.key  # the static region's (``conversation_context``)
                elif kind == "previous_turn" and not sight.known:
                    history_known = False
            unstable = old_static != (static_key if static_key is not None else -1) or (
                old_reply == layout.first_reply_anchor and not history_known
            )

    # 1h bets are paid from what the 1h writes so far saved (``_budget``).
    bets = planner.budget
    taken: set[int] = set(caller)
    if automatic is not None:
        taken.add(automatic)
    # Roles: "read" (believed cached), "write" (worth writing), None (only if free).
    entries: list[tuple[int, str, Sight, str | None]] = []
    reliability_key = ("reliability", family)  # the counter of this family's reliability probes
    for (index, kind), sight in zip(candidates, sights):  # noqa: B905
        if index in taken:
            continue
        taken.add(index)
        pos = positions[index]
        reason = _REASON.get(kind, kind)
        if not counter.reaches_at(pos[CUM], threshold_tokens):
            out.append(placement(pos, index, "skipped_below_minimum", None, reason, ratio))
            continue
        if sight.cached:
            entries.append((index, kind, sight, "read"))
        elif sight.writing:
            out.append(placement(pos, index, "skipped_in_flight", None, reason, ratio))
        elif kind == "previous_turn" or kind == "hedge":
            # A previous turn is marked to be read, never written (the tail covers it); so
            # is the hedge before the static region's last block (free to mark where the
            # request writes past it, never a write of its own: its own statistics keep
            # what it did apart from the stable part of a block found to change, but where
            # an earlier block is the one that changes, it is never read).
            entries.append((index, kind, sight, None))
        elif unstable and (kind == "tail" or (kind == "static" and not sight.known)):
            # The next request reads it if the conversation goes on within the TTL and its
            # prefix holds still this time: the two learnt chances, not the family's
            # statistic of this kind, which counts the changes a second time (and, when
            # the change moved the conversation to another structural family, little else).
            worth = goes_on * (1.0 - unsettled) * sight.reliability
            entries.append((index, kind, sight, "write" if worth >= planner.threshold * _ONE_STEP else None))
        elif sight.p >= planner.threshold or (
            # Worth a write for its late return only where it would get a 1h TTL.
            sight.late
            and honours_1h
            and kind in _SHARED_KINDS
            and _bets_1h(planner, sight)
            and (bets is None or bets.affords(pos[CUM] * ratio))
        ):
            entries.append((index, kind, sight, "write"))
        elif (
            sight.reliability < 1.0
            and sight.p >= planner.threshold * sight.reliability
            and planner.probe(reliability_key)
        ):
            # Only the provider's reliability holds this write back: one in probe_every
            # is made anyway, so a provider that serves its cache again is found again.
            entries.append((index, kind, sight, "write"))
        else:
            entries.append((index, kind, sight, None))
    extent = read_point = -1
    for i, _, _, role in entries:
        if role == "write":
            if i > extent:
                extent = i
        elif role == "read" and i > read_point:
            read_point = i

    # Slots: the write extent, the deepest read, then the free ones before the extent.
    def priority(entry: tuple[int, str, Sight, str | None]) -> tuple[int, int]:
        index, kind, _, role = entry
        if index == extent:
            return (0, 0)
        if index == read_point:
            return (1, 0)
        if role is not None:
            return (2, -index)
        return (3, _SPARE_PRIORITY.get(kind, 9))

    wanted = [e for e in entries if e[3] is not None or e[0] < extent]
    chosen: list[tuple[int, str, Sight]]
    if len(wanted) <= budget:
        # A slot for every wanted candidate (the common case): the priority order decides
        # nothing (the chosen are put in prompt order below), and the candidates left
        # unmarked are exactly the ones not wanted.
        chosen = [(index, kind, sight) for index, kind, sight, _ in wanted]
        for index, kind, _, role in entries:
            if role is None and index >= extent:
                reason = _REASON.get(kind, kind)
                out.append(placement(positions[index], index, "skipped_not_reused", None, reason, ratio))
    else:
        wanted.sort(key=priority)
        chosen = []
        for index, kind, sight, _ in wanted:
            pos = positions[index]
            reason = _REASON.get(kind, kind)
            if len(chosen) >= budget:
                out.append(placement(pos, index, "skipped_no_slot", None, reason, ratio))
                continue
            chosen.append((index, kind, sight))
        chosen_at = {index for index, _, _ in chosen}
        for index, kind, _, role in entries:
            if index not in chosen_at and role is None and index >= extent:
                reason = _REASON.get(kind, kind)
                out.append(placement(positions[index], index, "skipped_not_reused", None, reason, ratio))
    if (
        chosen
        and profile.implicit_cache
        and not ordered
        and _implicit_pays(planner, family, model_key, candidates, sights, chosen, positions, ratio)
    ):
        # The whole request unmarked keeps the endpoint's implicit cache, which pays more.
        for index, kind, _ in chosen:
            out.append(
                placement(positions[index], index, "skipped_implicit", None, _REASON.get(kind, kind), ratio)
            )
        chosen = []
    if profile.implicit_cache and planner.learning:
        _implicit_sent(planner, not chosen and not ordered, candidates, sights, positions, ticket)
    if not chosen:
        _release_unused(planner.learner, ticket, claimed, set(), watched)
        return tuple(out), changed, (ticket if ticket.marked or ticket.sighted else None), advice

    # TTLs, in prompt order: 1h markers must precede every 5m marker.
    chosen.sort()
    one_hour_upto = bet_upto = -1
    if honours_1h and planner.learning:
        for index, kind, sight in chosen:
            if kind in _SHARED_KINDS:
                if sight.cached_1h:
                    one_hour_upto = max(one_hour_upto, index)
                elif (
                    kind != "hedge"  # never a write of its own
                    and sight.late
                    and _bets_1h(planner, sight)
                    and (
                        bets is None or bets.affords(_premium(planner, sight) * positions[index][CUM] * ratio)
                    )
                ):
                    one_hour_upto = bet_upto = max(one_hour_upto, index)
    last_1h = -1.0
    first_5m = float(len(positions) + 1)
    if ordered:
        last_1h = max((at for at, ttl in ordered if ttl == "1h"), default=-1.0)
        first_5m = min((at for at, ttl in ordered if ttl == "5m"), default=first_5m)
    marked_keys: set[int] = set()
    key_at = {index: key for (index, _), key in zip(candidates, keys, strict=True)}
    # The keys this request writes at 1h and the bet's premium: the deepest bet's prefix
    # past what it reads (raw estimates; ``ratio`` below).
    bet_keys: list[int] = []
    bet_cost = read_below = 0.0
    static_1h = planner.static_ttl == "1h"
    marked = ticket.marked
    for index, kind, sight in chosen:
        pos = positions[index]
        reason = _REASON.get(kind, kind)
        forced_1h = index < last_1h
        allowed_1h = index < first_5m and honours_1h
        if forced_1h and not allowed_1h:
            out.append(placement(pos, index, "skipped_ttl_order", None, reason, ratio))
            continue
        ttl = (
            "1h"
            if forced_1h
            or (allowed_1h and (index <= one_hour_upto or (static_1h and kind in _REGION_OR_HEDGE)))
            else "5m"
        )
        if ttl == "5m" and index < first_5m:  # first_5m = min(first_5m, float(index))
            first_5m = float(index)
        key = key_at[index]
        if bet_upto >= 0:
            if ttl == "1h":
                bet_keys.append(key)
                if index == bet_upto:
                    bet_cost = _premium(planner, sight) * (pos[CUM] - read_below)
            if sight.cached and index < bet_upto:
                read_below = pos[CUM]
        marked_keys.add(key)
        marked.append((key, TTL_1H if ttl == "1h" else TTL_5M))
        cum = pos[CUM]
        if cum > ticket.deepest_raw:  # ticket.deepest_raw = max(ticket.deepest_raw, cum)
            ticket.deepest_raw = cum
        if sight.cached and cum > ticket.expected_read_raw:
            ticket.expected_read_raw = cum
        if (
            kind in ("tail", "tail_first")
            and profile.top_level_automatic
            and planner.automatic != "never"
            and ttl == "5m"
            and index == len(positions) - 1
            and (planner.automatic == "prefer" or isinstance(pos[CONT][pos[KEY]], str))
            and last_is_cacheable(positions)
        ):
            obj["cache_control"] = dict(_EPHEMERAL)
            out.append(
                new_placement(
                    "top_level", "inserted", "5m", (), "cache_control", -1, tok(pos[CUM], ratio), reason
                )
            )
            changed = True
            continue
        insert_marker(pos, ttl, profile)
        out.append(placement(pos, index, "inserted", ttl, reason, ratio))
        changed = True
    if bet_cost > 0.0 and planner.budget is not None:
        planner.budget.placed(bet_keys, bet_cost * ratio, planner.clock())
    _release_unused(planner.learner, ticket, claimed, marked_keys, watched)
    return tuple(out), changed, ticket, advice


def _sight_earlier(
    planner: Planner,
    layout: Layout,
    lookback: int,
    candidates: list[tuple[int, str]],
    kinds: list[str],
    keys: list[int],
    sights: list[Sight],
    earlier: int,
    scope_tag: bytes,
    family: int,
    ticket: Ticket,
) -> None:
    """Sight the tail of the conversation's last request to this model, as a previous turn.

    After a switch of model (a router, an escalation) the previous turn's tail was written
    in another model's cache; the tail this model's last request wrote (``earlier``, its
    position) is what this request's tail marker finds through the provider's lookback.
    Sighting it credits that write's recurrence, as the previous turn's sighting does
    for a conversation that stays on one model, and lets it be marked to be read. Only
    within the lookback of the tail, and never a position already sighted.
    """
    tail = candidates[-1][0]
    if kinds[-1] not in ("tail", "tail_first") or not 0 <= earlier < tail:
        return
    if tail - earlier >= lookback:
        return
    at = bisect_left(candidates, (earlier, ""))
    if at < len(candidates) and candidates[at][0] == earlier:
        return
    pos = layout.positions[earlier]
    if not (pos[OK] or pos[MARK] is not None):
        return
    key = _h64(scope_tag + layout.digests[earlier])
    sight = planner.learner.sight(
        family, [new_sighting(key, "previous_turn", False)], planner.clock(), ticket.id
    )[0]
    candidates.insert(at, (earlier, "previous_turn"))
    kinds.insert(at, "previous_turn")
    keys.insert(at, key)
    sights.insert(at, sight)


#: What ``_scope_of`` returns: (model key, scope tag, family, conversation tag, model tag,
#: the scope's family whatever the structure).
_Scope = tuple[str, bytes, int, bytes, int, int]


def _sized(
    kinds: list[str], candidates: list[tuple[int, str]], positions: list[Pos], ratio: float, caller: list[int]
) -> list[str]:
    """The statistics' kinds of the candidates: a tail's by the tokens its write adds to the
    candidate before it (``_learning.sized``), not counting a document candidate: a file
    attached as a block of its own before the question, or a huge tool result before a
    reminder, is written with the tail, and its size is what the write costs. A caller's
    marker before the tail (``caller``: its positions, in order) writes what is before it
    whatever the planner does: the tail adds what follows it."""
    last = kinds[-1]
    if last != "tail" and last != "tail_first":
        return kinds
    tail = candidates[-1][0]
    end = positions[tail][CUM]
    start = 0.0
    for i in range(len(candidates) - 2, -1, -1):
        if kinds[i] != "document":
            start = positions[candidates[i][0]][CUM]
            break
    for i in reversed(caller):
        if i < tail:
            if positions[i][CUM] > start:
                start = positions[i][CUM]
            break
    stat = sized(last, (end - start) * ratio)
    return kinds if stat is last else [*kinds[:-1], stat]


def _scope_of(
    planner: Planner, profile: str, host: str, model: str | None, scope: str, tools: bool, system: int
) -> _Scope:
    """The digests that bind a request's prefixes to its scope, family and model.

    The learned minimums' key, the tag of every prefix key (profile, host, model, scope),
    the family (that tag and the structural signature: whether the request has tools, and
    the number of system positions), the tag of the conversation key (model-free), the
    model's tag, and the scope's family without the structure (how a conversation's prompt
    changes is counted there: a system block added, or a first tool, moves it to another
    structural family). Each is a function of the arguments alone, so they are kept per
    argument tuple (a few tuples carry all the traffic; bounded like the planner's other
    tables).
    """
    key = (profile, host, model, scope, tools, system)
    found = planner.scopes.get(key)
    if found is None:
        scope_tag = orjson.dumps([profile, host, model, scope])
        found = (
            f"{profile}\x00{model}",
            scope_tag,
            _h64(scope_tag + orjson.dumps([tools, system])),
            orjson.dumps([profile, host, scope]) + b"conversation",
            _h64(model.encode()) if model else 0,
            _h64(scope_tag),
        )
        if len(planner.scopes) >= 4096:
            planner.scopes.clear()
        planner.scopes[key] = found
    return found


def _bets_1h(planner: Planner, sight: Sight) -> bool:
    """Whether a 1h write of a prefix that came back late pays, against what else is done.

    A late return that finds the 1h entry reads it and refreshes it, so the chain of
    returns that read is worth ``odds = p_late / (1 - p_late)`` of them. Against a 5m write
    the request makes anyway (its 5m estimate reaches the threshold), a 1h write costs
    0.75x its tokens more and each such return reads (0.1x) instead of writing again
    (1.25x): ``odds * 1.15 >= 0.75``. Against no write, it costs 1.0x more and each return
    reads, with the uses that follow it within 5 minutes (``1 / (1 - p)`` of them, p the
    5m estimate): ``odds * 0.9 / (1 - p) >= 1.0``, the ``threshold_1h`` odds when p = 0.
    ``threshold_1h >= 1`` turns 1h bets off.
    """
    t1 = planner.threshold_1h
    if t1 >= 1.0:
        return False
    p_late = sight.p_late
    if p_late >= 1.0:
        return True
    odds = p_late / (1.0 - p_late)
    if sight.p >= planner.threshold:
        return odds >= _UPGRADE_ODDS
    return odds >= t1 / (1.0 - t1) * (1.0 - sight.p)


def _premium(planner: Planner, sight: Sight) -> float:
    """What a 1h write costs per token more than the request would pay otherwise."""
    return 0.75 if sight.p >= planner.threshold else 1.0


def _release_unused(
    learner: LearningState, ticket: Ticket, claimed: list[int], marked: set[int], watched: list[int]
) -> None:
    """Keep the claims this request writes; the others become sightings until it starts.

    ``watched``: the unclaimed prefixes it sighted uncached; those it does not mark are
    sightings until it starts too (``released``, so its start ends them).
    """
    unused = [key for key in claimed if key not in marked]
    ticket.claimed = [key for key in claimed if key in marked]
    if unused:
        learner.release(unused, ticket.id)
    ended = unused + [key for key in watched if key not in marked] if watched else unused
    if ended:
        ticket.released = ended


#: Weight of a request in its family's moving average of what going unmarked saves.
_IMPLICIT_ALPHA: Final = 0.2
#: Requests within which a switch between the two caches must pay for itself.
_IMPLICIT_HORIZON: Final = 20
#: Families and static regions whose averages are kept (all forgotten at once past it).
_IMPLICIT_GAINS_MAX: Final = 4_096
#: Candidate kinds that end a static region (its whole, or the part before a block that
#: keeps changing; not the hedge, which is a guess of the latter).
_REGION: Final = ("static", "stable")
#: The candidates ``static_ttl="1h"`` marks at 1h (a hedge precedes the static marker).
_REGION_OR_HEDGE: Final = ("static", "stable", "hedge")


def _implicit_pays(
    planner: Planner,
    family: int,
    model_key: str,
    candidates: list[tuple[int, str]],
    sights: list[Sight],
    chosen: list[tuple[int, str, Sight]],
    positions: list[Pos],
    ratio: float,
) -> bool:
    """Whether this request is better sent unmarked than with the markers planned.

    On an endpoint with an implicit cache (DashScope's compatible and native APIs) any
    marker turns that cache off for the whole request: it neither reads nor writes it.

    *The rate.* Per token of a prefix that recurs within its TTL with chance p, the
    explicit plan costs 1.25 (1 - p) + 0.1 p through the marked extent (written when
    uncached, read when cached) and 1 past it; unmarked, 1 - 0.8 h p (an implicit read is
    billed 0.2x, with no write premium, and the best-effort cache finds what it holds
    with chance h, learnt from bills: ``Planner.implicit_hit_rate``). Summed over the
    segments between candidates, each the tokens its prefix adds: a batch job whose long
    system prompt always recurs pays less marked (0.1x against 0.2x), RAG whose chunks
    are asked about again one time in three unmarked (the 0.25x premium on every query
    against 0.1x saved on a third of them). The family's moving average of it (``_IMPLICIT_ALPHA``) is the rate: a
    conversation's first turns and follow-ups differ, and its requests must not choose
    apart. Requests under one static region (tenants' system prompts behind one key are
    one family) keep an average of their own, which starts from the family's.

    *The switch.* The two caches are apart: a request marked after unmarked ones reads
    nothing of what they cached implicitly (and writes it again), and one unmarked after
    marked ones nothing of what they wrote. The implicit cache holds what unmarked
    requests sent within its TTL, whatever their family or process (``Sight.implicit``). The
    request changes sides only when the rate, over the average's window, pays for what
    the change gives up now: 0.9x of a prefix believed cached explicitly (0.1x if both
    caches hold it), 1.05x of one the implicit cache alone holds (0.8x past the marked
    extent; with h, 0.25 + 0.8 h and 0.8 h). A family's first request keeps
    the plan, as on any endpoint: a shared prefix found unread costs its writes until the
    rate says so, one found read afterwards would cost a switch.
    """
    upto = max(index for index, _, _ in chosen)
    explicit_to = implicit_to = -1
    # What the implicit cache holds: what an unmarked request sent within its TTL (a
    # marked one sends nothing there), as the learner was told (``Sight.implicit``).
    for (index, _), sight in zip(candidates, sights):  # noqa: B905
        if sight.cached:
            explicit_to = index
        if sight.implicit:
            implicit_to = index
    # A prefix recurs whenever a longer one does: each segment's chance is the largest of
    # its prefix's and every deeper one's.
    chances = [min(1.0, max(0.0, sight.p)) for sight in sights]
    for k in range(len(chances) - 2, -1, -1):
        if chances[k + 1] > chances[k]:
            chances[k] = chances[k + 1]
    # What an implicit read saves against paying in full: 0.8x of its tokens, times the
    # chance the best-effort cache finds them (learnt from the bills, 1 until then).
    saves = 0.8 * planner.implicit_hit_rate(model_key)
    done = 0.0
    rate = 0.0
    switch = 0.0
    for (index, _), p in zip(candidates, chances):  # noqa: B905
        tokens = positions[index][CUM] * ratio
        segment = tokens - done
        if segment <= 0:
            continue
        done = tokens
        # What going unmarked costs this request more than marked, where a cache holds the
        # segment: an explicit read (0.1x) is lost, an implicit one (1 - saves) gained.
        held = index <= implicit_to
        if index > upto:
            rate += segment * saves * p
            if held:
                switch -= saves * segment
            continue
        rate += segment * (0.25 - 1.15 * p + saves * p)
        if index <= explicit_to:
            switch += (0.9 - saves if held else 0.9) * segment
        elif held:
            switch -= (0.25 + saves) * segment
    gains = planner.implicit_gain
    previous = gains.get(family)
    if previous is None:
        if len(gains) >= _IMPLICIT_GAINS_MAX:
            gains.clear()
        gains[family] = 0.0
        return False
    average = previous + _IMPLICIT_ALPHA * (rate - previous)
    gains[family] = average
    # Requests under one static region (a tenant's system prompt behind a shared key) keep
    # an average of their own, which starts from the family's.
    region = next((s.key for (_, kind), s in zip(candidates, sights) if kind in _REGION), None)  # noqa: B905
    if region is not None:
        before = gains.get(region)
        if before is None:
            if len(gains) >= _IMPLICIT_GAINS_MAX:
                gains.clear()
                gains[family] = average
            before = previous
        average = before + _IMPLICIT_ALPHA * (rate - before)
        gains[region] = average
    return average * _IMPLICIT_HORIZON > switch


def _implicit_sent(
    planner: Planner,
    unmarked: bool,
    candidates: list[tuple[int, str]],
    sights: list[Sight],
    positions: list[Pos],
    ticket: Ticket,
) -> None:
    """An unmarked request puts its prefixes in the implicit cache once its response
    begins (``Ticket.implicit_keys``, ``Planner.started``: the learner is told). Where it
    shares one that another unmarked request's response put there within the TTL
    (``Sight.implicit``), the cache should serve the deepest such
    (``Ticket.implicit_read_raw``), and its bill says whether it did
    (``Planner.implicit_hit_rate``)."""
    if not unmarked or not sights:
        return
    for (index, _), sight in zip(reversed(candidates), reversed(sights)):  # noqa: B905
        if sight.implicit:
            ticket.implicit_read_raw = positions[index][CUM]
            break
    ticket.implicit_keys = tuple(sight.key for sight in sights)


def _count(positions: list[Pos], location: str) -> int:
    n = 0
    for pos in positions:
        if pos[0] != location:
            break
        n += 1
    return n


def _disordered(ordered: list[tuple[float, str]]) -> bool:
    """Whether a ``1h`` marker comes after a ``5m`` one (the caller's own mistake: add nothing)."""
    seen_5m = False
    for _, ttl in ordered:
        if ttl == "5m":
            seen_5m = True
        elif seen_5m:
            return True
    return False
