"""Cache-miss diagnosis: why a request read less than its prefix allowed. Sans-IO.

Place in the flow: request -> planner -> transport -> stream observer -> usage record
-> **diagnosis** (at the end of the body, before the sinks) -> sinks.

Each diagnosed request (one that carries a marker) gets its fingerprints
(``_fingerprints``: from the planner's layout, or a walk of the body at the end) and
is compared with the store (``_store``): entries written by earlier requests at its
own positions, and the anchors of its predecessors. Token estimates per position are
rescaled per request so the whole prompt equals what the provider billed.

Verdicts (``after``): the closed set :data:`MISS_REASONS`. Given the entries found at
the request's own positions (written before it was sent), the position the read most
likely came from is the candidate whose token estimate is closest to
``usage.cache_read``; any *deeper* candidate explains a miss, in this order:

* ``evicted``: live, readable and within the lookback of a breakpoint, yet not read;
* ``write_in_flight``: its writing response had not started when this request was sent
  (tracked for requests still in flight in this process, and by ``readable_at``);
* ``ttl_expired``: its TTL (from the start of the last request that wrote or read it)
  had run out;
* ``lookback_exceeded``: live, but more than ``lookback`` (20) positions before every
  breakpoint of this request.

Otherwise the anchors: the previous request of the same conversation used another
model (``model_changed``), or its prefix differs from this one at a position within
what it had cached (``prefix_changed_tools`` / ``_system`` / ``_messages``, naming the
first changed position: index and kind), or it expired (``ttl_expired``). A marked,
repeated prefix for which the provider reported no read and no write is
``below_minimum``. ``provider_reported`` wins when the provider gave a reason
(Anthropic cache diagnostics, except ``previous_message_not_found``/``unavailable``).

Wasted writes: an entry whose provider write was never read before its TTL ran out.
The store hands each such entry out once (:meth:`FingerprintStore.claim_expired`, on a
periodic sweep and whenever a lookup meets an expired entry) and ``on_wasted`` is called
with its labels and write tokens. A fan-out that writes the same prefix twice counts
both writes. Entries the bounded store drops before they expire are not counted.

The reasons, the calibration of estimates and the anchor verdict are ``_verdicts``';
what a diagnosed request leaves in the store is ``_entries``'.
"""

from __future__ import annotations

import itertools
import threading
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final

import orjson
import xxhash

from ..accounting._records import MissVerdict, TokenUsage
from ..planning._tokens import TokenEstimator
from ._entries import store_entries
from ._fingerprints import Fingerprints, fingerprint
from ._store import Entry, FingerprintStore, MemoryStore
from ._verdicts import UNINFORMATIVE_PROVIDER, anchor_verdict, calibrated

__all__ = ["Diagnoser", "RequestState"]

_h: Final[Callable[[bytes], bytes]] = xxhash.xxh3_128_digest


class RequestState:
    """One request between :meth:`Diagnoser.before` and :meth:`Diagnoser.after`."""

    __slots__ = (
        "_fp",
        "_fp_done",
        "api",
        "body",
        "has_markers",
        "labels",
        "max_ttl",
        "min_tokens",
        "model",
        "obj",
        "response_at",
        "sent_at",
        "seq",
        "source",
    )

    def __init__(
        self,
        api: str,
        body: bytes | None,
        obj: Mapping[str, Any] | None,
        model: str | None,
        sent_at: float,
        seq: int,
        labels: tuple[str, str, str],
        min_tokens: int | Callable[[], int | None] | None,
        has_markers: bool | None,
        max_ttl: float,
    ) -> None:
        self.api = api
        self.body = body
        self.obj = obj
        self.model = model
        self.sent_at = sent_at
        self.seq = seq
        self.labels = labels
        self.min_tokens = min_tokens
        self.has_markers = has_markers
        self.max_ttl = max_ttl
        self.response_at: float | None = None
        #: Computes the fingerprints from the planner's layout (instead of ``body``/``obj``).
        self.source: Callable[[], Fingerprints | None] | None = None
        self._fp: Fingerprints | None = None
        self._fp_done = False


_DEFAULT_ESTIMATOR = TokenEstimator(use_qwen_tokenizer=False)


class Diagnoser:
    """Diagnoses cache misses and counts wasted writes. Thread-safe.

    Args:
        store: a :class:`FingerprintStore` (default: a new :class:`MemoryStore`).
        lookback: positions a breakpoint checks backwards, itself included (research A.3, B.2).
        on_wasted: called as ``on_wasted(provider, model, workspace, tokens)`` for each
            write that expired unread.
        sweep_interval: seconds (on the clock passed as ``now``) between wasted-write sweeps.
        max_bytes: bodies larger than this are not fingerprinted.
        max_positions: positions looked up per request (the rest are ignored).
        max_anchor_positions: per-position hashes kept by an anchor.
        estimator: token estimator (raw estimates; rescaled per request to the billed total).

    Example::

        diag = Diagnoser()
        state = diag.before("messages", body_bytes, "claude-sonnet-4-6", now=time.time())
        diag.started(state, time.time())          # response headers arrived
        verdict = diag.after(state, usage, time.time())
    """

    def __init__(
        self,
        store: FingerprintStore | None = None,
        *,
        lookback: int = 20,
        on_wasted: Callable[[str, str, str, int], None] | None = None,
        sweep_interval: float = 30.0,
        max_bytes: int = 4 * 1024 * 1024,
        max_positions: int = 4_096,
        max_anchor_positions: int = 2_048,
        max_inflight: int = 10_000,
        max_conversations: int = 10_000,
        estimator: TokenEstimator | None = None,
    ) -> None:
        self.store: FingerprintStore = store if store is not None else MemoryStore()
        self.lookback = lookback
        self.on_wasted = on_wasted
        self.sweep_interval = sweep_interval
        self.max_bytes = max_bytes
        self.max_positions = max_positions
        self.max_anchor_positions = max_anchor_positions
        self.max_inflight = max_inflight
        self.max_conversations = max_conversations
        self.estimator = estimator or _DEFAULT_ESTIMATOR
        self._seq = itertools.count()
        self._inflight: dict[int, RequestState] = {}
        self._lock = threading.Lock()
        self._last_sweep: float | None = None
        #: A request diagnosed here was billed a write: sweeps are due between diagnosed requests too.
        self.wrote = False
        self._messages: OrderedDict[bytes, str] = OrderedDict()

    # -- request lifecycle -------------------------------------------------------------

    def before(
        self,
        api: str,
        body: bytes | Mapping[str, Any] | None,
        model: str | None,
        now: float,
        *,
        labels: tuple[str, str, str] = ("other", "unknown", "default"),
        min_tokens: int | Callable[[], int | None] | None = None,
        has_markers: bool | None = None,
        max_ttl: float = 3_600.0,
        fingerprints: Callable[[], Fingerprints | None] | None = None,
    ) -> RequestState:
        """Register a request about to be sent (``now``: its start). Cheap: nothing is parsed.

        ``body`` is the outgoing body, as bytes (parsed lazily, only when needed) or
        already parsed; or ``fingerprints`` are given (from the planner's layout) and the
        body is not needed. ``labels`` = (provider, model, workspace) label values.
        ``has_markers``: True/False when known (the planner saw them), None to look.
        ``min_tokens``: the model's minimum cacheable prompt, or a function returning it
        (called only for a ``below_minimum`` verdict).
        """
        raw = body if isinstance(body, (bytes, bytearray)) else None
        obj = body if isinstance(body, Mapping) else None
        state = RequestState(
            api, bytes(raw) if raw is not None else None, obj, model, now, next(self._seq), labels,
            min_tokens, has_markers, max_ttl,
        )  # fmt: skip
        if fingerprints is not None:
            state.body = None
            state.obj = None
            state.source = fingerprints
        with self._lock:
            inflight = self._inflight
            inflight[state.seq] = state
            if len(inflight) > self.max_inflight:  # a request that never ended: forget the oldest
                del inflight[next(iter(inflight))]
        return state

    def started(self, state: RequestState, now: float) -> None:
        """The response of ``state`` started: its writes are readable from ``now``."""
        if state.response_at is None:
            state.response_at = now

    def discard(self, state: RequestState) -> None:
        """The request ended without usage: forget it."""
        with self._lock:
            self._inflight.pop(state.seq, None)

    def fingerprints(self, state: RequestState) -> Fingerprints | None:
        """The request's fingerprints (computed once), or None when it is not diagnosable."""
        if state._fp_done:
            return state._fp
        fp: Fingerprints | None = None
        try:
            obj = state.obj
            if state.source is not None:
                fp = state.source()
                if fp is not None and not fp.markers:
                    fp = None
            elif obj is None:
                body = state.body
                if (
                    body
                    and len(body) <= self.max_bytes
                    and (
                        state.has_markers or (state.has_markers is None and body.find(b"cache_control") != -1)
                    )
                ):
                    parsed = orjson.loads(body)
                    obj = parsed if isinstance(parsed, dict) else None
            elif state.has_markers is False:
                obj = None
            if obj is not None:
                fp = fingerprint(state.api, obj, state.model, self.estimator)
                if fp is not None and not fp.markers:
                    fp = None
        finally:
            if not state._fp_done:
                state._fp = fp
                state._fp_done = True
            state.body = None
            state.obj = None
            state.source = None
        return state._fp

    def after(
        self,
        state: RequestState,
        usage: TokenUsage,
        now: float,
        provider_reason: str | None = None,
    ) -> MissVerdict | None:
        """The provider billed ``usage`` for ``state``: the miss verdict (None: no miss, or cold)."""
        self.discard(state)
        verdict: MissVerdict | None = None
        fp = self.fingerprints(state)
        if fp is not None:
            verdict, _expired_seen = self._diagnose(state, fp, usage, now)
        if provider_reason and provider_reason not in UNINFORMATIVE_PROVIDER:
            verdict = MissVerdict(
                "provider_reported",
                detail=provider_reason,
                local_reason=verdict.reason if verdict is not None else None,
                read_tokens=usage.cache_read,
            )
        if usage.cache_write:
            self.wrote = True
        self.sweep_if_due(now)
        return verdict

    def sweep_if_due(self, now: float) -> None:
        """:meth:`sweep` when ``sweep_interval`` has passed since the last one.

        Also called for requests that are not diagnosed (no marker): a planner that learnt
        to stop writing sends none, and the writes it made before would otherwise never
        be counted.
        """
        if self._last_sweep is None or now - self._last_sweep >= self.sweep_interval:
            self.sweep(now)

    def sweep(self, now: float) -> int:
        """Count the writes that expired unread by ``now``; returns their tokens."""
        self._last_sweep = now
        total = 0
        for entry in self.store.claim_expired(now):
            total += entry.written_tokens
            if self.on_wasted is not None:
                self.on_wasted(entry.provider, entry.model_label, entry.workspace, entry.written_tokens)
        return total

    # -- Anthropic cache diagnostics threading ---------------------------------------------

    def previous_message(self, conversation: bytes) -> str | None:
        """The id of the last response of a conversation (for ``diagnostics.previous_message_id``)."""
        with self._lock:
            return self._messages.get(conversation)

    def remember_message(self, conversation: bytes, message_id: str) -> None:
        with self._lock:
            self._messages[conversation] = message_id
            self._messages.move_to_end(conversation)
            while len(self._messages) > self.max_conversations:
                self._messages.popitem(last=False)

    # -- the diagnosis -------------------------------------------------------------------

    def _diagnose(
        self, state: RequestState, fp: Fingerprints, usage: TokenUsage, now: float
    ) -> tuple[MissVerdict | None, bool]:
        n = len(fp.hashes)
        if n > self.max_positions:
            n = self.max_positions
        keys = fp.keys(n)
        anchor_keys = [
            _h(tag + a)
            for tag, a in ((b"a:conv", fp.conversation), (b"a:msg0", fp.first_message), (b"a:sys", fp.system))
            if a is not None
        ]
        found = self.store.get_many(keys + anchor_keys)
        sent = state.sent_at
        total_raw = fp.tokens[-1] if fp.tokens else 0.0
        read = usage.cache_read
        marker_positions = [m for m, _ in fp.markers if m < n]  # in prompt order
        tokens = calibrated(fp.tokens[:n], total_raw, usage, marker_positions[-1] if marker_positions else -1)

        lookback = self.lookback
        n_markers = len(marker_positions)

        def reachable(i: int) -> bool:
            # Some breakpoint at or after i, within the lookback: the first one at or after
            # i (the markers are in prompt order) is the nearest.
            j = bisect_left(marker_positions, i)
            return j < n_markers and marker_positions[j] - i < lookback

        # (position, state, entry) of every earlier write of one of this request's prefixes.
        cands: list[tuple[int, str, Entry | None]] = []
        expired_seen = False
        for i in range(n):
            e = found[i]
            if e is None or e.written_at > sent:
                continue
            if not e.cached:
                cands.append((i, "unwritten", e))
            elif e.refreshed_at + e.ttl <= sent:  # Entry.expires_at
                cands.append((i, "expired", e))
                expired_seen = True
            elif e.readable_at > sent:
                cands.append((i, "inflight", e))
            else:
                j = bisect_left(marker_positions, i)  # reachable(i), inline
                cands.append(
                    (i, "live" if j < n_markers and marker_positions[j] - i < lookback else "far", e)
                )
        if self._inflight:  # (empty: no other request of this process is in flight)
            cands.extend(self._inflight_candidates(state, fp, n, reachable))

        # Tokens through a candidate: the writer's estimate (exact for a writer's last
        # position, since estimates are rescaled to the billed total), else this request's.
        def size(c: tuple[int, str, Entry | None]) -> float:
            return float(c[2].tokens) if c[2] is not None else tokens[c[0]]

        # The position the read came from: the candidate closest to cache_read (ties: deeper).
        read_pos, best = -1, float(read)
        for c in cands:
            if c[1] == "unwritten":
                continue
            c_entry = c[2]
            diff = abs((float(c_entry.tokens) if c_entry is not None else tokens[c[0]]) - read)  # size(c)
            if diff < best or (diff == best and c[0] > read_pos):
                read_pos, best = c[0], diff
        slack = 16.0

        verdict: MissVerdict | None = None
        deeper = [c for c in cands if c[1] != "unwritten" and c[0] > read_pos and size(c) - read > slack]
        # (Nothing deeper than the read, the common case: no state to look through.)
        for st, reason in (
            ("live", "evicted"),
            ("inflight", "write_in_flight"),
            ("expired", "ttl_expired"),
            ("far", "lookback_exceeded"),
        ):
            if not deeper:
                break
            hits = [c for c in deeper if c[1] == st]
            if hits:
                c = max(hits, key=lambda cand: cand[0])  # entries themselves do not order
                i = c[0]
                verdict = MissVerdict(
                    reason,
                    position=i,
                    block=fp.path(i),
                    kind=fp.kinds[i],
                    expected_tokens=int(size(c)),
                    read_tokens=read,
                )
                break

        anchor: Entry | None = None
        for e in found[n:]:
            if e is not None and e.written_at <= sent:
                anchor = e
                break
        if verdict is None and anchor is not None and anchor.cached and anchor.tokens - read > slack:
            verdict = anchor_verdict(fp, anchor, n, tokens, read, sent)

        if (
            verdict is None
            and usage.cache_read == 0
            and usage.cache_write == 0
            and marker_positions
            and (cands or anchor is not None)
        ):
            deepest = max(marker_positions)
            estimate = int(tokens[deepest])
            detail = str(estimate)
            minimum = state.min_tokens() if callable(state.min_tokens) else state.min_tokens
            if minimum is not None:
                # "900<1024": the prefix is under the minimum; "1829>=1024": by the estimate
                # it is not, so the provider counted fewer tokens or needs more than that.
                detail += f"<{minimum}" if estimate < minimum else f">={minimum}"
            verdict = MissVerdict(
                "below_minimum",
                position=deepest,
                block=fp.path(deepest),
                kind=fp.kinds[deepest],
                expected_tokens=0,
                detail=detail,
            )

        if expired_seen:
            # Count expired unread writes before this request's own entries replace them.
            self.sweep(max(now, sent))
        store_entries(
            self.store,
            self.max_anchor_positions,
            state,
            fp,
            usage,
            n,
            keys,
            found,
            cands,
            read_pos,
            tokens,
            anchor_keys,
        )
        return verdict, expired_seen

    def _inflight_candidates(
        self, state: RequestState, fp: Fingerprints, n: int, reachable: Callable[[int], bool]
    ) -> list[tuple[int, str, Entry | None]]:
        """Writes of requests of this process still in flight (not yet in the store)."""
        with self._lock:
            others = [
                s
                for s in self._inflight.values()
                if s.sent_at < state.sent_at or (s.sent_at == state.sent_at and s.seq < state.seq)
            ]
        out: list[tuple[int, str, Entry | None]] = []
        for other in others[-64:]:
            ofp = self.fingerprints(other)
            if ofp is None or ofp.model != fp.model:
                continue
            for m, _ in ofp.markers:
                if m < n and ofp.hashes[m] == fp.hashes[m]:
                    started = other.response_at
                    if started is None or started > state.sent_at:
                        out.append((m, "inflight", None))
                    else:
                        out.append((m, "live" if reachable(m) else "far", None))
        return out
