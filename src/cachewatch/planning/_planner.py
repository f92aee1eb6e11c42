"""The breakpoint planner: request body in, ``cache_control`` placements out. Sans-IO.

Data flow: request -> **planner** -> transport -> stream observer -> usage record -> sinks
-> ``Planner.started`` / ``finished`` / ``observe`` (feedback).

:meth:`Planner.plan` parses the body once, lays it out once (``_walk``: positions in
tools -> system -> messages order with their prefix digests), asks the learner
(``_learning``) what it knows of each candidate prefix, decides, inserts the markers
and serialises once; when it adds nothing it returns ``body=None`` and the original
bytes go out untouched. It never raises: a fault yields ``Plan(body=None, error="internal_error", fault=exc)``.

The candidates are chosen by ``_candidates``, the decision is ``_policy``'s, the body is
rewritten by ``_rewrite``, and ``_advice`` reports a block that keeps the prompt from
caching. The planner owns the request's parse and render, the learner's feedback and
the minimums.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Literal

import orjson

from ..accounting._records import TokenUsage
from ._budget import OneHourBudget
from ._layout import CUM
from ._learning import LearningState
from ._learning_memory import MemoryLearner
from ._plan import Placement, Plan, new_plan
from ._policy import place
from ._profiles import Profile, ProfileRegistry
from ._rewrite import add_include_usage
from ._tokens import TokenEstimator
from ._walk import walk as walk_layout

__all__ = ["Placement", "Plan", "Planner"]


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
            Negative by default (-0.25, the estimate's uncertainty): a marker on a prefix
            below the model's minimum costs nothing (the provider neither writes nor
            bills it), one left off a prefix that reaches it costs its reads, so a prefix
            that plausibly reaches the minimum is marked. On an endpoint with an implicit
            cache (``Profile.implicit_cache``), which a marked request gives up, it is at
            least the estimate's measured miss (``TokenEstimator.error``): only what is
            surely over the minimum is marked.
        remove_invalid: remove the caller's markers the provider would reject.
        include_usage: add ``stream_options.include_usage`` to chat-completions streams
            that lack it (the response side hides the extra usage-only chunk).
        threshold: P(read within TTL) a 5m write must reach: 0.25 / 1.15, where writing a
            prefix whenever it is sighted uncached starts to cost less than never writing it
            (0.25 premium; a read instead of the write its next use makes saves 1.15x). A
            conversation whose prompt keeps changing uses the one-step bar, this x 1.15 / 0.9.
        threshold_1h: for a shared prefix that came back 5-60 minutes later, P(it comes back
            within the hour again) a 1h write must reach where the request would not write it
            otherwise and it does not come back within 5 minutes (1.0 premium: about two
            reads, p/(1-p) > 1.1); the bar's odds shrink with its 5m estimate, and a 1h
            write instead of a 5m one the request makes anyway has its own bar (0.75
            premium / 1.15 saving; ``_policy._bets_1h``).
        learning: learn from traffic (``False``: every candidate that reaches the minimum
            is written, a fixed policy).
        learner: the learned state (default: a new :class:`MemoryLearner`; a shared one
            lets a fleet of processes learn together).
        probe_every: one plan in this many re-tests a learned minimum.
        clock: wall clock in seconds, for cache TTLs (default ``time.time``; inject one to
            replay a workload on a simulated clock).
        profiles: alias of ``registry``, for callers (the transports) whose ``registry``
            keyword already means a Prometheus registry.
        budget_1h: 1h bets are paid from what they saved plus this share of the bill
            (``_budget``): on any traffic they cost at most this share of the bill more
            than placing none. ``None``: no budget (the estimate alone decides).
        render: serialise the planned body (``False``: ``Plan.body`` stays None and only the
            decisions are made; the shadow estimate, which never sends them, plans so). The
            decisions are the same either way: a body that cannot be re-serialised without
            changing one of its numbers is ``lossy_json`` (sent unchanged) in both.

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
        min_margin: float = -0.25,
        remove_invalid: bool = True,
        include_usage: bool = False,
        threshold: float = 0.25 / 1.15,
        threshold_1h: float = 0.53,
        learning: bool = True,
        learner: LearningState | None = None,
        probe_every: int = 64,
        clock: Callable[[], float] = time.time,
        profiles: ProfileRegistry | None = None,
        render: bool = True,
        budget_1h: float | None = 0.005,
    ) -> None:
        if static_ttl not in ("5m", "1h"):
            raise ValueError(f"static_ttl must be '5m' or '1h', not {static_ttl!r}")
        if automatic not in ("auto", "never", "prefer"):
            raise ValueError(f"automatic must be 'auto', 'never' or 'prefer', not {automatic!r}")
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
        #: The budget of 1h bets (None: bets wherever the estimates say).
        self.budget = OneHourBudget(budget_1h) if budget_1h is not None else None
        #: Ticket ids, one per planned request.
        self.tickets = itertools.count(1)
        self._probes: dict[str | tuple[str, int], int] = {}
        #: (profile, host, model, scope, has tools, system positions) -> the digests that bind a
        #: request to them (``_policy._scope_of``).
        self.scopes: dict[
            tuple[str, str, str | None, str, int, int], tuple[str, bytes, int, bytes, int, int]
        ] = {}
        self._min_cache: dict[tuple[str, str | None], int] = {}
        #: family -> its first static position that keeps changing, as the learner said at
        #: the family's last request (``_candidates``: a second static prefix ends before it).
        self.volatile_at: dict[int, int] = {}
        #: family -> how many of its requests' static regions the learner compared (a hedge
        #: ends a static prefix before the region's last block until a few were).
        self.static_seen: dict[int, int] = {}
        #: family, and static region's prefix key -> the moving average of what its planned
        #: requests would save per request left unmarked, on an endpoint with an implicit
        #: cache (``_policy._implicit_pays``).
        self.implicit_gain: dict[int, float] = {}
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
            implicit = ticket.implicit_keys
            if implicit:  # sent unmarked: the implicit cache holds its prefixes now
                self.learner.started(
                    ticket.marked + [(key, 0.0) for key in ticket.released],
                    ticket.id,
                    self.clock(),
                    implicit,
                )
            elif ticket.released:  # sighted, not marked: those sightings end (TTL 0)
                self.learner.started(
                    ticket.marked + [(key, 0.0) for key in ticket.released], ticket.id, self.clock()
                )
            elif ticket.marked:  # nothing marked: nothing became readable
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
            # A read expected of a prefix under the minimum (marked on the estimate's
            # margin, ``min_margin``) is no evidence: the provider caches nothing there.
            if not _read_served(
                usage.cache_read, ticket.expected_read_raw, expected
            ) and self._reaches_minimum(
                plan, ticket.model_key, _prefix_size(ticket.expected_read_raw, expected)
            ):
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
            if plan.precise_estimate is not None:
                self.estimator.observe_precise(
                    plan.precise_estimate, total, provider=plan.provider, family=plan.family
                )
        ticket = plan.ticket
        if ticket is None or not self.learning or total <= 0 or ticket.total_raw <= 0:
            return
        if self.budget is not None:
            self.budget.billed(
                usage.input
                + 1.25 * usage.cache_write_5m
                + 2.0 * usage.cache_write_1h
                + 0.1 * usage.cache_read
            )
        scale = total / ticket.total_raw  # raw estimates -> billed tokens, for this request
        if ticket.implicit_read_raw > 0:
            expected = ticket.implicit_read_raw * scale
            # Over the explicit minimum it is over the implicit one on either page (256 or
            # 1,024 tokens): the cache could have served it.
            if self._reaches_minimum(
                plan, ticket.model_key, _prefix_size(ticket.implicit_read_raw, expected)
            ):
                self.learner.implicit_read(
                    ticket.model_key, _read_served(usage.cache_read, ticket.implicit_read_raw, expected)
                )
        if ticket.expected_read_raw > 0:
            expected = ticket.expected_read_raw * scale
            # Only a read the provider could serve measures its reliability: a prefix
            # under the minimum is never cached, whatever the family's provider does.
            if self._reaches_minimum(
                plan, ticket.model_key, _prefix_size(ticket.expected_read_raw, expected)
            ):
                served = _read_served(usage.cache_read, ticket.expected_read_raw, expected)
                self.learner.feedback(ticket.family, 1, 1 if served else 0)
        if ticket.deepest_raw > 0:
            # The provider's deepest cached position this request: what it read plus
            # what it wrote after that.
            cached_tokens = usage.cache_read + usage.cache_write
            # Its shallowest: the prefix it read (an entry of that length exists), else
            # the deepest it wrote.
            shallowest = usage.cache_read if usage.cache_read > 0 else cached_tokens
            if ticket.probe and 0 < shallowest < ticket.probed_minimum:
                # A prefix under the learned minimum was cached: the minimum came down.
                # (A deeper marker's prefix, above it, says nothing about the minimum;
                # a read under it does, whatever was written after it.)
                self.learner.lower_minimum(ticket.model_key)
            elif cached_tokens <= 0:
                deepest = _prefix_size(ticket.deepest_raw, ticket.deepest_raw * scale)
                if deepest >= self._minimum_now(plan.profile, plan.model, ticket.model_key):
                    self.learner.raise_minimum(ticket.model_key, deepest)

    def implicit_hit_rate(self, model_key: str) -> float:
        """The chance that an implicit cache serves a prefix it should hold, for a (profile,
        model) key: 1 until bills say otherwise.

        DashScope's implicit cache is best effort ("hits not guaranteed"). An unmarked
        request expects the deepest prefix another unmarked request sent within the TTL
        to be read (``Ticket.implicit_read_raw``); each such bill counts once in the learned
        state (``LearningState.implicit_read``: forgotten as the recurrences are, shared by
        a fleet), and the rate is (served + 1) / (expected + 1).
        """
        return self.learner.implicit_hit_rate(model_key)

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
        if model is not None and (len(model) > _MAX_MODEL_CHARS or not model.isprintable()):
            # No model is named so: the name would key the learned state and the caches
            # (a megabyte per distinct name), so such a request is left as it is.
            return Plan(
                body=None, profile=profile.name, api=api, provider=profile.provider, error="invalid_shape"
            )
        top = obj.get("cache_control")
        if top is not None and type(top) is not dict and profile.marker_format == "anthropic":
            # A top-level cache_control that is no marker object ("ephemeral", false): the
            # caller's, which the provider judges; nothing is planned around it.
            return Plan(
                body=None, profile=profile.name, model=model, api=api, provider=profile.provider,
                error="invalid_shape",
            )  # fmt: skip
        added_usage = wants_usage and add_include_usage(obj)
        if not profile.supports_markers or not _api_fits(api, profile) or not profile.explicit_for(model):
            rendered = _render(obj, body) if added_usage else None
            if added_usage and rendered is None:
                return _lossy(profile, model, api)
            return Plan(
                body=rendered,
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
                rendered = _render(obj, body)
                if rendered is None:
                    return _lossy(profile, model, api)
                return Plan(
                    body=rendered,
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
        placements, changed, ticket, advice = place(self, obj, profile, model, counter, layout, host, scope)
        out: bytes | None = None
        # Without rendering (the shadow), a body whose render would be lossy is still found
        # lossy, so that the decision is auto's: it sends such a body unchanged. Only an
        # integer of 19 digits or more can be lossy: rendered then, and only then.
        if (changed or added_usage) and (self.render or _LONG_DIGITS.search(body) is not None):
            try:
                out = _render(obj, body)
            except BaseException:
                # (orjson's nesting limit applies to the whole body, not to each block.)
                # What it placed never goes out: its claims end with this fault, or the
                # next requests would leave its prefixes unmarked for CLAIM_TIMEOUT.
                if ticket is not None:
                    self.finished(Plan(body=None, ticket=ticket))
                raise
            if out is None:
                if ticket is not None:  # what it placed never goes out: its claims end
                    self.finished(Plan(body=None, ticket=ticket))
                return _lossy(profile, model, api)
            if not self.render:
                out = None
        ratio = counter.ratio
        static_raw = layout.positions[layout.first_message - 1][CUM] if layout.first_message else 0.0
        return new_plan(
            out,  # body
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
            counter.precise_sample(),  # precise_estimate
            obj.get("stream") is True,  # stream
        )

    def min_tokens(self, profile: Profile, model: str | None) -> int:
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
        return max(self.min_tokens(profile, model), self.learner.learned_minimum(model_key))

    def _reaches_minimum(self, plan: Plan, model_key: str, tokens: float) -> bool:
        """Whether a prefix of ``tokens`` (billed) reaches the model's minimum as now known."""
        return tokens >= self._minimum_now(plan.profile, plan.model, model_key)

    def probe(self, key: str | tuple[str, int]) -> bool:
        """One plan in ``probe_every`` re-tests a model's learned minimum (``key``: its model key),
        or a family's reliability (``("reliability", family)``)."""
        with self._lock:
            n = self._probes.get(key, 0) + 1
            if len(self._probes) >= 4096:
                self._probes.clear()
            self._probes[key] = n
        return n % self.probe_every == 0


#: The longest model name planned (the Prometheus label's cap is 128 characters).
_MAX_MODEL_CHARS: Final = 256


def _api_fits(api: str, profile: Profile) -> bool:
    fmt = profile.marker_format
    if fmt == "anthropic":
        return api == "messages"
    if fmt == "openai_content_part":
        return api == "chat_completions"
    if fmt == "dashscope_native":
        return api == "dashscope_generation"
    return False


def _render(obj: Any, raw: bytes) -> bytes | None:
    """``obj`` serialised, or None where that would change one of the caller's numbers.

    orjson reads an integer outside the 64-bit range (``123456789012345678901234567890``
    in a tool input or a schema) as the nearest float, which it writes back as
    ``1.2345678901234568e+29``: a different number of another type. Such a float
    (magnitude 9.2e18 and up) always serialises with an exponent ``e+``, so a body whose
    output has no ``+`` at all (a ``memchr``; prose rarely has one) is fine; otherwise its
    parsed values are looked through for a float that large, and only then the original
    is read again, exactly, for an integer orjson could not hold.
    """
    out = orjson.dumps(obj)
    if out.find(b"+") == -1 or not _has_wide_float(obj):
        return out
    return None if _wide_integer(raw) else out


def _has_wide_float(obj: Any) -> bool:
    """Whether a float of magnitude 2**63 or more is among the values of ``obj``."""
    stack = [obj]
    pop = stack.pop
    extend = stack.extend
    while stack:
        value = pop()
        kind = type(value)
        if kind is dict:
            extend(value.values())
        elif kind is list:
            extend(value)
        elif kind is float and not -_WIDE < value < _WIDE:
            return True
    return False


_WIDE: Final = float(2**63)


#: A run of 19 digits: the shortest an integer outside [-2**63, 2**64) can be written with.
_LONG_DIGITS: Final = re.compile(rb"[0-9]{19}")


def _wide_integer(raw: bytes) -> bool:
    """Whether the JSON ``raw`` holds an integer outside [-2**63, 2**64) (True if unreadable)."""
    wide = False

    def parse_int(text: str) -> int:
        nonlocal wide
        value = int(text)
        if not -(2**63) <= value < 2**64:
            wide = True
        return value

    try:
        json.loads(raw, parse_int=parse_int)
    except ValueError:
        return True
    return wide


def _lossy(profile: Profile, model: str | None, api: str) -> Plan:
    return Plan(
        body=None, profile=profile.name, model=model, api=api, provider=profile.provider, error="lossy_json"
    )


def _prefix_size(raw: float, scaled: float) -> float:
    """A marked prefix's size, as far as it is known to reach a minimum: ``scaled`` is its
    raw estimate times the whole prompt's billed/raw ratio, which is not the prefix's (see
    :func:`_read_served`), so it is never scaled up, only down. A prefix taken for larger
    than it is would raise a learned minimum (or lower a reliability) on a miss of one the
    provider never caches; one taken for smaller only leaves those as they are."""
    return scaled if scaled < raw else raw


def _read_served(read: int, expected_raw: float, expected: float) -> bool:
    """Whether the provider read the prefix a request expected to read.

    ``expected`` is the prefix's raw estimate scaled by the whole prompt's billed/raw
    ratio. That ratio is the prompt's, not the prefix's: a prose system prompt followed
    by code, whose punctuation the cheap estimate undercounts, gets a ratio well above 1
    that the prose does not share, and its read, served in full, would look short. So
    the estimate is never scaled up for this comparison, only down: a read short of 80%
    of both is one the provider did not serve (a shallower entry, or none).
    """
    return read >= 0.8 * min(expected, expected_raw)
