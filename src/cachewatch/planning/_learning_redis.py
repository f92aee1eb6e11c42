"""The planner's learned state in Redis, shared by a fleet of processes.

Place in the flow: planner -> **RedisLearner** (one Lua script per planning decision,
one round trip, atomic across processes) -> Redis; on any fault -> a local
:class:`MemoryLearner`.

:class:`RedisLearner` implements :class:`~cachewatch.planning._learning.LearningState`
with the semantics of :class:`MemoryLearner` (``tests/test_learning_state.py`` runs the
same cases against both, and replays random call sequences through both): the same
ledger of prefix sightings, recurrence counts per (family, kind, run) with forgetting,
the pool across families, reliability, learned minimums, static-region stability,
conversation records and in-flight write claims. The Lua is in
``_learning_redis_scripts``: one script that runs a batch of ops atomically, so a sight
checks and claims a shared prefix atomically: of several
processes planning the same cold prefix at once, one writes it and the others see it in
flight. A claim carries the time it was made and is ignored after ``CLAIM_TIMEOUT``
(120 s), so a process that dies mid-request blocks nobody. Tickets are made unique
across processes (pid and a random instance tag).

Round trips. :meth:`~RedisLearner.decide` (the planner's
:func:`~cachewatch.planning._decision.ask`) sends the sightings, the static region's
stability, the conversation and a read of the learned minimum as one batch: a planning
decision is one round trip. (Two things take a second: the volatile positions, as the
stability lines are sent for the positions this process last saw volatile, and when
another process changed them meanwhile the batch says so and the lines of the current
ones follow; and a switch of model, after which the planner sights where the
conversation's last request to that model ended, which the decision's answer names.)
Every other call is one round trip when it happens: the claims a plan does not use
(:meth:`~RedisLearner.release`: they become sightings, so that a concurrent request is no
recurrence), the response's start (:meth:`~RedisLearner.started`, so that other processes
read what it wrote from then on, and its sightings end),
and what the provider billed (:meth:`~RedisLearner.feedback`, and rarely
:meth:`~RedisLearner.not_cached`, :meth:`~RedisLearner.void` or a learned minimum). Every
call waits for its reply, so what it changed is there for every process when it returns.

Layout (every key under ``key_prefix``; keys are 64-bit digests in decimal, values
are counts, times and digests, never content):

* ``p:<prefix key>``: a hash per sighted prefix (last sighting, run, family, kind, TTL,
  believed-cached-until, late count, claims, ...; for a static prefix, ``a:<kind>``: the
  tails first sighted under it, settled; for such a tail, that prefix and its TTL's end),
  expiring ``max_age`` (1h 5min) after its last sighting: the ledger is bounded by the
  traffic of the last hour.
* ``open`` / ``opens``, ``anchored``: first-run opportunities, and tails first sighted
  under a static prefix, until their TTL runs out (at most ``OPEN_MAX`` each).
* ``f:<family>``: a hash per family: recurrence counts ``<kind>:<run bucket>``,
  reliability and the stability state (msgpack). ``fams`` (a sorted set by last use) caps
  the families at ``max_families``, the least recently used dropped first; each family
  also expires ``family_ttl`` (7 days) after its last use.
* ``pool``: the counts pooled over every family (at most 13 kinds, tails' size classes included, x 4 buckets).
* ``c:<conversation key>``: a conversation's last request, and where its last request to
  each of a few other models ended, expiring with ``max_age``.
* ``min`` / ``minv``: learned minimums per (profile, model) and a version that changes with
  them; the version rides on every sight, so :meth:`~RedisLearner.learned_minimum` is
  read from a local copy (refreshed by each decision) and costs no round trip.

Prefix and conversation ages are judged on the planner's clock (``now``), like
:class:`MemoryLearner` with ``max_age``; Redis expiry only collects what that already
forgets. Every process sharing the state must use the same wall clock. The script builds
its key names from ``key_prefix``: use a single Redis (or a key prefix with a hash tag,
``{cw}:learn:``, on a cluster).

Failing open: every call has a socket timeout (``timeout``, 50 ms). A fault (Redis down,
slow, a script error) is reported to ``on_fault("learner", exc)`` (the engine's
``cachewatch_internal_errors_total{stage="learner"}``), and that call, and every call
for ``retry_after`` seconds after it (doubling while faults go on, up to 30 s), is
answered by a local :class:`MemoryLearner`: the planner keeps planning, learning from
this process's traffic alone, and never sees an exception (``_learning_redis_link``).
What ends a claim (a release, a response's start, a failed request) and was answered
locally is sent to Redis ahead of the next call that reaches it, so a claim made there
before the fault ends there too, not ``CLAIM_TIMEOUT`` later.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from ._decision import Answers, ConversationQuery, LinesFor, ask_in_turn
from ._learning import TAIL_PRIORS, TTL_1H, Sight, Sighting, min_tier_above
from ._learning_memory import MemoryLearner
from ._learning_redis_link import RedisLink, client_from_url, client_with_timeout
from ._learning_redis_scripts import SCRIPT, op

__all__ = ["RedisLearner"]

#: How long a family's statistics are kept after its last use (seconds).
FAMILY_TTL: Final = 7 * 86_400
#: A prefix or conversation not seen for this long is forgotten (the 1h TTL plus a margin).
MAX_AGE: Final = TTL_1H + 300.0
_NO_CHECK: Final = -1


def _f(value: float) -> str:
    return repr(float(value))


class RedisLearner(RedisLink):
    """The learned state of :class:`MemoryLearner`, in Redis, for a fleet of processes.

    Args:
        client: a ``redis.Redis`` client (sync), whose server and credentials are used
            through a pool of the learner's own; or None with ``url``.
        url: a Redis URL, used when ``client`` is None.
        key_prefix: namespace of every key.
        timeout: socket (and connect) timeout in seconds, without retries: every call is
            on a request's path.
        on_fault: called as ``on_fault("learner", exc)`` for each fault survived.
        retry_after: after a fault, Redis is left alone this long (doubling while faults
            go on, at most 30 s); the local fallback answers meanwhile.
        forget / prior / max_families: as :class:`MemoryLearner`.
        max_age: a prefix or conversation not seen for this long is forgotten (and expires).
        family_ttl: a family's statistics expire this long after their last use.

    Example::

        learner = RedisLearner(url="redis://127.0.0.1:6379/0")
        client = cachewatch.wrap(anthropic.Anthropic(), learner=learner)

    (``cachewatch.wrap(client, store=RedisStore(url=...))`` does this for you, and counts
    its faults.)
    """

    def __init__(
        self,
        client: Any | None = None,
        *,
        url: str | None = None,
        key_prefix: str = "cachewatch:learn:",
        timeout: float = 0.05,
        on_fault: Callable[[str, BaseException], object] | None = None,
        retry_after: float = 1.0,
        forget: float = 0.85,
        prior: tuple[float, float] = (1.0 / 3.0, 2.0 / 3.0),
        max_families: int = 4_096,
        max_age: float = MAX_AGE,
        family_ttl: float = FAMILY_TTL,
    ) -> None:
        if client is None:
            client = client_from_url(url or "redis://127.0.0.1:6379/0", timeout)
        else:
            client = client_with_timeout(client, timeout)
        super().__init__(
            client, key_prefix=key_prefix, script=SCRIPT, on_fault=on_fault, retry_after=retry_after
        )
        self.forget = forget
        self.prior = prior
        #: Per-kind priors of run 1 (as :class:`MemoryLearner`).
        self.priors: dict[str, tuple[float, float]] = dict(TAIL_PRIORS)
        self.max_families = max_families
        self.max_age = max_age
        self.family_ttl = family_ttl
        #: Answers while Redis is unreachable.
        self.fallback = MemoryLearner(forget=forget, prior=prior, max_families=max_families, max_age=max_age)
        self.fallback.priors = self.priors
        self._tag = os.urandom(4).hex()
        #: Learned minimums read from Redis, valid while the version is ``_min_version``.
        self._minimums: dict[str, int] = {}
        self._min_version = ""
        #: family -> static positions that changed last time (from the last sight/stability).
        self._volatile: dict[int, set[int]] = {}
        #: (profile, model) key -> its implicit hit counts as Redis last said (every decision
        #: that reads the learned minimum brings them).
        self._implicit_hits: dict[str, tuple[float, float]] = {}

    def _ticket(self, ticket: int) -> str:
        # Unique across the fleet: planners number their requests from 1 in every process.
        return f"{os.getpid()}.{self._tag}.{ticket}"

    # -- a planning decision: one round trip --------------------------------------------

    def _sight_op(
        self, family: int, sightings: Sequence[Sighting], now: float, ticket: int
    ) -> list[list[object]]:
        args: list[object] = [
            str(family),
            _f(now),
            self._ticket(ticket),
            _f(self.forget),
            _f(self.max_age),
            self.max_families,
            max(1, int(self.family_ttl)),
            max(1, int(self.max_age) + 60),
        ]
        for s in sightings:
            a, b = self.priors.get(s.kind, self.prior)
            args += [str(s.key), s.kind, "1" if s.shared else "0", _f(a), _f(b)]
        return op("sight", *args)

    def _sights(self, family: int, sightings: Sequence[Sighting], raw: list[Any]) -> list[Sight]:
        reliability = float(raw[0])
        self._seen_version(raw[1])
        self._remember_volatile(family, raw[2])
        return [
            Sight(
                s.key,
                s.kind,
                int(r[0]),
                r[1] == 1,
                r[2] == 1,
                r[3] == 1,
                float(r[4]),
                float(r[5]),
                r[6] == 1,
                reliability,
                r[7] == 1,
                r[8] == 1,
            )
            for s, r in zip(sightings, raw[3:], strict=True)
        ]

    def _stability_op(
        self,
        family: int,
        blocks: Sequence[bytes],
        lines: dict[int, tuple[bytes, bytes]],
        asked: Sequence[int] | None,
    ) -> list[list[object]]:
        args: list[object] = [
            str(family),
            _f(self.forget),
            self.max_families,
            max(1, int(self.family_ttl)),
            len(blocks),
            *blocks,
            len(lines),
        ]
        for i, (head, rest) in lines.items():
            args += [i, head, rest]
        if asked is None:
            args.append(_NO_CHECK)
        else:
            args += [len(asked), *asked]
        return op("stability", *args)

    def _stable(self, family: int, raw: list[Any]) -> tuple[int | None, bool, bool] | None:
        """(first volatile, rest stable, reordered); None when the lines were sent for stale
        positions."""
        first, rest_stable, volatile, stale, reordered = raw
        self._remember_volatile(family, volatile)
        if stale == 1:
            return None
        return (None if first < 0 else int(first)), rest_stable == 1, reordered == 1

    def _conversation_op(
        self,
        key: int,
        static: int | str | None,
        reply: bytes | None,
        known: bool | str,
        now: float,
        model: int,
        tail: int,
        family: int,
        tail_class: str = "",
    ) -> list[list[object]]:
        return op(
            "conversation",
            str(key),
            str(static if static is not None else -1),
            "0" if reply is None else "1",
            reply or b"",
            known if isinstance(known, str) else ("1" if known else "0"),
            _f(now),
            _f(self.max_age),
            max(1, int(self.max_age) + 60),
            str(model),
            tail,
            str(family),
            _f(self.forget),
            max(1, int(self.family_ttl)),
            self.max_families,
            tail_class,
        )

    @staticmethod
    def _before(
        raw: list[Any], blobs: list[bytes], now: float
    ) -> tuple[tuple[int, bytes | None, bool, float, float] | None, int]:
        """The conversation op's reply: (earlier tail, then the previous request if any)."""
        earlier = int(raw[0])
        if len(raw) == 1 or now - float(raw[3]) > TTL_1H:
            return None, earlier
        reply = bytes(blobs[raw[2] - 1]) if raw[2] else None
        return (int(raw[1]), reply, raw[4] == "1", float(raw[5]), float(raw[6])), earlier

    def decide(
        self,
        family: int,
        sightings: Sequence[Sighting],
        clock: Callable[[], float],
        ticket: int,
        *,
        model_key: str | None = None,
        blocks: Sequence[bytes] = (),
        lines_for: LinesFor | None = None,
        conversation: ConversationQuery | None = None,
    ) -> Answers:
        """:func:`~cachewatch.planning._decision.ask_in_turn` in one round trip (the learned
        minimum of ``model_key`` comes with it)."""

        def lines_at(positions: Iterable[int]) -> dict[int, tuple[bytes, bytes]]:
            return lines_for(sorted(positions)) if lines_for is not None else {}

        def call() -> Answers:
            ops = self._sight_op(family, sightings, clock(), ticket)
            asked: list[int] = []
            if blocks:
                asked = sorted(i for i in self._volatile.get(family, ()) if i < len(blocks))
                ops += self._stability_op(family, blocks, lines_at(asked), asked)
            now = 0.0
            if conversation is not None:
                now = clock()
                key, reply, model, tail, changes, tail_class = conversation
                ops += self._conversation_op(key, "=", reply, "=", now, model, tail, changes, tail_class)
            if model_key is not None:
                ops += op("minimum", model_key, "")
            replies, blobs = self._eval_blobs(ops)
            raw = iter(replies)
            sights = self._sights(family, sightings, next(raw))
            stable: tuple[int | None, bool, bool] | None = None
            if blocks:
                stable = self._stable(family, next(raw))
                if stable is None:  # another process changed the volatile positions meanwhile
                    stable = self.stability(family, blocks, lines_at(self._volatile.get(family, ())))
            before: tuple[int, bytes | None, bool, float, float] | None = None
            earlier = -1
            if conversation is not None:
                before, earlier = self._before(next(raw), blobs, now)
            if model_key is not None:
                self._minimum_seen(model_key, next(raw))
            return sights, stable, before, earlier

        return self._run(
            call,
            lambda: ask_in_turn(
                self.fallback,
                family,
                sightings,
                clock,
                ticket,
                blocks=blocks,
                lines_for=lines_for or (lambda positions: {}),
                conversation=conversation,
            ),
        )

    # -- LearningState ----------------------------------------------------------------

    def sight(self, family: int, sightings: Sequence[Sighting], now: float, ticket: int) -> list[Sight]:
        """As :meth:`MemoryLearner.sight`: one round trip, atomic across the fleet."""
        return self._run(
            lambda: self._sights(
                family, sightings, self._eval(self._sight_op(family, sightings, now, ticket))[0]
            ),
            lambda: self.fallback.sight(family, sightings, now, ticket),
        )

    def stability(
        self, family: int, blocks: Sequence[bytes], lines: dict[int, tuple[bytes, bytes]]
    ) -> tuple[int | None, bool, bool]:
        def call() -> tuple[int | None, bool, bool]:
            stable = self._stable(family, self._eval(self._stability_op(family, blocks, lines, None))[0])
            assert stable is not None  # nothing to be stale against
            return stable

        return self._run(call, lambda: self.fallback.stability(family, blocks, lines))

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
        def call() -> tuple[tuple[int, bytes | None, bool, float, float] | None, int]:
            replies, blobs = self._eval_blobs(
                self._conversation_op(key, static, reply, history_known, now, model, tail, family, tail_class)
            )
            return self._before(replies[0], blobs, now)

        return self._run(
            call,
            lambda: self.fallback.conversation(
                key, static, reply, history_known, now, model, tail, family, tail_class
            ),
        )

    def release(self, keys: Iterable[int], ticket: int) -> None:
        keys = list(keys)
        if keys:
            self._tell(
                op("release", self._ticket(ticket), *map(str, keys)),
                lambda: self.fallback.release(keys, ticket),
                owed=True,
            )

    def void(self, keys: Iterable[int], ticket: int) -> None:
        keys = list(keys)
        if keys:
            self._tell(
                op("void", self._ticket(ticket), max(1, int(self.family_ttl)), *map(str, keys)),
                lambda: self.fallback.void(keys, ticket),
                owed=True,
            )

    def started(
        self, keys: Iterable[tuple[int, float]], ticket: int, now: float, implicit: Sequence[int] = ()
    ) -> None:
        pairs = list(keys)
        ops: list[list[object]] = []
        if implicit:
            # First, as MemoryLearner.started: the implicit cache holds them from now on.
            ops += op("implicit", _f(now), *map(str, implicit))
        if pairs:
            args: list[object] = [self._ticket(ticket), _f(now)]
            for key, ttl in pairs:
                args += [str(key), _f(ttl)]
            ops += op("started", *args)
        if ops:
            self._tell(ops, lambda: self.fallback.started(pairs, ticket, now, implicit), owed=True)

    def not_cached(self, keys: Iterable[int]) -> None:
        keys = list(keys)
        if keys:
            self._tell(op("not_cached", *map(str, keys)), lambda: self.fallback.not_cached(keys))

    def feedback(self, family: int, expected: int, confirmed: int) -> None:
        if expected <= 0:
            return
        self._tell(
            op(
                "feedback",
                str(family),
                expected,
                confirmed,
                _f(self.forget),
                self.max_families,
                max(1, int(self.family_ttl)),
            ),
            lambda: self.fallback.feedback(family, expected, confirmed),
        )

    # -- learned minimums: a local copy, checked against the version each sight brings --

    def _seen_version(self, version: str) -> None:
        if version != self._min_version:
            with self._lock:
                self._minimums = {}
                self._min_version = version

    def _minimum_seen(self, model_key: str, raw: list[Any]) -> int:
        value, before, after, hits = raw
        self._hits_seen(model_key, hits)
        with self._lock:
            if before != self._min_version:
                self._minimums = {}
            if len(self._minimums) >= 4_096:
                self._minimums.clear()
            self._minimums[model_key] = int(value)
            self._min_version = after
        return int(value)

    def _hits_seen(self, model_key: str, raw: str) -> None:
        with self._lock:
            hits = self._implicit_hits
            if len(hits) >= 4_096 and model_key not in hits:
                hits.clear()
            if raw:
                expected, served = raw.split(" ")
                hits[model_key] = (float(expected), float(served))
            else:
                hits.pop(model_key, None)

    def implicit_read(self, model_key: str, served: bool) -> None:
        self._run(
            lambda: self._hits_seen(
                model_key,
                self._eval(op("implicit_read", model_key, "1" if served else "0", _f(self.forget)))[0],
            ),
            lambda: self.fallback.implicit_read(model_key, served),
        )

    def implicit_hit_rate(self, model_key: str) -> float:
        """As :meth:`MemoryLearner.implicit_hit_rate`, from the counts the last decision or
        read brought (read from Redis when there are none yet)."""
        if model_key not in self._implicit_hits and model_key not in self._minimums:
            self._run(
                lambda: self._minimum_seen(model_key, self._eval(op("minimum", model_key, ""))[0]),
                lambda: self.fallback.learned_minimum(model_key),
            )
        found = self._implicit_hits.get(model_key)
        if found is None:
            return self.fallback.implicit_hit_rate(model_key) if self._down else 1.0
        expected, served = found
        return (served + 1.0) / (expected + 1.0)

    def learned_minimum(self, model_key: str) -> int:
        found = self._minimums.get(model_key)
        if found is not None:
            return found
        return self._run(
            lambda: self._minimum_seen(model_key, self._eval(op("minimum", model_key, ""))[0]),
            lambda: self.fallback.learned_minimum(model_key),
        )

    def _change_minimum(self, model_key: str, tier: str) -> int:
        return self._minimum_seen(model_key, self._eval(op("minimum", model_key, tier))[0])

    def raise_minimum(self, model_key: str, tokens: float) -> None:
        tier = str(min_tier_above(tokens))
        self._run(
            lambda: self._change_minimum(model_key, tier),
            lambda: self.fallback.raise_minimum(model_key, tokens),
        )

    def lower_minimum(self, model_key: str) -> None:
        self._run(
            lambda: self._change_minimum(model_key, "-"), lambda: self.fallback.lower_minimum(model_key)
        )

    # -- stability --------------------------------------------------------------------

    def _remember_volatile(self, family: int, positions: Sequence[int]) -> None:
        with self._lock:
            if len(self._volatile) >= self.max_families:
                self._volatile.clear()
            self._volatile[family] = {int(i) for i in positions}

    def volatile_candidates(self, family: int) -> set[int]:
        """Static positions that changed on their last observation (as of this process's last call)."""
        found = self._volatile.get(family)
        if found is not None:
            return set(found)
        if self._down:
            return self.fallback.volatile_candidates(family)
        return set()

    # -- introspection (tests, maintenance) ---------------------------------------------

    def recurrence(self, family: int, kind: str, run: int, now: float) -> float:
        """The current estimate of P(recurs within TTL) for a bucket (reliability excluded)."""
        a, b = self.priors.get(kind, self.prior)
        raw = self._eval(op("peek", str(family), kind, run, _f(a), _f(b)))[0]
        return float(raw[0])

    def reliability(self, family: int) -> float:
        a, b = self.prior
        raw = self._eval(op("peek", str(family), "static", 1, _f(a), _f(b)))[0]
        return float(raw[1])

    def claims(self) -> int:
        """How many in-flight write claims are held (live or not yet collected)."""
        total = 0
        for name in self.client.scan_iter(match=self.prefix + "p:*", count=1_000):
            w = self.client.hget(name, "w")
            if w:
                total += w.count(b"=")
        return total

    def clear(self) -> None:
        """Delete every key under the prefix, and the local copies (tests, maintenance)."""
        names = list(self.client.scan_iter(match=self.prefix + "*", count=1_000))
        if names:
            self.client.delete(*names)
        with self._lock:
            self._minimums = {}
            self._min_version = ""
            self._volatile = {}
            self._implicit_hits = {}
