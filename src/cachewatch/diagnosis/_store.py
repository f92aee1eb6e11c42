"""The fingerprint store: what is known of each cached prefix, in memory or shared.

Place in the flow: diagnoser -> **store** (one entry per marker position of every
diagnosed request, keyed by the model-bound prefix digest, plus three anchors per
request) -> later requests' verdicts and the wasted-write count.

An :class:`Entry` holds write time, TTL, model, token estimate, when the entry became
readable (the writing response started), whether the provider cached it, how many
write tokens it cost and whether anything read it; anchors also hold 4-byte
truncations of the per-position digests, to name the first block that changed.
:class:`MemoryStore` is the default; ``RedisStore`` (``_store_redis``) shares one store
across a fleet of processes. Stores never see content.
"""

from __future__ import annotations

import heapq
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

import orjson

from ..accounting._records import slot_factory, slot_replace

__all__ = [
    "TTL_SECONDS",
    "Entry",
    "FingerprintStore",
    "MemoryStore",
    "anchor_entry",
    "new_entry",
    "refreshed_entry",
    "replace_entry",
]

TTL_SECONDS: Mapping[str, float] = {"5m": 300.0, "1h": 3_600.0}


@dataclass(frozen=True, slots=True)
class Entry:
    """What the store knows about one cached prefix (or an anchor pointing at one)."""

    #: Start time (wall clock) of the request that first wrote it.
    written_at: float
    #: Start time of the last request that wrote or read it (the TTL runs from there).
    refreshed_at: float
    ttl: float
    model: str
    #: Estimated prompt tokens through the prefix end.
    tokens: int
    #: Position of the marker in the writing request.
    position: int
    #: When the writing response started: the entry is readable from then on.
    readable_at: float
    #: The provider holds it (it reported a write or a read covering it).
    cached: bool = True
    #: Write tokens attributed to this entry (0: not written by a request we saw).
    written_tokens: int = 0
    #: A later request read it.
    read: bool = False
    #: Already counted as a wasted write.
    wasted: bool = False
    #: Labels for the wasted-write counter (the capped label values, never raw input).
    provider: str = "other"
    model_label: str = "unknown"
    workspace: str = "default"
    #: Anchors only: 4-byte truncated cumulative hashes of positions ``0..position``.
    hashes: bytes = b""
    #: Anchors only: 4-byte truncated digest of the tool definitions (empty without tools).
    tools: bytes = b""

    @property
    def expires_at(self) -> float:
        return self.refreshed_at + self.ttl

    @property
    def pending_waste(self) -> bool:
        """A write nobody has read yet (a wasted-write candidate)."""
        return self.written_tokens > 0 and not self.read and not self.wasted

    def to_json(self) -> bytes:
        return orjson.dumps(
            [
                self.written_at,
                self.refreshed_at,
                self.ttl,
                self.model,
                self.tokens,
                self.position,
                self.readable_at,
                self.cached,
                self.written_tokens,
                self.read,
                self.wasted,
                self.provider,
                self.model_label,
                self.workspace,
                self.hashes.hex(),
                self.tools.hex(),
            ]
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Entry:
        v = orjson.loads(raw)
        return cls(
            float(v[0]),
            float(v[1]),
            float(v[2]),
            str(v[3]),
            int(v[4]),
            int(v[5]),
            float(v[6]),
            bool(v[7]),
            int(v[8]),
            bool(v[9]),
            bool(v[10]),
            str(v[11]),
            str(v[12]),
            str(v[13]),
            bytes.fromhex(v[14]),
            bytes.fromhex(v[15]) if len(v) > 15 else b"",
        )


#: ``Entry(...)`` and ``dataclasses.replace(entry, ...)`` without the frozen ``__init__``'s
#: cost (a diagnosed request builds several; see ``accounting._records.slot_factory``).
new_entry: Final[Callable[..., Entry]] = slot_factory(Entry)
replace_entry: Final[Callable[..., Entry]] = slot_replace(Entry, new_entry)


def refreshed_entry(e: Entry, refreshed_at: float, ttl: float, read: bool) -> Entry:
    """``replace_entry(e, refreshed_at=..., ttl=..., read=...)``, positionally (a refresh is
    the store's commonest update: about half the cost of the keyword form)."""
    return new_entry(
        e.written_at, refreshed_at, ttl, e.model, e.tokens, e.position, e.readable_at, e.cached,
        e.written_tokens, read, e.wasted, e.provider, e.model_label, e.workspace, e.hashes, e.tools,
    )  # fmt: skip


def anchor_entry(e: Entry, hashes: bytes, tools: bytes) -> Entry:
    """``replace_entry(e, hashes=..., tools=..., written_tokens=0, read=False, wasted=False)``,
    positionally: an anchor is its request's deepest entry with the position digests."""
    return new_entry(
        e.written_at, e.refreshed_at, e.ttl, e.model, e.tokens, e.position, e.readable_at, e.cached,
        0, False, False, e.provider, e.model_label, e.workspace, hashes, tools,
    )  # fmt: skip


@runtime_checkable
class FingerprintStore(Protocol):
    """Where fingerprint entries live: in memory (default) or shared (Redis) by a fleet.

    Keys are 16-byte hashes. Stores never see content. ``claim_expired`` must hand each
    expired, unread, written entry out once across every process sharing the store.
    """

    def get(self, key: bytes) -> Entry | None: ...

    def put(self, key: bytes, entry: Entry) -> None: ...

    def get_many(self, keys: Sequence[bytes]) -> list[Entry | None]: ...

    def put_many(self, items: Sequence[tuple[bytes, Entry]]) -> None: ...

    def claim_expired(self, now: float, limit: int = 1_000) -> list[Entry]:
        """Entries whose TTL ran out by ``now`` with an unread write; each is returned once."""
        ...


class MemoryStore:
    """The default store: a thread-safe LRU of at most ``max_entries`` entries.

    Expired entries are kept (for ``ttl_expired`` verdicts) until the LRU drops them.
    Memory: a marker entry is ~200 bytes; an anchor adds 4 bytes per position (at most
    ``Diagnoser.max_anchor_positions``), shared by the three anchors of a request.
    """

    def __init__(self, max_entries: int = 20_000) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[bytes, Entry] = OrderedDict()
        self._expiry: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: bytes) -> Entry | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is not None:
                self._data.move_to_end(key)
            return entry

    def get_many(self, keys: Sequence[bytes]) -> list[Entry | None]:
        out: list[Entry | None] = []
        with self._lock:
            data = self._data
            for key in keys:
                entry = data.get(key)
                if entry is not None:
                    data.move_to_end(key)
                out.append(entry)
        return out

    def put(self, key: bytes, entry: Entry) -> None:
        self.put_many(((key, entry),))

    def put_many(self, items: Sequence[tuple[bytes, Entry]]) -> None:
        with self._lock:
            data = self._data
            for key, entry in items:
                data[key] = entry
                data.move_to_end(key)
                if entry.written_tokens > 0 and not entry.read and not entry.wasted:  # pending_waste
                    heapq.heappush(self._expiry, (entry.expires_at, key))
            while len(data) > self.max_entries:
                data.popitem(last=False)
            if len(self._expiry) > 4 * self.max_entries + 1_024:
                self._expiry = [(e.expires_at, k) for k, e in data.items() if e.pending_waste]
                heapq.heapify(self._expiry)

    def claim_expired(self, now: float, limit: int = 1_000) -> list[Entry]:
        out: list[Entry] = []
        with self._lock:
            heap = self._expiry
            while heap and heap[0][0] <= now and len(out) < limit:
                _, key = heapq.heappop(heap)
                entry = self._data.get(key)
                if entry is None or not entry.pending_waste:
                    continue
                if entry.expires_at > now:
                    heapq.heappush(heap, (entry.expires_at, key))
                    continue
                claimed = replace_entry(entry, wasted=True)
                self._data[key] = claimed
                out.append(claimed)
        return out
