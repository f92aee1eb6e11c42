"""The breakpoint planner: request body in, ``cache_control`` placements out. Pure, sans-IO.

Data flow: request -> **planner** -> transport -> stream observer -> usage record -> sinks
-> ``Planner.observe`` (calibration and policy feedback).

:meth:`Planner.plan` parses the body once, walks its blocks once in tools -> system ->
messages order (the provider's render order), chooses where markers pay off and
serialises once; when it adds nothing it returns ``body=None`` and the original bytes
go out untouched. It never raises: a fault yields ``Plan(body=None, error=...)``.

Placement policy (research A.1-A.6, B.2, E):

* **Conversation tail** (``tail``): the last eligible block of the last user message, so
  the next turn (or the next agent-loop iteration) reads everything up to it.
* **Static prefix** (``static``): the last eligible tools/system block, so every request
  with the same tools and system prompt reads them, whatever the conversation.
* **Previous turn** (``previous_turn``): the block the previous turn's tail marker was on
  (the same rule applied to the conversation cut after the previous user message), when
  it lies ``lookback`` (20) positions or more before the tail, so the lookback still finds
  the previous write. Earlier markers thus stay where they were: turn N+1 marks the
  position turn N wrote.
* **Shared document** (``document``): the latest large block before the tail (a document
  asked about repeatedly, with varying questions after it).
* A marker is placed only where the estimated prefix reaches the model's minimum. Under
  Anthropic's billing only the last breakpoint's position sets the write cost (writes are
  ``C - A``), so intermediate markers are free and only consume slots.
* Slots: the profile's maximum minus reserved relay slots, the caller's markers and a
  top-level ``cache_control``. Priority: tail, static, previous turn, document (static
  first on a first-turn request). Extra candidates are reported as ``skipped_no_slot``.
* TTLs: ``5m`` by default; ``static_ttl="1h"`` on profiles that honour it. Every ``1h``
  marker precedes every ``5m`` one; a marker that would break that order is skipped
  (``skipped_ttl_order``).
* Top-level automatic mode (Anthropic first-party): used for the tail when the tail is the
  last block of the request and its content is a plain string, so the body changes by one
  top-level key instead of a string-to-list conversion.
* The caller's markers are kept and counted. Markers the provider would reject (on
  ``thinking``/``redacted_thinking`` or empty text, on a string, non-dict ``cache_control``)
  are removed (``removed_invalid``) unless ``remove_invalid=False``: on a strict endpoint
  they would fail the request with a 400, and on a lenient one they do nothing.
  Markers nested inside sub-content (``tool_result``/``search_result`` ``content``, a
  document's ``source.content``) are kept and counted.
* Learning (online, from what the provider reports; deterministic for a given history):

  - ``observe`` calibrates the token estimator with the billed prompt total.
  - Continuation: per profile and model, P(a first turn is continued), estimated as
    exponentially forgotten counts (a window of about 50) of second turns over first
    turns, with a Beta(1, 2) prior. Every successful response counts, with or without
    usage. Below ``continuation_threshold`` (0.28; a tail write costs 0.25x extra, a read
    saves 0.9x), first-turn tail markers stop: one-shot traffic pays for one speculative
    write.
  - In flight: a first-turn request whose static prefix (tools + system) another request
    is writing, and whose response has not started, sends no static marker
    (``skipped_in_flight``): it could not read that write (an entry is readable once the
    response that wrote it starts), and writing it again costs 1.25x where unmarked input
    costs 1x. Its own tail or document markers follow the usual rules. Once the writer's
    response starts (:meth:`Planner.started`) the prefix is believed readable for its TTL
    and siblings mark it again, to read it; a request that marked it but neither read nor
    wrote (:meth:`Planner.finished`) ends that belief. Before a model has any feedback,
    one first-turn tail probe is in flight at a time. First turns are placed one at a
    time (check, then claim), so concurrent siblings cannot both write.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from ..accounting._records import TokenUsage, slot_factory
from ._layout import CONT as _CONT
from ._layout import CUM as _CUM
from ._layout import KEY as _KEY
from ._layout import MARK as _MARK
from ._layout import OK as _OK
from ._layout import Layout, Location, position_path
from ._layout import Pos as _Pos
from ._layout import walk as walk_layout
from ._profiles import Profile, ProfileRegistry
from ._tokens import PrefixCounter, TokenEstimator

__all__ = ["Placement", "Plan", "Planner"]

_EPHEMERAL: dict[str, str] = {"type": "ephemeral"}
_INF: Final = float("inf")


@dataclass(frozen=True, slots=True)
class Placement:
    """One decision about one marker position.

    ``action`` is one of ``inserted``, ``kept`` (the caller's own), ``skipped_below_minimum``,
    ``skipped_no_slot``, ``skipped_ttl_order``, ``skipped_in_flight``, ``removed_invalid``.
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
    #: ``internal_error:<ExceptionType>``; None otherwise.
    error: str | None = None
    api: str | None = None
    provider: str = "other"
    #: The planner's in-flight bookkeeping for this request (see :meth:`Planner.started`).
    ticket: _Ticket | None = field(default=None, repr=False, compare=False)
    #: The request's layout (positions and prefix digests), for the miss diagnosis to reuse
    #: instead of walking the body again; None when the plan has an error.
    layout: Layout | None = field(default=None, repr=False, compare=False)

    @property
    def inserted(self) -> tuple[Placement, ...]:
        return tuple(p for p in self.placements if p.action == "inserted")


# The hot path builds one Plan and a few Placements per request, positionally, without
# the frozen ``__init__``'s cost (see ``_models.slot_factory``).
_new_placement: Final[
    Callable[[Location, str, str | None, tuple[int, ...], str, int, int, str], Placement]
] = slot_factory(Placement)
_new_plan: Final[Callable[..., Plan]] = slot_factory(Plan)


#: Per-request forgetting of the continuation counts (an effective window of ~50 requests).
_FORGET: Final = 0.98


@dataclass(slots=True)
class _Stats:
    #: Exponentially forgotten counts (a window of about 50 such requests): second turns
    #: (the first continuation of a conversation) and first turns.
    continued: float = 0.0
    seen: float = 0.0

    @property
    def continuation(self) -> float:
        """P(a first turn is continued): second turns over first turns, Beta(1, 2) prior.

        That is the probability the break-even threshold is about (a first-turn tail
        write pays off if a second turn reads it); the share of continued requests
        would count every later turn of a long chat. The prior: a first request is more
        often one-shot than not; one one-shot request brings it to 0.25, under the 0.28
        threshold, so unrelated prompts pay for one speculative tail write, not two
        (Beta(1, 1)) or thirteen (a moving average).
        """
        return min(1.0, (self.continued + 1.0) / (self.seen + 3.0))


_TTL_5M: Final = 300.0
_TTL_1H: Final = 3_600.0

#: A claim older than this is ignored (a request whose response never started or ended).
_CLAIM_TIMEOUT: Final = 120.0
#: Bounds on the in-flight and readable-prefix tables.
_MAX_KEYS: Final = 4096


@dataclass(slots=True, eq=False)
class _Ticket:
    """One planned request's claims on the planner's shared state.

    Released when the response starts (the write is readable from then on) or ends.
    """

    #: When the claims were made (the planner's clock).
    at: float
    #: Static-prefix key this request writes first (its siblings hold back until it starts).
    writes: int | None = None
    #: Static-prefix key this request reads and so refreshes.
    refreshes: int | None = None
    #: Seconds the static marker's entry lives (300 or 3,600).
    ttl: float = 300.0
    #: (profile, model) when this request is that family's evidence-free tail probe.
    probe: tuple[str, str] | None = None
    started: bool = False
    ended: bool = False


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
        continuation_threshold: below this rate of continued conversations, first-turn
            tail markers stop (a tail write pays 0.25x, a read saves 0.9x).
        learning: enable the adaptive policy fed by :meth:`started` and :meth:`observe`.
        clock: wall clock in seconds, for cache TTLs (default ``time.time``; inject one to
            replay a workload on a simulated clock).
        profiles: alias of ``registry``, for callers (the transports) whose ``registry``
            keyword already means a Prometheus registry.

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
        continuation_threshold: float = 0.28,
        learning: bool = True,
        clock: Callable[[], float] = time.time,
        profiles: ProfileRegistry | None = None,
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
        self.continuation_threshold = continuation_threshold
        self.learning = learning
        self.clock = clock
        self._stats: dict[tuple[str, str], _Stats] = {}
        #: Static-prefix key -> requests writing it whose responses have not started.
        self._writers: dict[int, list[_Ticket]] = {}
        #: Static-prefix key -> until when its cache entry is believed readable.
        self._readable: dict[int, float] = {}
        #: Shared-prefix key -> (last use, uses that came 5-60 minutes after the previous).
        self._uses: dict[int, tuple[float, int]] = {}
        #: (profile, model) -> its in-flight evidence-free first-turn tail probes.
        self._probes: dict[tuple[str, str], list[_Ticket]] = {}
        self._min_cache: dict[tuple[str, str | None], int] = {}
        self._lock = threading.Lock()
        #: Held while a first-turn request is placed (see _plan); taken before ``_lock``.
        self._first_turns = threading.Lock()

    # -- public ----------------------------------------------------------------------

    def plan(self, *, api: str, host: str, path: str, body: bytes) -> Plan:
        """Where to put markers in ``body``; never raises (a fault leaves the body alone)."""
        profile_name = "unknown"
        try:
            profile = self.registry.match(host, path)
            profile_name = profile.name
            return self._plan(api, profile, body, host)
        except Exception as exc:  # fail open: the original bytes go out
            return Plan(
                body=None, profile=profile_name, api=api, error=f"internal_error:{type(exc).__name__}"
            )

    def observe(self, plan: Plan, usage: TokenUsage | None) -> None:
        """Feedback after a successful response: the usage the provider billed, if it said.

        Updates the continuation statistic (per profile and model, from the request's
        shape: first and second turns) and, with ``usage``, calibrates the token
        estimator with the billed prompt total.
        """
        if plan.error is not None or plan.api is None:
            return
        if self.learning and plan.model is not None and (plan.first_turn or plan.second_turn):
            key = (plan.profile, plan.model)
            with self._lock:
                stats = self._stats.get(key)
                if stats is None:
                    if len(self._stats) >= 1024:
                        self._stats.clear()
                    stats = self._stats[key] = _Stats()
                stats.continued = stats.continued * _FORGET + (1.0 if plan.second_turn else 0.0)
                stats.seen = stats.seen * _FORGET + (1.0 if plan.first_turn else 0.0)
        if usage is None:
            return
        raw = plan.raw_estimate
        if raw is None:
            return
        total = usage.prompt_total
        if total > 0 and raw > 0:
            self.estimator.observe(raw, total, provider=plan.provider, family=plan.family)

    def started(self, plan: Plan, status_code: int = 200) -> None:
        """The response to a planned request has started: what it wrote is readable now.

        (Anthropic: a cache entry is available once the response that wrote it begins.)
        Requests with the same static prefix planned from now on mark it again and read it.
        """
        ticket = plan.ticket
        if ticket is None or ticket.started or ticket.ended:
            return
        now = self.clock()
        with self._lock:
            ticket.started = True
            key = ticket.writes if ticket.writes is not None else ticket.refreshes
            if ticket.writes is not None:
                _unclaim(self._writers, ticket.writes, ticket)
            if key is not None and status_code < 400:
                if len(self._readable) >= _MAX_KEYS:
                    self._readable = {k: t for k, t in self._readable.items() if t > now}
                    if len(self._readable) >= _MAX_KEYS:
                        self._readable.clear()
                self._readable[key] = now + ticket.ttl

    def finished(self, plan: Plan, usage: TokenUsage | None = None) -> None:
        """The exchange of a planned request is over (whatever its outcome): release its claims.

        ``usage`` (the billed usage, when known) corrects the belief that its static prefix
        is cached: a request that marked it but neither read nor wrote anything did not
        cache it.
        """
        ticket = plan.ticket
        if ticket is None or ticket.ended:
            return
        with self._lock:
            ticket.ended = True
            if ticket.writes is not None and not ticket.started:
                _unclaim(self._writers, ticket.writes, ticket)
            if ticket.probe is not None:
                _unclaim(self._probes, ticket.probe, ticket)
            key = ticket.writes if ticket.writes is not None else ticket.refreshes
            if key is not None and usage is not None and usage.cache_read + usage.cache_write == 0:
                self._readable.pop(key, None)

    def continuation_rate(self, profile: str, model: str) -> float:
        """The learnt rate of continued conversations (1.0, i.e. no suppression, before any feedback)."""
        stats = self._stats.get((profile, model))
        return 1.0 if stats is None else stats.continuation

    # -- planning ----------------------------------------------------------------------

    def _plan(self, api: str, profile: Profile, body: bytes, host: str = "") -> Plan:
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
        walk = walk_layout(
            api, obj, counter, markers_on_tools=profile.markers_on_tools, remove_invalid=self.remove_invalid
        )
        if walk is None:
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
        if walk.first_turn and self.learning:
            # First turns check the in-flight claims, then claim: one at a time, so two
            # concurrent siblings cannot both see no writer and both write.
            with self._first_turns:
                placements, changed, ticket = self._place(obj, profile, model, counter, walk, host)
        else:
            placements, changed, ticket = self._place(obj, profile, model, counter, walk, host)
        ratio = counter.ratio
        static_raw = walk.positions[walk.first_message - 1][_CUM] if walk.first_message else 0.0
        return _new_plan(
            orjson.dumps(obj) if (changed or added_usage) else None,  # body
            placements,
            profile.name,
            model,
            added_usage,
            counter.raw,  # raw_estimate
            counter.estimate,
            counter.family,
            walk.first_turn,
            walk.assistants == 1,  # second_turn
            int(static_raw * ratio),  # static_tokens
            None,  # error
            api,
            profile.provider,
            ticket,
            walk,  # layout
        )

    def _min_tokens(self, profile: Profile, model: str | None) -> int:
        key = (profile.name, model)
        found = self._min_cache.get(key)
        if found is None:
            found = profile.min_tokens_for(model)
            if len(self._min_cache) >= 4096:
                self._min_cache.clear()
            self._min_cache[key] = found
        return found

    def _place(
        self,
        obj: dict[str, Any],
        profile: Profile,
        model: str | None,
        counter: PrefixCounter,
        walk: Layout,
        host: str,
    ) -> tuple[tuple[Placement, ...], bool, _Ticket | None]:
        positions = walk.positions
        ratio = counter.ratio
        out: list[Placement] = [
            Placement(r.location, "removed_invalid", None, r.index, r.path, r.position, 0, "caller")
            for r in walk.removed
        ]
        changed = bool(walk.removed)

        # The caller's markers and the top-level one.
        caller: list[int] = []
        for i, pos in enumerate(positions):
            if pos[_MARK] is not None:
                caller.append(i)
                out.append(_placement(pos, i, "kept", pos[_MARK], "caller", ratio))
        top = obj.get("cache_control")
        top_ttl: str | None = None
        if isinstance(top, dict):
            top_ttl = "1h" if top.get("ttl") == "1h" else "5m"
            out.append(
                Placement(
                    "top_level", "kept", top_ttl, (), "cache_control", -1, int(counter.raw * ratio), "caller"
                )
            )
        used = len(caller) + len(walk.nested) + (1 if top_ttl else 0)
        budget = profile.slots - used
        ordered: list[tuple[float, str]] = (
            sorted([(float(i), positions[i][_MARK] or "5m") for i in caller] + walk.nested)
            if caller or walk.nested
            else []
        )
        automatic: int | None = None  # the block the caller's top-level marker lands on
        if top_ttl is not None:
            # Automatic caching marks the last cacheable block: its TTL sits there, and no
            # marker of ours may go on that block (two TTLs on one block are a 400).
            automatic = _last_eligible(positions, 0, len(positions))
            ordered.append((float(len(positions) if automatic is None else automatic), top_ttl))
        if budget <= 0 or (ordered and _disordered(ordered)):
            return tuple(out), changed, None

        minimum = self._min_tokens(profile, model)
        threshold = minimum * (1.0 + self.min_margin)
        roles = walk.roles
        fm = walk.first_message

        # Candidates: (position, reason).
        candidates: list[tuple[int, str]] = []
        last_user = _last_input(roles, len(roles))
        tail = _tail_position(positions, walk.spans, last_user, fm) if last_user is not None else None
        static = _last_eligible(positions, 0, fm)
        suppress_tail = (
            walk.first_turn
            and self.learning
            and model is not None
            and self.continuation_rate(profile.name, model) < self.continuation_threshold
        )
        # In-flight awareness (first-turn requests only; a continued conversation writes its
        # own tail whatever its siblings do): a sibling of a request that is writing the same
        # static prefix, whose response has not started, cannot read that write; writing it
        # again costs 1.25x where sending it unmarked costs 1x. And while a model has no
        # feedback yet, one speculative first-turn tail write is in flight at a time.
        sibling = False
        probe_blocked = False
        static_key: int | None = None
        readable = False
        probe_key: tuple[str, str] | None = None
        now = 0.0
        scope: tuple[object, ...] | None = None  # computed on first use (it may dump tools)
        if walk.first_turn and self.learning:
            now = self.clock()
            if static is not None and counter.reaches_at(positions[static][_CUM], threshold):
                scope = _scope(profile, walk, host)
                static_key = _static_key(scope, model, walk, fm)
                with self._lock:
                    readable = self._readable.get(static_key, 0.0) > now
                    sibling = not readable and _claimed(self._writers.get(static_key), now)
            if model is not None and not suppress_tail and (profile.name, model) not in self._stats:
                probe_key = (profile.name, model)
                with self._lock:
                    probe_blocked = _claimed(self._probes.get(probe_key), now)
        tail_candidate: list[tuple[int, str]] = []
        if tail is not None and top_ttl is None and not suppress_tail:
            tail_candidate.append((tail, "tail"))
        static_candidate = [(static, "static")] if static is not None else []
        if walk.first_turn:
            candidates += static_candidate + tail_candidate
        else:
            candidates += tail_candidate + static_candidate
        if tail is not None and last_user is not None:
            prev_user = _previous_input(roles, last_user)
            if prev_user is not None:
                prev = _tail_position(positions, walk.spans, prev_user, fm)
                if prev is not None and prev != tail and tail - prev >= profile.lookback:
                    candidates.append((prev, "previous_turn"))
            document = self._document(positions, fm, tail, ratio, profile.lookback)
            if document is not None:
                candidates.append((document, "document"))

        # Gaps against the TTL: a shared prefix (static, or through a document) that came
        # back after its 5-minute entry had expired, but within the hour, is marked 1h from
        # then on (with every marker before it): one more such gap repays the 1h premium.
        one_hour_upto = -1
        if walk.first_turn and self.learning and profile.honours_1h and not sibling:
            for index, reason in candidates:
                if reason == "static":
                    key = static_key
                elif reason == "document":
                    scope = scope or _scope(profile, walk, host)
                    key = _static_key(scope, model, walk, index + 1)
                else:
                    continue
                if key is not None and self._came_back_late(key, now):
                    one_hour_upto = max(one_hour_upto, index)

        chosen: list[tuple[int, str]] = []
        seen: set[int] = set(caller)
        if automatic is not None:
            seen.add(automatic)
        for index, reason in candidates:
            if index in seen:
                continue
            seen.add(index)
            pos = positions[index]
            # In flight: only the static marker is held back (its write is the sibling's);
            # a tail or document marker is this request's own, judged by the usual rules.
            if (sibling and reason == "static") or (probe_blocked and reason == "tail"):
                out.append(_placement(pos, index, "skipped_in_flight", None, reason, ratio))
                continue
            if not counter.reaches_at(pos[_CUM], threshold):
                out.append(_placement(pos, index, "skipped_below_minimum", None, reason, ratio))
                continue
            if len(chosen) >= budget:
                out.append(_placement(pos, index, "skipped_no_slot", None, reason, ratio))
                continue
            chosen.append((index, reason))

        if not chosen:
            return tuple(out), changed, None

        # TTLs, in prompt order: 1h markers must precede every 5m marker.
        chosen.sort()
        last_1h = -1.0
        first_5m = float(len(positions) + 1)
        if ordered:
            last_1h = max((at for at, ttl in ordered if ttl == "1h"), default=-1.0)
            first_5m = min((at for at, ttl in ordered if ttl == "5m"), default=first_5m)
        honours_1h = profile.honours_1h
        covers_static = False  # a marker at or after the static prefix's end was inserted
        static_1h = False
        tail_inserted = False
        for index, reason in chosen:
            pos = positions[index]
            forced_1h = index < last_1h
            allowed_1h = index < first_5m and honours_1h
            if forced_1h and not allowed_1h:
                out.append(_placement(pos, index, "skipped_ttl_order", None, reason, ratio))
                continue
            ttl = (
                "1h"
                if forced_1h
                or (
                    allowed_1h
                    and (index <= one_hour_upto or (reason == "static" and self.static_ttl == "1h"))
                )
                else "5m"
            )
            if ttl == "5m":
                first_5m = min(first_5m, float(index))
            if static is not None and index >= static:
                covers_static = True
                static_1h = static_1h or (index == static and ttl == "1h")
            tail_inserted = tail_inserted or reason == "tail"
            if (
                reason == "tail"
                and profile.top_level_automatic
                and self.automatic != "never"
                and ttl == "5m"
                and index == len(positions) - 1
                and (self.automatic == "prefer" or isinstance(pos[_CONT][pos[_KEY]], str))
                and _last_is_cacheable(positions)
            ):
                obj["cache_control"] = dict(_EPHEMERAL)
                out.append(
                    _new_placement(
                        "top_level",
                        "inserted",
                        "5m",
                        (),
                        "cache_control",
                        -1,
                        _tok(pos[_CUM], ratio),
                        reason,
                    )
                )
                changed = True
                continue
            _insert(pos, ttl, profile)
            out.append(_placement(pos, index, "inserted", ttl, reason, ratio))
            changed = True
        return (
            tuple(out),
            changed,
            self._claim(
                now, static_key, readable, covers_static, static_1h, probe_key if tail_inserted else None
            ),
        )

    def _came_back_late(self, key: int, now: float) -> bool:
        """Record a use of the prefix ``key``; whether it ever came back 5-60 minutes after its last use."""
        with self._lock:
            last, late = self._uses.get(key, (None, 0))
            if last is not None and _TTL_5M < now - last <= _TTL_1H:
                late += 1
            if len(self._uses) >= _MAX_KEYS and key not in self._uses:
                self._uses.clear()
            self._uses[key] = (now, late)
        return late > 0

    def _claim(
        self,
        now: float,
        static_key: int | None,
        readable: bool,
        covers_static: bool,
        static_1h: bool,
        probe_key: tuple[str, str] | None,
    ) -> _Ticket | None:
        """The ticket of a first-turn request that writes (or refreshes) shared state."""
        if (static_key is None or not covers_static) and probe_key is None:
            return None
        ticket = _Ticket(now, ttl=_TTL_1H if static_1h else _TTL_5M)
        with self._lock:
            if static_key is not None and covers_static:
                if readable:
                    ticket.refreshes = static_key
                else:
                    ticket.writes = static_key
                    _claim(self._writers, static_key, ticket)
            if probe_key is not None:
                ticket.probe = probe_key
                _claim(self._probes, probe_key, ticket)
        return ticket

    def _document(
        self,
        positions: list[_Pos],
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
            if not pos[_OK]:
                continue
            before = positions[i - 1][_CUM] if i > 0 else 0.0
            if (pos[_CUM] - before) * ratio >= document_tokens:
                return i
        return None


def _unclaim(table: dict[Any, list[_Ticket]], key: Any, ticket: _Ticket) -> None:
    claims = table.get(key)
    if claims is None:
        return
    try:
        claims.remove(ticket)
    except ValueError:
        return
    if not claims:
        del table[key]


def _claim(table: dict[Any, list[_Ticket]], key: Any, ticket: _Ticket) -> None:
    claims = table.get(key)
    if claims is None:
        if len(table) >= _MAX_KEYS:
            table.clear()
        claims = table[key] = []
    claims.append(ticket)


def _claimed(claims: list[_Ticket] | None, now: float) -> bool:
    """Whether a live claim is among ``claims`` (stale ones are dropped on the way)."""
    if not claims:
        return False
    live = [t for t in claims if now - t.at < _CLAIM_TIMEOUT]
    if len(live) != len(claims):
        claims[:] = live
    return bool(live)


def _scope(profile: Profile, walk: Layout, host: str) -> tuple[object, ...]:
    """What besides the blocks identifies a cache: profile and host (the digests hold the rest)."""
    return (profile.name, host)


def _static_key(scope: object, model: str | None, walk: Layout, end: int) -> int:
    """Identity of the prefix of positions ``0..end-1`` for one model (markers ignored)."""
    return hash((scope, model, walk.digest_before(end)))


def _tok(raw: float, ratio: float) -> int:
    return int(raw * ratio + 0.5)


def _placement(pos: _Pos, index: int, action: str, ttl: str | None, reason: str, ratio: float) -> Placement:
    return _new_placement(
        pos[0], action, ttl, pos[1], position_path(pos), index, _tok(pos[_CUM], ratio), reason
    )


def _insert(pos: _Pos, ttl: str, profile: Profile) -> None:
    marker: dict[str, str] = {"type": "ephemeral"}
    if ttl == "1h" and profile.honours_1h:
        marker["ttl"] = "1h"
    target = pos[_CONT][pos[_KEY]]
    if isinstance(target, str):
        # Minimal conversion: a one-block list where the marker must go.
        if profile.marker_format == "dashscope_native":
            pos[_CONT][pos[_KEY]] = [{"text": target, "cache_control": marker}]
        else:
            pos[_CONT][pos[_KEY]] = [{"type": "text", "text": target, "cache_control": marker}]
    else:
        target["cache_control"] = marker


def _last_is_cacheable(positions: list[_Pos]) -> bool:
    return bool(positions) and positions[-1][_OK]


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


def _last_eligible(positions: list[_Pos], lo: int, hi: int) -> int | None:
    for i in range(hi - 1, lo - 1, -1):
        pos = positions[i]
        if pos[_OK] or pos[_MARK] is not None:
            return i
    return None


def _tail_position(positions: list[_Pos], spans: dict[int, tuple[int, int]], msg: int, fm: int) -> int | None:
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
        if positions[i][_OK] or positions[i][_MARK] is not None:
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
