"""The breakpoint planner: request body in, ``cache_control`` placements out. Sans-IO.

Data flow: request -> **planner** -> transport -> stream observer -> usage record -> sinks
-> ``Planner.started`` / ``finished`` / ``observe`` (feedback).

:meth:`Planner.plan` parses the body once, lays it out once (``_layout``: positions in
tools -> system -> messages order with their prefix digests), asks the learner
(``_learning``) what it knows of each candidate prefix, decides, inserts the markers
and serialises once; when it adds nothing it returns ``body=None`` and the original
bytes go out untouched. It never raises: a fault yields ``Plan(body=None, error="internal_error", fault=exc)``.

Candidates (research A.1-A.6, B.2, E), each a prefix ending at one block:

* ``static``: the last eligible tools/system block (everything every conversation with
  these tools and this system prompt shares);
* ``tail_first`` / ``tail``: the last eligible block of the last user message, on a first
  turn / a continued conversation (the next turn, or the next agent-loop step, reads it);
* ``previous_turn``: where the previous turn's tail was (turn N+1 re-marks the position
  turn N wrote, so the lookback still finds it);
* ``document``: the latest large block before the tail (a document asked about again).

The policy: a write costs 0.25x its tokens more than sending them unmarked (1x for a
1h write), a read saves 0.9x. For each candidate the learner gives P(the prefix is
read again within its TTL), learnt per family, kind and run from whether prefixes
really recur (see ``_learning``), times the provider's reliability. Then:

* a prefix believed **cached** is marked: a read (and a refresh);
* a prefix another in-flight request is **writing** is not (``skipped_in_flight``);
* a prefix whose P reaches ``threshold`` (0.28 = 0.25 / 0.9) is **worth writing**; the
  deepest such candidate sets how far this request writes;
* any other candidate before that write extent is free to mark (Anthropic and
  DashScope bill only up to the last marker, so intermediate markers cost nothing)
  and is marked when a slot is left, so other requests can read it;
* the rest are ``skipped_not_reused``: nothing past the last candidate worth writing
  is written. A block that changes on every request never recurs, so a prefix that
  ends after it is never worth writing.

A marker goes only where the estimated prefix reaches the model's minimum (the
documented table, raised by what was learnt). Slots: the profile's maximum minus
reserved relay slots, the caller's markers and a top-level ``cache_control``;
priority: the write extent, the deepest read, then static, document, previous turn.
TTLs: ``5m``; ``1h`` (profiles that honour it) for a shared prefix that came back
5-60 minutes after its last use, and for every marker before it, or for the static
marker with ``static_ttl="1h"``; every ``1h`` marker precedes every ``5m`` one
(``skipped_ttl_order``). Top-level automatic mode (Anthropic first-party) marks the
tail when it is the request's last block and its content a plain string. The
caller's markers are kept and counted; markers the provider would reject are removed
(``removed_invalid``) unless ``remove_invalid=False``.

Regret: per (family, kind, run) the policy is the better of "always write" and
"never write" for the recurrence rate it observes, which it observes for every
request whatever it marked. On traffic that never reuses a prefix it makes one write
per (family, kind, run) before the estimate falls under the threshold, and after a
change from reused to unreused traffic at most ``ceil(log(0.28 / p) / log(1 / 0.85))``
more (p: the rate before the change; 8 from p = 1). README "The adaptive policy" and
``tests/test_regret.py`` state and check the bound.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Collection
from typing import Any, Final, Literal

import orjson
import xxhash

from ..accounting._records import TokenUsage
from ._decision import ask
from ._layout import CONT, CUM, KEY, MARK, OK, Layout, Pos, position_path
from ._layout import walk as walk_layout
from ._learning import TTL_1H, TTL_5M, Advice, LearningState, MemoryLearner, Sight, new_sight, new_sighting
from ._plan import Placement, Plan, Ticket, new_placement, new_plan, new_ticket
from ._profiles import Profile, ProfileRegistry
from ._tokens import PrefixCounter, TokenEstimator

__all__ = ["Placement", "Plan", "Planner"]

_EPHEMERAL: dict[str, str] = {"type": "ephemeral"}
_h64 = xxhash.xxh3_64_intdigest
#: Priority of the candidates that only compete for spare slots.
_SPARE_PRIORITY: Final = {"static": 0, "document": 1, "previous_turn": 2, "tail": 3, "tail_first": 3}
_SHARED_KINDS: Final = frozenset({"static", "document"})


class Planner:
    """Plans ``cache_control`` breakpoints for one request body at a time. Thread-safe.

    Args:
        registry: endpoint profiles (default: the shipped ones).
        estimator: token estimator (default: a fresh :class:`TokenEstimator`).
        static_ttl: TTL of the static-prefix marker where the profile honours ``1h``.
        automatic: ``"auto"`` uses top-level automatic mode for the tail when it saves a
            conversion; ``"never"`` always marks explicitly; ``"prefer"`` uses it whenever
            the tail is the last block.
        document_tokens: a block this large (estimated) is a shared-document candidate.
        min_margin: a prefix must be estimated at ``min * (1 + min_margin)`` to be marked.
        remove_invalid: remove the caller's markers the provider would reject.
        include_usage: add ``stream_options.include_usage`` to chat-completions streams
            that lack it (the response side hides the extra usage-only chunk).
        threshold: P(read within TTL) a 5m write must reach (0.25 premium / 0.9 saving).
        threshold_1h: for a prefix that came back 5-60 minutes later, P(it comes back within
            the hour again) a 1h write must reach (1.0 premium: about two reads, p/(1-p) > 1.1).
        learning: learn from traffic (``False``: every candidate that reaches the minimum
            is written, a fixed policy).
        learner: the learned state (default: a new :class:`MemoryLearner`; a shared one
            lets a fleet of processes learn together).
        probe_every: one plan in this many re-tests a learned minimum.
        clock: wall clock in seconds, for cache TTLs (default ``time.time``; inject one to
            replay a workload on a simulated clock).
        profiles: alias of ``registry``, for callers (the transports) whose ``registry``
            keyword already means a Prometheus registry.
        render: serialise the planned body (``False``: ``Plan.body`` stays None and only the
            decisions are made; the shadow estimate, which never sends them, plans so).

    Example::

        planner = Planner()
        plan = planner.plan(api="messages", host="api.anthropic.com", path="/v1/messages", body=raw)
        outgoing = plan.body if plan.body is not None else raw
    """

    def __init__(
        self,
        registry: ProfileRegistry | None = None,
        estimator: TokenEstimator | None = None,
        *,
        static_ttl: Literal["5m", "1h"] = "5m",
        automatic: Literal["auto", "never", "prefer"] = "auto",
        document_tokens: int = 1_024,
        min_margin: float = 0.0,
        remove_invalid: bool = True,
        include_usage: bool = False,
        threshold: float = 0.28,
        threshold_1h: float = 0.53,
        learning: bool = True,
        learner: LearningState | None = None,
        probe_every: int = 64,
        clock: Callable[[], float] = time.time,
        profiles: ProfileRegistry | None = None,
        render: bool = True,
    ) -> None:
        if registry is None:
            registry = profiles
        self.registry = registry if registry is not None else ProfileRegistry()
        self.estimator = estimator if estimator is not None else TokenEstimator()
        self.static_ttl = static_ttl
        self.automatic = automatic
        self.document_tokens = document_tokens
        self.min_margin = min_margin
        self.remove_invalid = remove_invalid
        self.include_usage = include_usage
        self.threshold = threshold
        self.threshold_1h = threshold_1h
        self.learning = learning
        self.learner: LearningState = learner if learner is not None else MemoryLearner()
        self.probe_every = probe_every
        self.clock = clock
        self.render = render
        self._tickets = itertools.count(1)
        self._probes: dict[str, int] = {}
        self._min_cache: dict[tuple[str, str | None], int] = {}
        self._lock = threading.Lock()

    # -- public ----------------------------------------------------------------------

    def plan(self, *, api: str, host: str, path: str, body: bytes, scope: str = "") -> Plan:
        """Where to put markers in ``body``; never raises (a fault leaves the body alone).

        ``scope`` separates caches that the provider keeps apart (the engine passes the
        workspace label and a digest of the credential): prefixes and statistics of
        different scopes never mix.
        """
        profile_name = "unknown"
        try:
            profile = self.registry.match(host, path)
            profile_name = profile.name
            return self._plan(api, profile, body, host, scope)
        except Exception as exc:  # fail open: the original bytes go out
            return Plan(body=None, profile=profile_name, api=api, error="internal_error", fault=exc)

    def started(self, plan: Plan, status_code: int = 200) -> None:
        """The response to a planned request has started: what it marked is readable now.

        (Anthropic: a cache entry is available once the response that wrote it begins.)
        """
        ticket = plan.ticket
        if ticket is None or ticket.started or ticket.ended:
            return
        ticket.started = True
        if status_code < 400:
            self.learner.started(ticket.marked, ticket.id, self.clock())
        else:
            # A failed request (a 429 the SDK retries, a 5xx): a retry is not a reuse.
            self.learner.void(ticket.sighted, ticket.id)

    def finished(self, plan: Plan, usage: TokenUsage | None = None) -> None:
        """The exchange of a planned request is over (whatever its outcome): release its claims.

        ``usage`` (the billed usage, when known) corrects the belief that what it marked is
        cached: a request that marked prefixes but neither read nor wrote did not cache them.
        """
        ticket = plan.ticket
        if ticket is None or ticket.ended:
            return
        ticket.ended = True
        if not ticket.started:
            self.learner.void(ticket.sighted, ticket.id)
        if usage is None or not ticket.marked:
            return
        if usage.cache_read + usage.cache_write == 0:
            self.learner.not_cached(key for key, _ in ticket.marked)
        elif ticket.expected_read_raw > 0 and ticket.total_raw > 0 and usage.prompt_total > 0:
            expected = ticket.expected_read_raw * usage.prompt_total / ticket.total_raw
            if usage.cache_read < 0.8 * expected:
                # What it marked to read was not served: it is not cached after all (the
                # write it made instead is not trusted either: the provider does not keep them).
                self.learner.not_cached(key for key, _ in ticket.marked)

    def observe(self, plan: Plan, usage: TokenUsage | None) -> None:
        """Feedback after a successful response: the usage the provider billed, if it said.

        Calibrates the token estimator with the billed prompt total, tells the learner
        whether a read it expected happened (reliability), and learns the model's real
        minimum from marked prefixes that were neither written nor read.
        """
        if plan.error is not None or plan.api is None or usage is None:
            return
        raw = plan.raw_estimate
        total = usage.prompt_total
        if raw is not None and total > 0 and raw > 0:
            self.estimator.observe(raw, total, provider=plan.provider, family=plan.family)
        ticket = plan.ticket
        if ticket is None or not self.learning or total <= 0 or ticket.total_raw <= 0:
            return
        scale = total / ticket.total_raw  # raw estimates -> billed tokens, for this request
        if ticket.expected_read_raw > 0:
            expected = ticket.expected_read_raw * scale
            self.learner.feedback(ticket.family, 1, 1 if usage.cache_read >= 0.8 * expected else 0)
        if ticket.deepest_raw > 0:
            cached = usage.cache_read + usage.cache_write > 0
            if ticket.probe and cached:
                self.learner.lower_minimum(ticket.model_key)
            elif not cached:
                deepest = ticket.deepest_raw * scale
                if deepest >= self._minimum_now(plan.profile, plan.model, ticket.model_key):
                    self.learner.raise_minimum(ticket.model_key, deepest)

    # -- planning ----------------------------------------------------------------------

    def _plan(self, api: str, profile: Profile, body: bytes, host: str, scope: str) -> Plan:
        wants_usage = self.include_usage and api == "chat_completions"
        if not profile.supports_markers and not wants_usage:
            return Plan(
                body=None, profile=profile.name, api=api, provider=profile.provider, error="unsupported"
            )
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return Plan(body=None, profile=profile.name, api=api, provider=profile.provider, error="not_json")
        if not isinstance(obj, dict):
            return Plan(
                body=None, profile=profile.name, api=api, provider=profile.provider, error="invalid_shape"
            )
        model_obj = obj.get("model")
        model = model_obj if isinstance(model_obj, str) else None
        added_usage = wants_usage and _add_include_usage(obj)
        if not profile.supports_markers or not _api_fits(api, profile):
            return Plan(
                body=orjson.dumps(obj) if added_usage else None,
                profile=profile.name,
                model=model,
                added_include_usage=added_usage,
                api=api,
                provider=profile.provider,
                error=None if added_usage else "unsupported",
            )
        counter = self.estimator.prefix(model=model, provider=profile.provider)
        layout = walk_layout(
            api, obj, counter, markers_on_tools=profile.markers_on_tools, remove_invalid=self.remove_invalid
        )
        if layout is None:
            if added_usage:
                return Plan(
                    body=orjson.dumps(obj),
                    profile=profile.name,
                    model=model,
                    added_include_usage=True,
                    api=api,
                    provider=profile.provider,
                )
            return Plan(
                body=None,
                profile=profile.name,
                model=model,
                api=api,
                provider=profile.provider,
                error="invalid_shape",
            )
        placements, changed, ticket, advice = self._place(obj, profile, model, counter, layout, host, scope)
        ratio = counter.ratio
        static_raw = layout.positions[layout.first_message - 1][CUM] if layout.first_message else 0.0
        return new_plan(
            orjson.dumps(obj) if (changed or added_usage) and self.render else None,  # body
            placements,
            profile.name,
            model,
            added_usage,
            counter.raw,  # raw_estimate
            counter.estimate,
            counter.family,
            layout.first_turn,
            layout.assistants == 1,  # second_turn
            int(static_raw * ratio),  # static_tokens
            None,  # error
            api,
            profile.provider,
            ticket,
            layout,
            advice,
            None,  # fault
        )

    def _min_tokens(self, profile: Profile, model: str | None) -> int:
        """The documented minimum of a model under a profile."""
        key = (profile.name, model)
        found = self._min_cache.get(key)
        if found is None:
            found = profile.min_tokens_for(model)
            if len(self._min_cache) >= 4096:
                self._min_cache.clear()
            self._min_cache[key] = found
        return found

    def _minimum_now(self, profile_name: str, model: str | None, model_key: str) -> int:
        profile = self.registry.get(profile_name)
        return max(self._min_tokens(profile, model), self.learner.learned_minimum(model_key))

    def _probe(self, model_key: str) -> bool:
        """One plan in ``probe_every`` of a model with a learned minimum re-tests it."""
        with self._lock:
            n = self._probes.get(model_key, 0) + 1
            if len(self._probes) >= 4096:
                self._probes.clear()
            self._probes[model_key] = n
        return n % self.probe_every == 0

    def _place(
        self,
        obj: dict[str, Any],
        profile: Profile,
        model: str | None,
        counter: PrefixCounter,
        layout: Layout,
        host: str,
        scope: str,
    ) -> tuple[tuple[Placement, ...], bool, Ticket | None, Advice | None]:
        positions = layout.positions
        ratio = counter.ratio
        out: list[Placement] = [
            Placement(r.location, "removed_invalid", None, r.index, r.path, r.position, 0, "caller")
            for r in layout.removed
        ]
        changed = bool(layout.removed)

        # The caller's markers and the top-level one.
        caller: list[int] = []
        for i, pos in enumerate(positions):
            if pos[MARK] is not None:
                caller.append(i)
                out.append(_placement(pos, i, "kept", pos[MARK], "caller", ratio))
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
        budget = profile.slots - used
        ordered: list[tuple[float, str]] = (
            sorted([(float(i), positions[i][MARK] or "5m") for i in caller] + layout.nested)
            if caller or layout.nested
            else []
        )
        automatic: int | None = None  # the block the caller's top-level marker lands on
        if top_ttl is not None:
            # Automatic caching marks the last cacheable block: its TTL sits there, and no
            # marker of ours may go on that block (two TTLs on one block are a 400).
            automatic = _last_eligible(positions, 0, len(positions))
            ordered.append((float(len(positions) if automatic is None else automatic), top_ttl))

        # Candidates: (position, kind), in prompt order.
        roles = layout.roles
        fm = layout.first_message
        candidates: list[tuple[int, str]] = []
        static = _last_eligible(positions, 0, fm)
        if static is not None:
            candidates.append((static, "static"))
        last_user = _last_input(roles, len(roles))
        tail = _tail_position(positions, layout.spans, last_user, fm) if last_user is not None else None
        if tail is not None and last_user is not None:
            prev_user = _previous_input(roles, last_user)
            if prev_user is not None:
                prev = _tail_position(positions, layout.spans, prev_user, fm)
                if prev is not None and prev != tail:
                    candidates.append((prev, "previous_turn"))
            document = self._document(positions, fm, tail, ratio, profile.lookback)
            if document is not None:
                candidates.append((document, "document"))
            if top_ttl is None:
                candidates.append((tail, "tail_first" if layout.first_turn else "tail"))
        candidates.sort()

        # What the learner knows of each candidate prefix (and this request counts).
        model_key = f"{profile.name}\x00{model}"
        scope_tag = orjson.dumps([profile.name, host, model, scope])
        family = _h64(scope_tag + orjson.dumps([len(layout.tools or ()) or _count(positions, "tools"), fm]))
        # Ticket(id, family, model_key), total_raw set: its fields in order.
        ticket = new_ticket(
            next(self._tickets), family, model_key, [], [], [], 0.0, 0.0, counter.raw, False, False, False
        )
        for index in caller:
            ticket.deepest_raw = max(ticket.deepest_raw, positions[index][CUM])
            ttl_s = TTL_1H if positions[index][MARK] == "1h" else TTL_5M
            ticket.marked.append((_h64(scope_tag + layout.digests[index]), ttl_s))
        digests = layout.digests
        keys = [_h64(scope_tag + digests[i]) for i, _ in candidates]
        kinds = [kind for _, kind in candidates]
        # candidates, kinds, keys and sights (below) are parallel lists of one length: their
        # zips go without strict=True (a keyword argument costs zip() a second argument parse).
        sights: list[Sight] = []
        advice: Advice | None = None
        before: tuple[int, bytes | None, bool] | None = None
        if self.learning and candidates:
            # One question to the learner (one round trip to a shared one): the sightings,
            # the static region's stability, and the conversation when planning goes on.
            conversation = None
            if (
                layout.first_input_anchor is not None
                and budget > 0
                and not (ordered and _disordered(ordered))
            ):
                conversation = (
                    _h64(scope_tag + b"conversation" + layout.first_input_anchor),
                    layout.first_reply_anchor,
                )
            sights, stable, before = ask(
                self.learner,
                family,
                [new_sighting(key, kind, kind in _SHARED_KINDS) for key, kind in zip(keys, kinds)],  # noqa: B905
                self.clock,
                ticket.id,
                model_key=model_key,
                blocks=layout.block_digests,
                lines_for=lambda volatile: _lines(layout, volatile),
                conversation=conversation,
            )
            ticket.sighted = keys
            advice = self._advice(layout, stable, counter, profile, model)
        else:
            sights = [
                new_sight(key, kind, 1, False, False, False, 1.0, 0.0, False, 1.0)
                for key, kind in zip(keys, kinds)  # noqa: B905
            ]
        if len(sights) != len(candidates):
            raise ValueError("the learner answered for another number of prefixes than it was asked about")
        claimed = [
            s.key
            for s, kind in zip(sights, kinds)  # noqa: B905
            if kind in _SHARED_KINDS and not s.cached and not s.writing
        ]

        if budget <= 0 or (ordered and _disordered(ordered)) or not candidates:
            self._release_unused(ticket, claimed, set())
            return tuple(out), changed, (ticket if ticket.marked or ticket.sighted else None), advice

        documented = self._min_tokens(profile, model)
        learned = self.learner.learned_minimum(model_key) if self.learning else 0
        minimum = documented
        if learned > documented:
            minimum = learned
            if self._probe(model_key):
                minimum = documented
                ticket.probe = True
        threshold_tokens = minimum * (1.0 + self.min_margin)

        # A continued conversation seen before whose previous turn's prefix was never seen:
        # something before it changed since that turn (a timestamp at the top of the system
        # prompt, an edited message). Its own tail will not be found by the next turn either;
        # and if its static prefix changed since the conversation's last request, the static
        # prefix is the culprit: neither is worth writing. (A conversation not seen before,
        # such as the first request of a new process, is no evidence either way.)
        unstable = False
        if self.learning and layout.first_input_anchor is not None:
            static_key: int | None = None
            history_known = True
            for kind, sight in zip(kinds, sights):  # noqa: B905
                if kind == "static":
                    if static_key is None:
                        static_key = sight.key
                elif kind == "previous_turn" and not sight.known:
                    history_known = False
            if before is not None and not layout.first_turn:
                old_static, old_reply, steady = before
                # A conversation that never kept its prefix from one request to the next
                # (a one-time edit of a steady one is not this): its static prefix changed
                # again, or, surely the same conversation (same first reply), its previous
                # turn was never seen.
                if not steady:
                    unstable = old_static != (static_key if static_key is not None else -1) or (
                        old_reply == layout.first_reply_anchor and not history_known
                    )

        taken: set[int] = set(caller)
        if automatic is not None:
            taken.add(automatic)
        # Roles: "read" (believed cached), "write" (worth writing), None (only if free).
        entries: list[tuple[int, str, Sight, str | None]] = []
        for (index, kind), sight in zip(candidates, sights):  # noqa: B905
            if index in taken:
                continue
            taken.add(index)
            pos = positions[index]
            reason = "tail" if kind == "tail_first" else kind
            if not counter.reaches_at(pos[CUM], threshold_tokens):
                out.append(_placement(pos, index, "skipped_below_minimum", None, reason, ratio))
                continue
            if sight.cached:
                entries.append((index, kind, sight, "read"))
            elif sight.writing:
                out.append(_placement(pos, index, "skipped_in_flight", None, reason, ratio))
            elif kind == "previous_turn" or (
                unstable and (kind == "tail" or (kind == "static" and not sight.known))
            ):
                # A previous turn is marked to be read, never written (the tail covers it).
                entries.append((index, kind, sight, None))
            elif sight.p >= self.threshold or (
                sight.late and profile.honours_1h and sight.p_late >= self.threshold_1h
            ):
                entries.append((index, kind, sight, "write"))
            elif (
                sight.reliability < 1.0
                and sight.p >= self.threshold * sight.reliability
                and self._probe(f"reliability\x00{family}")
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
        wanted.sort(key=priority)
        chosen: list[tuple[int, str, Sight]] = []
        for index, kind, sight, _ in wanted:
            pos = positions[index]
            reason = "tail" if kind == "tail_first" else kind
            if len(chosen) >= budget:
                out.append(_placement(pos, index, "skipped_no_slot", None, reason, ratio))
                continue
            chosen.append((index, kind, sight))
        chosen_at = {index for index, _, _ in chosen}
        for index, kind, _, role in entries:
            if index not in chosen_at and role is None and index >= extent:
                reason = "tail" if kind == "tail_first" else kind
                out.append(_placement(positions[index], index, "skipped_not_reused", None, reason, ratio))
        if not chosen:
            self._release_unused(ticket, claimed, set())
            return tuple(out), changed, (ticket if ticket.marked or ticket.sighted else None), advice

        # TTLs, in prompt order: 1h markers must precede every 5m marker.
        chosen.sort()
        one_hour_upto = -1
        if profile.honours_1h and self.learning:
            for index, kind, sight in chosen:
                if kind in _SHARED_KINDS and sight.late and sight.p_late >= self.threshold_1h:
                    one_hour_upto = max(one_hour_upto, index)
        last_1h = -1.0
        first_5m = float(len(positions) + 1)
        if ordered:
            last_1h = max((at for at, ttl in ordered if ttl == "1h"), default=-1.0)
            first_5m = min((at for at, ttl in ordered if ttl == "5m"), default=first_5m)
        honours_1h = profile.honours_1h
        marked_keys: set[int] = set()
        key_at = {index: key for (index, _), key in zip(candidates, keys, strict=True)}
        for index, kind, sight in chosen:
            pos = positions[index]
            reason = "tail" if kind == "tail_first" else kind
            forced_1h = index < last_1h
            allowed_1h = index < first_5m and honours_1h
            if forced_1h and not allowed_1h:
                out.append(_placement(pos, index, "skipped_ttl_order", None, reason, ratio))
                continue
            ttl = (
                "1h"
                if forced_1h
                or (allowed_1h and (index <= one_hour_upto or (kind == "static" and self.static_ttl == "1h")))
                else "5m"
            )
            if ttl == "5m":
                first_5m = min(first_5m, float(index))
            key = key_at[index]
            marked_keys.add(key)
            ticket.marked.append((key, TTL_1H if ttl == "1h" else TTL_5M))
            ticket.deepest_raw = max(ticket.deepest_raw, pos[CUM])
            if sight.cached:
                ticket.expected_read_raw = max(ticket.expected_read_raw, pos[CUM])
            if (
                kind in ("tail", "tail_first")
                and profile.top_level_automatic
                and self.automatic != "never"
                and ttl == "5m"
                and index == len(positions) - 1
                and (self.automatic == "prefer" or isinstance(pos[CONT][pos[KEY]], str))
                and _last_is_cacheable(positions)
            ):
                obj["cache_control"] = dict(_EPHEMERAL)
                out.append(
                    new_placement(
                        "top_level", "inserted", "5m", (), "cache_control", -1, _tok(pos[CUM], ratio), reason
                    )
                )
                changed = True
                continue
            _insert(pos, ttl, profile)
            out.append(_placement(pos, index, "inserted", ttl, reason, ratio))
            changed = True
        self._release_unused(ticket, claimed, marked_keys)
        return tuple(out), changed, ticket, advice

    def _release_unused(self, ticket: Ticket, claimed: list[int], marked: set[int]) -> None:
        """Keep the claims this request writes; release the others at once."""
        unused = [key for key in claimed if key not in marked]
        ticket.claimed = [key for key in claimed if key in marked]
        if unused:
            self.learner.release(unused, ticket.id)

    def _advice(
        self,
        layout: Layout,
        stable: tuple[int | None, bool] | None,
        counter: PrefixCounter,
        profile: Profile,
        model: str | None,
    ) -> Advice | None:
        """Where a volatile block cuts the static prefix short, and what moving it would win."""
        blocks = layout.block_digests
        if not blocks or stable is None:
            return None
        volatile, rest_stable = stable
        if volatile is None:
            return None
        positions = layout.positions
        ratio = counter.ratio
        end = positions[len(blocks) - 1][CUM]
        before = positions[volatile - 1][CUM] if volatile > 0 else 0.0
        movable = end - positions[volatile][CUM]
        block = position_path(positions[volatile])
        if rest_stable:
            head = _first_line_raw(positions[volatile], self.estimator, counter.family)
            movable += max(0.0, positions[volatile][CUM] - before - head)
            block += ":first_line"
        tokens = int(movable * ratio)
        if tokens < self._min_tokens(profile, model):
            return None
        return Advice(block, layout.kind(volatile), tokens)

    def _document(
        self,
        positions: list[Pos],
        fm: int,
        tail: int,
        ratio: float,
        lookback: int,
    ) -> int | None:
        """The latest large eligible block in the lookback window before the tail."""
        document_tokens = self.document_tokens
        lo = max(fm, tail - lookback)
        for i in range(tail - 1, lo - 1, -1):
            pos = positions[i]
            if not pos[OK]:
                continue
            before = positions[i - 1][CUM] if i > 0 else 0.0
            if (pos[CUM] - before) * ratio >= document_tokens:
                return i
        return None


def _count(positions: list[Pos], location: str) -> int:
    n = 0
    for pos in positions:
        if pos[0] != location:
            break
        n += 1
    return n


def _lines(layout: Layout, volatile: Collection[int]) -> dict[int, tuple[bytes, bytes]]:
    """Digests of the first line and of the rest of the static blocks at ``volatile`` positions."""
    lines: dict[int, tuple[bytes, bytes]] = {}
    for i in volatile:
        if i < len(layout.block_digests):
            split = _line_split(layout.positions[i])
            if split is not None:
                lines[i] = split
    return lines


def _line_split(pos: Pos) -> tuple[bytes, bytes] | None:
    """Digests of a text block's first line and of the rest (None when it is not text)."""
    block = pos[CONT][pos[KEY]]
    if type(block) is list and len(block) == 1:
        block = block[0]
    text = block if type(block) is str else block.get("text") if type(block) is dict else None
    if type(text) is not str:
        return None
    head, newline, rest = text.partition("\n")
    if not newline or not rest.strip():
        return None  # one line: the block as a whole is what changes
    return (
        xxhash.xxh3_128_digest(head.encode("utf-8", "surrogatepass")),
        xxhash.xxh3_128_digest(rest.encode("utf-8", "surrogatepass")),
    )


def _first_line_raw(pos: Pos, estimator: TokenEstimator, family: str) -> float:
    block = pos[CONT][pos[KEY]]
    if type(block) is list and len(block) == 1:
        block = block[0]
    text = block if type(block) is str else block.get("text", "") if type(block) is dict else ""
    head = text.partition("\n")[0] if type(text) is str else ""
    return estimator.text(head, family=family)


def _tok(raw: float, ratio: float) -> int:
    return int(raw * ratio + 0.5)


def _placement(pos: Pos, index: int, action: str, ttl: str | None, reason: str, ratio: float) -> Placement:
    return new_placement(
        pos[0], action, ttl, pos[1], position_path(pos), index, _tok(pos[CUM], ratio), reason
    )


def _insert(pos: Pos, ttl: str, profile: Profile) -> None:
    marker: dict[str, str] = {"type": "ephemeral"}
    if ttl == "1h" and profile.honours_1h:
        marker["ttl"] = "1h"
    target = pos[CONT][pos[KEY]]
    if isinstance(target, str):
        # Minimal conversion: a one-block list where the marker must go.
        if profile.marker_format == "dashscope_native":
            pos[CONT][pos[KEY]] = [{"text": target, "cache_control": marker}]
        else:
            pos[CONT][pos[KEY]] = [{"type": "text", "text": target, "cache_control": marker}]
    else:
        target["cache_control"] = marker


def _last_is_cacheable(positions: list[Pos]) -> bool:
    return bool(positions) and positions[-1][OK]


_INPUT_ROLES = frozenset({"user", "tool", "function"})


def _last_input(roles: list[str], before: int) -> int | None:
    """The last message before ``before`` sent by the caller's side (user or tool results)."""
    for i in range(before - 1, -1, -1):
        if roles[i] in _INPUT_ROLES:
            return i
    return None


def _previous_input(roles: list[str], last: int) -> int | None:
    """The last input message of the previous turn: before the assistant turn preceding ``last``."""
    for i in range(last - 1, -1, -1):
        if roles[i] == "assistant":
            return _last_input(roles, i)
    return None


def _last_eligible(positions: list[Pos], lo: int, hi: int) -> int | None:
    for i in range(hi - 1, lo - 1, -1):
        pos = positions[i]
        if pos[OK] or pos[MARK] is not None:
            return i
    return None


def _tail_position(positions: list[Pos], spans: dict[int, tuple[int, int]], msg: int, fm: int) -> int | None:
    """The last eligible position at or before the end of message ``msg`` (the tail rule)."""
    span = spans.get(msg)
    end = span[1] if span is not None else None
    if end is None:
        # The message has no positions: take the last position of the closest earlier message.
        end = fm
        for m in range(msg - 1, -1, -1):
            s = spans.get(m)
            if s is not None:
                end = s[1]
                break
    for i in range(end - 1, fm - 1, -1):
        if positions[i][OK] or positions[i][MARK] is not None:
            return i
    return None


def _disordered(ordered: list[tuple[float, str]]) -> bool:
    """Whether a ``1h`` marker comes after a ``5m`` one (the caller's own mistake: add nothing)."""
    seen_5m = False
    for _, ttl in ordered:
        if ttl == "5m":
            seen_5m = True
        elif seen_5m:
            return True
    return False


def _api_fits(api: str, profile: Profile) -> bool:
    fmt = profile.marker_format
    if fmt == "anthropic":
        return api == "messages"
    if fmt == "openai_content_part":
        return api == "chat_completions"
    if fmt == "dashscope_native":
        return api == "dashscope_generation"
    return False


def _add_include_usage(obj: dict[str, Any]) -> bool:
    if obj.get("stream") is not True:
        return False
    options = obj.get("stream_options")
    if options is None:
        obj["stream_options"] = {"include_usage": True}
        return True
    if isinstance(options, dict) and "include_usage" not in options:
        options["include_usage"] = True
        return True
    return False
