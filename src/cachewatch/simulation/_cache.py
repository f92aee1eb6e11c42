"""The prompt-cache model: sans-IO, clock-injected, shared by every wire format.

One implementation serves the emulator (``cachewatch.emulator``, which renders each
wire format into a :class:`Prompt`), the shadow estimate of ``breakpoints="shadow"``
and ``cachewatch replay`` (which build the :class:`Prompt` from the planner's layout).

Data flow for one request (research A.3, B.2)::

    wire module -> Prompt(positions) -> resolve_breakpoints() -> CacheStore.begin()
        -> (response starts) -> Reservation.commit()

* The prompt is a sequence of *positions* (blocks) in tools -> system -> messages
  order. Position ``i`` has a cumulative hash over the model and the canonical
  bytes of positions ``0..i`` (with ``cache_control`` removed, key order kept:
  matching is byte-exact, as on the real API) and a cumulative token count.
* Each breakpoint (explicit marker or top-level automatic) looks up its own hash;
  on a miss it walks back one position at a time, checking at most
  ``profile.lookback`` positions counting itself, for entries earlier requests
  wrote. Every entry found is refreshed (its TTL restarts at this request's start).
* Billing follows the mixed-TTL rule: A = tokens up to the highest hit, B = up to
  the highest 1h breakpoint after A (else A), C = up to the last breakpoint (else
  A). Reads A, 1h writes B - A, 5m writes C - B, uncached input total - C.
* A breakpoint after A whose prefix reaches the model minimum writes exactly one
  entry. The entry is *pending* until :meth:`Reservation.commit`, which the app
  calls when the response starts, so concurrent cold requests all miss and all
  write.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from ._profiles import Profile

__all__ = [
    "TTL_SECONDS",
    "Breakpoint",
    "CacheControlError",
    "CacheStore",
    "CacheUsage",
    "Position",
    "Prompt",
    "Reservation",
    "Ttl",
    "bill",
    "resolve_breakpoints",
]

Ttl = Literal["5m", "1h"]
TTL_SECONDS: Mapping[str, float] = {"5m": 300.0, "1h": 3_600.0}


class CacheControlError(ValueError):
    """A request the profile rejects (HTTP 400 ``invalid_request_error``); the message is the API's."""


@dataclass(frozen=True, slots=True)
class Position:
    """One block of the rendered prompt."""

    #: ``tools``, ``system`` or ``messages``.
    section: str
    #: Canonical bytes hashed for prefix matching (``cache_control`` removed).
    record: bytes
    tokens: int
    #: The block's ``cache_control`` object, when it carries one.
    marker: Mapping[str, object] | None = None
    #: The 400 message a marker here gets under a strict profile; ``None`` if a marker may go here.
    marker_error: str | None = None
    #: JSON path of the block for error messages, e.g. ``messages.2.content.0``.
    path: str = ""

    @property
    def cacheable(self) -> bool:
        return self.marker_error is None


@dataclass(frozen=True, slots=True)
class Breakpoint:
    index: int
    ttl: Ttl


class Prompt:
    """Positions with their cumulative hashes and token counts."""

    __slots__ = ("cumulative", "hashes", "model", "positions")

    def __init__(self, model: str, positions: Sequence[Position]) -> None:
        self.model = model
        self.positions = tuple(positions)
        digest = hashlib.sha256(b"model\x00" + model.encode()).digest()
        hashes: list[bytes] = []
        cumulative: list[int] = []
        running = 0
        for position in self.positions:
            digest = hashlib.sha256(digest + position.record).digest()
            hashes.append(digest)
            running += position.tokens
            cumulative.append(running)
        self.hashes = tuple(hashes)
        self.cumulative = tuple(cumulative)

    @property
    def total_tokens(self) -> int:
        return self.cumulative[-1] if self.cumulative else 0

    def tokens_through(self, index: int) -> int:
        """Tokens in positions ``0..index`` (0 for ``index < 0``)."""
        return self.cumulative[index] if index >= 0 else 0

    @property
    def fingerprint(self) -> bytes:
        """Hash of the whole prompt (seeds the deterministic completion)."""
        return self.hashes[-1] if self.hashes else hashlib.sha256(self.model.encode()).digest()


def _ttl_of(marker: Mapping[str, object], profile: Profile) -> Ttl:
    return "1h" if profile.supports_1h and marker.get("ttl") == "1h" else "5m"


def _check_shape(marker: Mapping[str, object], where: str) -> None:
    """A 400 for a ``cache_control`` the API's schema refuses (research A.2).

    ``type`` must be ``"ephemeral"`` and ``ttl``, when given, ``"5m"`` or ``"1h"``
    (the SDK's ``CacheControlEphemeralParam``); the wording follows the API's
    validation errors (``<path>: Input should be ...``).
    """
    if marker.get("type") != "ephemeral":
        raise CacheControlError(f"{where}.type: Input should be 'ephemeral'")
    if "ttl" in marker and marker["ttl"] not in ("5m", "1h"):
        raise CacheControlError(f"{where}.ttl: Input should be '5m' or '1h'")


def resolve_breakpoints(
    prompt: Prompt, top_level: Mapping[str, object] | None, profile: Profile
) -> list[Breakpoint]:
    """The breakpoints in effect, or :class:`CacheControlError` under a strict profile.

    Strict (Anthropic) checks, in order: a malformed marker (type other than
    ``ephemeral``, TTL other than ``5m``/``1h``) or one on a block that cannot carry one;
    more than ``max_breakpoints`` markers counting the top-level one; a ``1h`` marker
    after a ``5m`` one in tools -> system -> messages order; a top-level TTL that
    differs from an explicit marker on its target block. Lenient profiles drop
    invalid markers and keep only the last ``max_breakpoints``.
    """
    if profile.implicit:
        return [Breakpoint(len(prompt.positions) - 1, "5m")] if prompt.positions else []
    markers: list[tuple[int, Ttl, str]] = []
    if profile.strict and top_level is not None and profile.top_level:
        _check_shape(top_level, "cache_control")
    for index, position in enumerate(prompt.positions):
        if position.marker is None:
            continue
        if position.marker_error is not None:
            if profile.strict:
                raise CacheControlError(position.marker_error)
            continue
        if profile.strict:
            _check_shape(position.marker, f"{position.path}.cache_control")
        markers.append((index, _ttl_of(position.marker, profile), position.path))

    auto: tuple[int, Ttl, str] | None = None
    if top_level is not None and profile.top_level:
        auto_ttl = _ttl_of(top_level, profile)
        target = next(
            (i for i in range(len(prompt.positions) - 1, -1, -1) if prompt.positions[i].cacheable), None
        )
        if target is not None:
            auto = (target, auto_ttl, "cache_control")

    found = len(markers) + (1 if top_level is not None and profile.top_level else 0)
    if found > profile.max_breakpoints:
        if profile.extra_breakpoints == "error":
            raise CacheControlError(
                f"A maximum of {profile.max_breakpoints} blocks with cache_control may be provided. "
                f"Found {found}."
            )
        keep = profile.max_breakpoints - (1 if auto is not None else 0)
        markers = markers[len(markers) - keep :] if keep > 0 else []

    if auto is not None:
        existing = next((m for m in markers if m[0] == auto[0]), None)
        if existing is None:
            markers.append(auto)
        elif existing[1] != auto[1] and profile.strict:
            raise CacheControlError(
                f"Top-level cache_control has ttl='{auto[1]}' but the target block already has "
                f"cache_control with ttl='{existing[1]}'"
            )

    if profile.strict and profile.supports_1h:
        seen_5m = False
        for _, ttl, path in markers:
            if ttl == "5m":
                seen_5m = True
            elif seen_5m:
                where = "cache_control" if path == "cache_control" else f"{path}.cache_control.ttl"
                raise CacheControlError(
                    f"{where}: a ttl='1h' cache_control block must not come after a ttl='5m' "
                    "cache_control block. Note that blocks are processed in the following order: "
                    "`tools`, `system`, `messages`."
                )
    return [Breakpoint(index, ttl) for index, ttl, _ in markers]


@dataclass(frozen=True, slots=True)
class CacheUsage:
    """One request's prompt, partitioned: ``input + cache_read + writes == total``."""

    input_tokens: int
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0

    @property
    def cache_write(self) -> int:
        return self.cache_write_5m + self.cache_write_1h

    @property
    def total(self) -> int:
        return self.input_tokens + self.cache_read + self.cache_write_5m + self.cache_write_1h


@dataclass(slots=True)
class _Entry:
    tokens: int
    ttl: float
    expires_at: float
    #: The reservation that created it, until anything reads or rewrites it.
    owner: object = None
    #: ``tokens`` is the prefix's billed size (see :meth:`Reservation.measure`), not an estimate.
    exact: bool = False


@dataclass(frozen=True, slots=True)
class _PendingWrite:
    key: tuple[str, bytes]
    tokens: int
    ttl: float
    exact: bool = False


@dataclass(slots=True)
class Reservation:
    """A request's cache outcome and its writes, pending until the response starts."""

    usage: CacheUsage
    started_at: float
    _store: CacheStore | None = field(default=None, repr=False)
    _writes: tuple[_PendingWrite, ...] = ()
    committed: bool = False
    #: Index of the deepest position read (-1: nothing read).
    hit: int = -1
    #: The breakpoints that write, in the order given (their position and TTL).
    written: tuple[Breakpoint, ...] = ()
    #: The measured size of the prefix read at ``hit`` (see :meth:`measure`), None: not measured.
    hit_tokens: int | None = None

    @property
    def pending_writes(self) -> int:
        return 0 if self.committed else len(self._writes)

    def commit(self) -> None:
        """Make this request's writes readable (idempotent). Call when the response starts."""
        if self.committed:
            return
        self.committed = True
        if self._store is not None:
            self._store._commit(self)

    def measure(self, index: int, tokens: int) -> None:
        """The prefix this request writes at ``index`` is known to be ``tokens`` long.

        The shadow estimate knows a prefix's size exactly when it is a whole billed prompt
        (a write on the request's last position): a later request that reads that entry is
        told its size (:attr:`hit_tokens`) instead of estimating it again. A prefix always
        has the same tokens, so the measure holds for whichever request wrote the entry.
        The emulator, whose sizes are exact already, never calls this.
        """
        for bp, write in zip(self.written, self._writes, strict=True):
            if bp.index == index:
                measured = _PendingWrite(write.key, tokens, write.ttl, True)
                self._writes = tuple(measured if w is write else w for w in self._writes)
                if self.committed and self._store is not None:
                    self._store._measure(write.key, tokens)
                return

    def withdraw(self, indices: Collection[int]) -> None:
        """Take back the writes at ``indices`` (the provider did not make them after all).

        Before :meth:`commit` they are simply dropped; after it, an entry is removed only
        when this reservation created it and nothing read or rewrote it since. The
        emulator never calls this: the shadow estimate does, when the billed prompt shows
        that a write it reserved on an estimate was below the model's minimum.
        """
        if not indices:
            return
        gone = [w for bp, w in zip(self.written, self._writes, strict=True) if bp.index in indices]
        self.written = tuple(bp for bp in self.written if bp.index not in indices)
        self._writes = tuple(w for w in self._writes if w not in gone)
        if self.committed and self._store is not None:
            self._store._withdraw(self, gone)


#: Expired entries dropped from the least recently used end at most, per commit.
_PURGE_PER_COMMIT: Final = 4


class CacheStore:
    """In-memory prompt cache keyed by (namespace, cumulative prefix hash).

    Thread-safe; bounded by ``max_entries`` (least recently used first out), and expired
    entries at the least recently used end are dropped as new ones are written. The
    model is part of every hash, so caches are isolated per model; ``namespace``
    isolates per API key or workspace.

    Args:
        clock: Returns seconds (any epoch); TTLs are measured on it.
        max_entries: Entries kept before the least recently used is evicted.
    """

    def __init__(self, clock: Callable[[], float], *, max_entries: int = 100_000) -> None:
        self._clock = clock
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[str, bytes], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            now = self._clock()
            return sum(1 for e in self._entries.values() if e.expires_at > now)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def discard(self, key: tuple[str, bytes]) -> None:
        """Drop the entry ``(namespace, prefix hash)``, if any (an entry that cannot exist).

        The emulator never calls this; the shadow estimate does, when a billed prompt shows
        that an entry reserved on an estimate is below the model's minimum.
        """
        with self._lock:
            self._entries.pop(key, None)

    def begin(
        self,
        prompt: Prompt,
        breakpoints: Sequence[Breakpoint],
        *,
        profile: Profile,
        min_tokens: int,
        namespace: str = "",
        implicit: bool | None = None,
        bill_writes: bool = False,
        every_prefix: bool = False,
        lookup: bool = True,
    ) -> Reservation:
        """Look up and refresh entries, bill the request, and reserve its writes.

        The TTL of every entry read or written runs from this call (the request start).
        ``implicit`` overrides ``profile.implicit``: an implicit cache writes for free and
        matches the longest cached prefix at any distance; ``bill_writes`` bills its writes
        (OpenAI GPT-5.6 and later) as 5-minute writes. ``every_prefix``: the request caches
        the prefix through each of its positions, not only through its breakpoints, so a
        later request that shares only its beginning reads that (DashScope's implicit cache:
        "ABCD" cached, "ABE" may hit "AB"; research B.6); a read then keeps every shorter
        prefix of what it read alive too. ``lookup=False``: the request finds
        nothing cached (a best-effort cache that missed) and writes as if nothing were.
        """
        implicit = profile.implicit if implicit is None else implicit
        lookback = profile.lookback if profile.implicit or not implicit else 1_000_000
        return self.reserve(
            prompt.hashes,
            prompt.cumulative,
            breakpoints,
            lookback=lookback,
            min_tokens=min_tokens,
            namespace=namespace,
            implicit=implicit,
            bill_writes=bill_writes,
            every_prefix=every_prefix,
            lookup=lookup,
        )

    def reserve(
        self,
        hashes: Sequence[bytes],
        cumulative: Sequence[int],
        breakpoints: Sequence[Breakpoint],
        *,
        lookback: int,
        min_tokens: int,
        namespace: str = "",
        implicit: bool = False,
        bill_writes: bool = False,
        every_prefix: bool = False,
        lookup: bool = True,
    ) -> Reservation:
        """:meth:`begin` on a prompt given as its cumulative prefix hashes and token counts.

        ``hashes[i]`` identifies the prefix ending at position ``i`` (and must already bind
        everything the provider keys its cache on, such as the model, or ``namespace``
        must); ``cumulative[i]`` is the tokens in positions ``0..i``.
        """
        with self._lock:
            now = self._clock()
            hit = -1
            hit_tokens: int | None = None
            for bp in breakpoints if lookup else ():
                stop = max(-1, bp.index - lookback)
                for index in range(bp.index, stop, -1):
                    entry = self._get((namespace, hashes[index]), now)
                    if entry is not None:
                        entry.expires_at = max(entry.expires_at, now + entry.ttl)
                        entry.owner = None
                        if index > hit:
                            hit, hit_tokens = index, entry.tokens if entry.exact else None
                        break
            if every_prefix:
                # A prefix cache serves "ABC" from the blocks of "A", "AB" and "ABC": a read
                # uses, and so keeps alive, every shorter prefix of what it read.
                for index in range(hit):
                    entry = self._get((namespace, hashes[index]), now)
                    if entry is not None:
                        entry.expires_at = max(entry.expires_at, now + entry.ttl)
                breakpoints = [Breakpoint(i, "5m") for i in range(len(cumulative))]
            writes = [
                bp for bp in breakpoints if bp.index > hit and _through(cumulative, bp.index) >= min_tokens
            ]
            total = cumulative[-1] if cumulative else 0
            usage = bill(cumulative, hit, writes, total, implicit=implicit, bill_writes=bill_writes)
            pending = tuple(
                _PendingWrite(
                    (namespace, hashes[bp.index]), _through(cumulative, bp.index), TTL_SECONDS[bp.ttl]
                )
                for bp in writes
            )
            return Reservation(
                usage=usage,
                started_at=now,
                _store=self,
                _writes=pending,
                hit=hit,
                written=tuple(writes),
                hit_tokens=hit_tokens,
            )

    def _get(self, key: tuple[str, bytes], now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def _commit(self, reservation: Reservation) -> None:
        with self._lock:
            for write in reservation._writes:
                expires = reservation.started_at + write.ttl
                entry = self._entries.get(write.key)
                if entry is None:
                    self._entries[write.key] = _Entry(
                        write.tokens, write.ttl, expires, reservation, write.exact
                    )
                else:
                    entry.ttl = max(entry.ttl, write.ttl)
                    entry.expires_at = max(entry.expires_at, expires)
                    entry.owner = None
                    if write.exact:
                        entry.tokens, entry.exact = write.tokens, True
                self._entries.move_to_end(write.key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
            # Expired entries at the least recently used end go too, a few per commit, so
            # a quiet process holds about what is alive, not ``max_entries`` (an entry is
            # otherwise dropped only when looked up or pushed out).
            now = self._clock()
            for _ in range(_PURGE_PER_COMMIT):
                oldest = next(iter(self._entries.values()), None)
                if oldest is None or oldest.expires_at > now:
                    break
                self._entries.popitem(last=False)

    def _measure(self, key: tuple[str, bytes], tokens: int) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.tokens, entry.exact = tokens, True

    def _withdraw(self, reservation: Reservation, writes: Sequence[_PendingWrite]) -> None:
        with self._lock:
            for write in writes:
                entry = self._entries.get(write.key)
                if entry is not None and entry.owner is reservation:
                    del self._entries[write.key]


def _through(cumulative: Sequence[int], index: int) -> int:
    return cumulative[index] if index >= 0 else 0


def bill(
    cumulative: Sequence[int],
    hit: int,
    writes: Sequence[Breakpoint],
    total: int,
    *,
    implicit: bool = False,
    bill_writes: bool = False,
) -> CacheUsage:
    """The partition of one request's prompt, by the mixed-TTL rule (module docstring).

    ``cumulative[i]``: tokens in positions ``0..i``; ``hit``: the deepest position read
    (-1: none); ``writes``: the breakpoints that write; ``total``: the whole prompt.
    """
    a = _through(cumulative, hit)
    b = max((_through(cumulative, bp.index) for bp in writes if bp.ttl == "1h"), default=a)
    c = max((_through(cumulative, bp.index) for bp in writes), default=a)
    if implicit and bill_writes:
        return CacheUsage(input_tokens=total - c, cache_read=a, cache_write_5m=c - a)
    if implicit:
        return CacheUsage(input_tokens=total - a, cache_read=a)
    return CacheUsage(input_tokens=total - c, cache_read=a, cache_write_1h=b - a, cache_write_5m=c - b)
