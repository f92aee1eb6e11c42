"""Cache-miss diagnosis: prefix fingerprints, a fingerprint store and the Diagnoser. Sans-IO.

Place in the flow: request -> planner -> transport -> stream observer -> usage record
-> **diagnosis** (at the end of the body, before the sinks) -> sinks.

Fingerprints (per request, research A.3/A.4, B.2):

* The prompt is flattened into *positions* in tools -> system -> messages order, the
  providers' render order: one per tool definition, system block and message content
  block (a plain-string ``system``/``content`` is one text block, so the planner's
  string-to-list conversion does not change the fingerprint; OpenAI ``tool_calls`` are
  folded into their message's last position; ``tool_choice``/``thinking`` are folded
  into every message position, because they invalidate the messages cache only).
* Position ``i`` has a cumulative hash over the canonical bytes of positions
  ``0..i`` with ``cache_control`` removed (XXH3-128, *model-free*); the store key of
  a prefix adds the model (caches are per model). Only hashes, block indices and a
  closed set of block kinds are kept: never content.
* Token estimates per position come from the cheap estimator of ``_tokens`` (raw
  per-family constants), rescaled per request so that the whole prompt equals what the
  provider billed (``usage.prompt_total``).
* Marker positions: blocks carrying ``cache_control`` (a marker nested in
  ``tool_result.content`` counts on its block) and a top-level automatic
  ``cache_control`` (on the last cacheable position).

Cost: nothing before the request is sent except a small state object; the body is
parsed and hashed at the end of the response, and only when it carries a marker and is
smaller than ``max_bytes``. Implicit-caching endpoints (no markers: OpenAI, DeepSeek)
are not diagnosed.

Store entries (:class:`Entry`): one per marker position of every diagnosed request, keyed
by the model-bound prefix hash, holding write time, TTL, model, token estimate, when
the entry became readable (the writing response started), whether the provider cached
it, how many write tokens it cost and whether anything read it. Three *anchors* per
request (conversation = system + first input message, first input message, system;
model-free) point at the request's deepest marker entry, with its per-position hashes
(4-byte truncations, up to ``max_anchor_positions``), so a later request whose prefix
changed can find its predecessor and name the first block that differs.

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
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol, runtime_checkable

import orjson
import xxhash

from ..accounting._records import TokenUsage
from ..planning._tokens import TokenEstimator, model_family

__all__ = [
    "MISS_REASONS",
    "Diagnoser",
    "Entry",
    "FingerprintStore",
    "Fingerprints",
    "MemoryStore",
    "MissVerdict",
    "RequestState",
    "fingerprint",
]

#: The closed set of ``reason`` label values of ``cachewatch_cache_misses_total``.
MISS_REASONS = (
    "ttl_expired",
    "prefix_changed_tools",
    "prefix_changed_system",
    "prefix_changed_messages",
    "model_changed",
    "below_minimum",
    "write_in_flight",
    "lookback_exceeded",
    "evicted",
    "provider_reported",
)

TTL_SECONDS: Mapping[str, float] = {"5m": 300.0, "1h": 3_600.0}

#: Provider reasons that say nothing about the miss: the local verdict is used instead.
_UNINFORMATIVE_PROVIDER = frozenset({"previous_message_not_found", "unavailable", "none", "no_miss"})

#: Block kinds reported in spans/logs; anything else is ``other`` (a ``type`` is caller data).
_KINDS = frozenset(
    {
        "text",
        "image",
        "document",
        "tool_use",
        "tool_result",
        "search_result",
        "server_tool_use",
        "web_search_tool_result",
        "thinking",
        "redacted_thinking",
        "image_url",
        "video_url",
        "input_audio",
        "file",
        "video",
        "audio",
        "tool",
        "tool_calls",
    }
)
_SKIP_AUTOMATIC = frozenset({"thinking", "redacted_thinking"})
_INPUT_ROLES = frozenset({"user", "tool", "function"})
_ANCHOR_HASH = 4
#: Version 2: XXH3-128, records are ``json(prefix) + json(block)``, keys XOR a model tag.
_SEED = b"cachewatch-fp-2"
_CC = b'"cache_control"'


#: 128-bit XXH3: identities of prefixes, not secrets (no content is kept either way);
#: about ten times BLAKE2b's speed on the few hundred bytes of a typical block.
_h: Final[Callable[[bytes], bytes]] = xxhash.xxh3_128_digest


def _model_tag(model: str) -> int:
    return int.from_bytes(_h(b"p\x00" + model.encode("utf-8", "surrogatepass")), "big")


def _prefix_key(model: str, content_hash: bytes) -> bytes:
    """The store key of a model-free prefix hash: the hash XOR a per-model 128-bit tag.

    (Caches are per model. A XOR keeps the key 16 bytes and costs one integer operation
    per position instead of a hash call.)
    """
    return (int.from_bytes(content_hash, "big") ^ _model_tag(model)).to_bytes(16, "big")


def _strip(block: Any) -> Any:
    """``block`` without ``cache_control`` (also one level down in ``content`` lists)."""
    if type(block) is not dict:
        return block
    content = block.get("content")
    nested = type(content) is list and any(type(c) is dict and "cache_control" in c for c in content)
    if "cache_control" not in block and not nested:
        return block
    out = {k: v for k, v in block.items() if k != "cache_control"}
    if nested and isinstance(content, list):
        out["content"] = [
            {k: v for k, v in c.items() if k != "cache_control"} if type(c) is dict else c for c in content
        ]
    return out


def _marker_ttl(block: Any) -> str | None:
    if type(block) is not dict:
        return None
    cc = block.get("cache_control")
    if type(cc) is dict:
        return "1h" if cc.get("ttl") == "1h" else "5m"
    content = block.get("content")
    if type(content) is list:
        for part in content:
            if type(part) is dict and type(part.get("cache_control")) is dict:
                return "1h" if part["cache_control"].get("ttl") == "1h" else "5m"
    return None


def _kind(block: Any) -> str:
    if isinstance(block, str):
        return "text"
    if type(block) is dict:
        kind = block.get("type")
        if kind is None:
            for key in ("text", "image", "video", "audio"):
                if key in block:
                    return key
            return "other"
        return kind if isinstance(kind, str) and kind in _KINDS else "other"
    return "other"


def _empty_text(block: Any) -> bool:
    if isinstance(block, str):
        return not block.strip()
    if type(block) is dict and block.get("type", "text") == "text":
        text = block.get("text")
        return not isinstance(text, str) or not text.strip()
    return False


@dataclass(frozen=True, slots=True)
class Fingerprints:
    """The cacheable-prefix fingerprints of one request (hashes, indices and kinds only)."""

    model: str
    #: Cumulative model-free content hash per position.
    hashes: tuple[bytes, ...]
    #: Cumulative raw token estimate per position (uncalibrated).
    tokens: tuple[float, ...]
    #: ``tools`` / ``system`` / ``messages`` per position.
    locations: tuple[str, ...]
    #: ``(tool,)``, ``(system_block,)`` or ``(message, block)`` per position.
    indices: tuple[tuple[int, ...], ...]
    #: Block kind per position (a closed set, ``other`` for anything else).
    kinds: tuple[str, ...]
    #: ``(position, ttl)`` of every breakpoint, in prompt order.
    markers: tuple[tuple[int, str], ...]
    #: Model-free anchors: system + first input message, first input message, system.
    conversation: bytes | None = None
    first_message: bytes | None = None
    system: bytes | None = None

    def key(self, index: int) -> bytes:
        """The store key of the prefix ending at position ``index``."""
        return _prefix_key(self.model, self.hashes[index])

    def keys(self, n: int) -> list[bytes]:
        """The store keys of positions ``0..n-1`` (as :meth:`key`, the tag computed once)."""
        tag = _model_tag(self.model)
        return [(int.from_bytes(h, "big") ^ tag).to_bytes(16, "big") for h in self.hashes[:n]]

    def path(self, index: int) -> str:
        """Dotted path of a position (``tools.2``, ``system.0``, ``messages.3.1``)."""
        return ".".join((self.locations[index], *(str(i) for i in self.indices[index])))


class _Builder:
    __slots__ = (
        "cum", "est", "family", "hashes", "indices", "kinds", "locations", "markers", "tokens", "total",
    )  # fmt: skip

    def __init__(self, estimator: TokenEstimator, model: str) -> None:
        self.est = estimator.block
        self.family = model_family(model)
        self.cum = _h(_SEED)
        self.total = 0.0
        self.hashes: list[bytes] = []
        self.tokens: list[float] = []
        self.locations: list[str] = []
        self.indices: list[tuple[int, ...]] = []
        self.kinds: list[str] = []
        self.markers: list[tuple[int, str]] = []

    def add(self, location: str, index: tuple[int, ...], block: Any, head: bytes, tail: bytes = b"") -> bytes:
        """Append the position of ``block``; returns its record (``head + json(block) + tail``).

        The block is serialised as sent; only when the bytes contain ``"cache_control"``
        (a marker, or those words in a text) is it serialised again without markers, so
        moving a breakpoint never changes a hash. A plain string is a text block.
        """
        if type(block) is str:
            raw = orjson.dumps({"type": "text", "text": block})
            kind = "text"
        else:
            raw = orjson.dumps(block)
            found = block.get("type") if type(block) is dict else None
            kind = found if type(found) is str and found in _KINDS else _kind(block)
            if _CC in raw:
                ttl = _marker_ttl(block)
                if ttl is not None:
                    self.markers.append((len(self.hashes), ttl))
                raw = orjson.dumps(_strip(block))
        record = head + raw + tail
        self.cum = cum = _h(self.cum + record)
        self.hashes.append(cum)
        self.total = total = self.total + self.est(block, family=self.family) + 1.0
        self.tokens.append(total)
        self.locations.append(location)
        self.indices.append(index)
        self.kinds.append(kind)
        return record


def fingerprint(
    api: str, obj: Mapping[str, Any], model: str | None = None, estimator: TokenEstimator | None = None
) -> Fingerprints | None:
    """The fingerprints of a parsed request body, or None when the API/shape is not covered."""
    model_obj = obj.get("model")
    model = model if model is not None else (model_obj if isinstance(model_obj, str) else "")
    b = _Builder(estimator or _DEFAULT_ESTIMATOR, model or "")
    system_records: list[bytes] = []
    first_records: list[bytes] = []
    if api == "messages":
        tools = obj.get("tools")
        if isinstance(tools, list):
            for t, tool in enumerate(tools):
                b.add("tools", (t,), tool, b'"t"')
        system = obj.get("system")
        blocks = (
            [system] if isinstance(system, str) and system else system if isinstance(system, list) else []
        )
        for s, block in enumerate(blocks):
            system_records.append(b.add("system", (s,), block, b'"s"'))
        ctx = obj.get("tool_choice"), obj.get("thinking")
        ctx_bytes = orjson.dumps(ctx) if ctx != (None, None) else b""
        messages = obj.get("messages")
        if not isinstance(messages, list):
            return None
        first_input: int | None = None
        for m, message in enumerate(messages):
            if not isinstance(message, dict):
                return None
            role = message.get("role")
            if first_input is None and role in _INPUT_ROLES:
                first_input = m
            content = message.get("content")
            parts = [content] if isinstance(content, str) else content if isinstance(content, list) else []
            head = orjson.dumps((m, role))
            for p, block in enumerate(parts):
                rec = b.add("messages", (m, p), block, head, ctx_bytes)
                if m == first_input:
                    first_records.append(rec)
        top = obj.get("cache_control")
        if type(top) is dict:
            target = next(
                (
                    i
                    for i in range(len(b.hashes) - 1, -1, -1)
                    if b.kinds[i] not in _SKIP_AUTOMATIC and not _empty_text_at(messages, b, i)
                ),
                None,
            )
            if target is not None and all(m != target for m, _ in b.markers):
                b.markers.append((target, "1h" if top.get("ttl") == "1h" else "5m"))
    elif api in ("chat_completions", "dashscope_generation"):
        if api == "chat_completions":
            tools = obj.get("tools")
            messages = obj.get("messages")
        else:
            params = obj.get("parameters")
            tools = params.get("tools") if isinstance(params, dict) else None
            inp = obj.get("input")
            messages = inp.get("messages") if isinstance(inp, dict) else None
        if isinstance(tools, list):
            for t, tool in enumerate(tools):
                b.add("tools", (t,), tool, b'"t"')
        if not isinstance(messages, list):
            return None
        leading = True
        first_input = None
        for m, message in enumerate(messages):
            if not isinstance(message, dict):
                return None
            role = message.get("role")
            if leading and role not in ("system", "developer"):
                leading = False
            location = "system" if leading else "messages"
            if first_input is None and not leading and role in _INPUT_ROLES:
                first_input = m
            header = (m, role, message.get("tool_call_id"), message.get("name"))
            content = message.get("content")
            parts = [content] if isinstance(content, str) else content if isinstance(content, list) else []
            calls = message.get("tool_calls")
            calls_bytes = orjson.dumps(calls) if calls else b""
            if not parts and calls:
                parts = [{"type": "tool_calls"}]
            head = orjson.dumps(header)
            last = len(parts) - 1
            for p, block in enumerate(parts):
                rec = b.add(location, (m, p), block, head, calls_bytes if p == last else b"")
                if location == "system":
                    system_records.append(rec)
                elif m == first_input:
                    first_records.append(rec)
    else:
        return None
    sys_anchor = _h(b"sys\x00" + b"".join(system_records)) if system_records else None
    first_anchor = _h(b"msg0\x00" + b"".join(first_records)) if first_records else None
    conversation = _h(b"conv\x00" + (sys_anchor or b"") + first_anchor) if first_anchor is not None else None
    b.markers.sort()
    return Fingerprints(
        model=model or "",
        hashes=tuple(b.hashes),
        tokens=tuple(b.tokens),
        locations=tuple(b.locations),
        indices=tuple(b.indices),
        kinds=tuple(b.kinds),
        markers=tuple(b.markers),
        conversation=conversation,
        first_message=first_anchor,
        system=sys_anchor,
    )


def _empty_text_at(messages: list[Any], b: _Builder, i: int) -> bool:
    if b.locations[i] != "messages" or b.kinds[i] != "text":
        return False
    m, p = b.indices[i]
    content = messages[m].get("content")
    block = content if isinstance(content, str) else content[p]
    return _empty_text(block)


def conversation_key(api: str, obj: Mapping[str, Any]) -> bytes | None:
    """The model-free key of a conversation: its system prompt plus its first input message."""
    fp = fingerprint(api, obj, "", _DEFAULT_ESTIMATOR)
    return fp.conversation if fp is not None else None


# -- the store ------------------------------------------------------------------------


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
        )


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
                if entry.pending_waste:
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
                claimed = replace(entry, wasted=True)
                self._data[key] = claimed
                out.append(claimed)
        return out


# -- verdicts and per-request state ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class MissVerdict:
    """Why a request read less from the cache than its prefix allowed."""

    reason: str
    #: Position (in this request) of the prefix it could have read, or of the first changed block.
    position: int | None = None
    #: Dotted path of that position (``messages.3.0``) and the block's kind; never content.
    block: str | None = None
    kind: str | None = None
    #: Estimated tokens it could have read, and what it read.
    expected_tokens: int = 0
    read_tokens: int = 0
    #: Provider reason (``provider_reported``), or a short numeric detail.
    detail: str | None = None
    #: The local verdict when the provider's reason won.
    local_reason: str | None = None

    def as_extra(self) -> dict[str, object]:
        """The span/log attributes (``record.extra``) of this verdict."""
        out: dict[str, object] = {"miss_reason": self.reason}
        if self.reason.startswith("prefix_changed") and self.block is not None:
            out["miss_changed_block"] = self.block
            out["miss_changed_position"] = self.position if self.position is not None else -1
            if self.kind is not None:
                out["miss_changed_kind"] = self.kind
        elif self.block is not None:
            out["miss_block"] = self.block
        if self.expected_tokens:
            out["miss_expected_tokens"] = self.expected_tokens
        if self.detail is not None:
            out["miss_detail"] = self.detail
        if self.local_reason is not None:
            out["miss_local_reason"] = self.local_reason
        return out


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
    ) -> RequestState:
        """Register a request about to be sent (``now``: its start). Cheap: nothing is parsed.

        ``body`` is the outgoing body, as bytes (parsed lazily, only when needed) or
        already parsed. ``labels`` = (provider, model, workspace) label values.
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
            if obj is None:
                body = state.body
                if (
                    body
                    and len(body) <= self.max_bytes
                    and (state.has_markers or (state.has_markers is None and b"cache_control" in body))
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
        if provider_reason and provider_reason not in _UNINFORMATIVE_PROVIDER:
            verdict = MissVerdict(
                "provider_reported",
                detail=provider_reason,
                local_reason=verdict.reason if verdict is not None else None,
                read_tokens=usage.cache_read,
            )
        if self._last_sweep is None or now - self._last_sweep >= self.sweep_interval:
            self.sweep(now)
        return verdict

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
        n = min(len(fp.hashes), self.max_positions)
        keys = fp.keys(n)
        anchor_keys = [
            _h(tag + a)
            for tag, a in ((b"a:conv", fp.conversation), (b"a:msg0", fp.first_message), (b"a:sys", fp.system))
            if a is not None
        ]
        found = self.store.get_many(keys + anchor_keys)
        sent = state.sent_at
        total_raw = fp.tokens[-1] if fp.tokens else 0.0
        prompt = usage.prompt_total
        ratio = min(5.0, max(0.2, prompt / total_raw)) if prompt > 0 and total_raw > 0 else 1.0
        tokens = [t * ratio for t in fp.tokens[:n]]
        read = usage.cache_read
        marker_positions = [m for m, _ in fp.markers if m < n]

        def reachable(i: int) -> bool:
            return any(0 <= m - i < self.lookback for m in marker_positions)

        # (position, state, entry) of every earlier write of one of this request's prefixes.
        cands: list[tuple[int, str, Entry | None]] = []
        expired_seen = False
        for i in range(n):
            e = found[i]
            if e is None or e.written_at > sent:
                continue
            if not e.cached:
                cands.append((i, "unwritten", e))
            elif e.expires_at <= sent:
                cands.append((i, "expired", e))
                expired_seen = True
            elif e.readable_at > sent:
                cands.append((i, "inflight", e))
            else:
                cands.append((i, "live" if reachable(i) else "far", e))
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
            diff = abs(size(c) - read)
            if diff < best or (diff == best and c[0] > read_pos):
                read_pos, best = c[0], diff
        slack = 16.0

        verdict: MissVerdict | None = None
        deeper = [c for c in cands if c[1] != "unwritten" and c[0] > read_pos and size(c) - read > slack]
        for st, reason in (
            ("live", "evicted"),
            ("inflight", "write_in_flight"),
            ("expired", "ttl_expired"),
            ("far", "lookback_exceeded"),
        ):
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

        anchor: Entry | None = next((e for e in found[n:] if e is not None and e.written_at <= sent), None)
        if verdict is None and anchor is not None and anchor.cached and anchor.tokens - read > slack:
            verdict = self._anchor_verdict(fp, anchor, n, tokens, read, sent)

        if (
            verdict is None
            and usage.cache_read == 0
            and usage.cache_write == 0
            and marker_positions
            and (cands or anchor is not None)
        ):
            deepest = max(marker_positions)
            detail = str(int(tokens[deepest]))
            minimum = state.min_tokens() if callable(state.min_tokens) else state.min_tokens
            if minimum is not None:
                detail += f"<{minimum}"
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
        self._update(state, fp, usage, n, keys, found, cands, read_pos, tokens, anchor_keys)
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

    def _anchor_verdict(
        self, fp: Fingerprints, anchor: Entry, n: int, tokens: list[float], read: int, sent: float
    ) -> MissVerdict | None:
        if anchor.model != fp.model:
            return MissVerdict("model_changed", expected_tokens=anchor.tokens, read_tokens=read)
        h = anchor.hashes
        stored = len(h) // _ANCHOR_HASH
        d: int | None = None
        for i in range(min(stored, n)):
            if h[i * _ANCHOR_HASH : (i + 1) * _ANCHOR_HASH] != fp.hashes[i][:_ANCHOR_HASH]:
                d = i
                break
        if d is None:
            # Identical through what both hold: unchanged, a shorter request, or beyond the kept hashes.
            return None
        if d > anchor.position:
            return None
        location = fp.locations[d]
        if location == "messages" and (d == 0 or fp.locations[d - 1] != "messages"):
            # The very first message differs: another conversation on the same tools and
            # system prompt, whose own prefix was never written. Not a miss.
            return None
        if anchor.expires_at <= sent:
            return MissVerdict("ttl_expired", expected_tokens=anchor.tokens, read_tokens=read)
        return MissVerdict(
            f"prefix_changed_{location}",
            position=d,
            block=fp.path(d),
            kind=fp.kinds[d],
            expected_tokens=anchor.tokens,
            read_tokens=read,
        )

    def _update(
        self,
        state: RequestState,
        fp: Fingerprints,
        usage: TokenUsage,
        n: int,
        keys: list[bytes],
        found: list[Entry | None],
        cands: list[tuple[int, str, Entry | None]],
        read_pos: int,
        tokens: list[float],
        anchor_keys: list[bytes],
    ) -> None:
        sent = state.sent_at
        readable = state.response_at if state.response_at is not None else sent
        provider, model_label, workspace = state.labels
        items: dict[bytes, Entry] = {}
        # Entries this request read: refreshed (the TTL restarts at this request's start).
        for i, st, e in cands:
            if e is not None and st == "live" and i <= read_pos:
                items[keys[i]] = replace(e, refreshed_at=max(e.refreshed_at, sent), read=True)
        # This request's own breakpoints; its write tokens are attributed to the ones past the read.
        markers = [(m, ttl) for m, ttl in fp.markers if m < n]
        read_tokens = float(usage.cache_read)
        fresh = [(m, ttl) for m, ttl in markers if m > read_pos and tokens[m] > read_tokens]
        shares: dict[int, int] = {}
        write = usage.cache_write
        if fresh and write > 0:
            incs: list[float] = []
            prev = read_tokens
            for m, _ in fresh:
                incs.append(max(tokens[m] - prev, 1.0))
                prev = max(prev, tokens[m])
            scale = write / sum(incs)
            given = 0
            for k, (m, _) in enumerate(fresh):
                share = write - given if k == len(fresh) - 1 else int(incs[k] * scale)
                shares[m] = share
                given += share
        deepest: Entry | None = None
        for m, ttl_name in markers:
            ttl = min(TTL_SECONDS[ttl_name], state.max_ttl)
            key = keys[m]
            existing = items.get(key) or found[m]
            live = existing is not None and existing.cached and existing.expires_at > sent
            if m in shares or (write == 0 and m > read_pos and tokens[m] > read_tokens):
                share = shares.get(m, 0)
                cached = share > 0
                entry = Entry(
                    written_at=sent, refreshed_at=sent, ttl=ttl, model=fp.model, tokens=int(tokens[m]),
                    position=m, readable_at=readable, cached=cached, written_tokens=share,
                    provider=provider, model_label=model_label, workspace=workspace,
                )  # fmt: skip
                if existing is not None and live and cached and existing.pending_waste:
                    # A fan-out wrote the same prefix again: both writes are waste unless read.
                    entry = replace(
                        entry,
                        written_at=min(existing.written_at, sent),
                        readable_at=min(existing.readable_at, readable),
                        written_tokens=existing.written_tokens + share,
                    )
                elif existing is not None and live and not cached:
                    entry = existing
            elif existing is not None and live:
                entry = replace(
                    existing, refreshed_at=max(existing.refreshed_at, sent), ttl=max(existing.ttl, ttl)
                )
            else:
                entry = Entry(
                    written_at=sent, refreshed_at=sent, ttl=ttl, model=fp.model, tokens=int(tokens[m]),
                    position=m, readable_at=readable, cached=True, written_tokens=0,
                    provider=provider, model_label=model_label, workspace=workspace,
                )  # fmt: skip
            items[key] = entry
            deepest = entry
        if deepest is not None and anchor_keys:
            limit = min(deepest.position + 1, self.max_anchor_positions)
            hashes = b"".join(fp.hashes[i][:_ANCHOR_HASH] for i in range(limit))
            anchor = replace(deepest, hashes=hashes, written_tokens=0, read=False, wasted=False)
            for key in anchor_keys:
                items[key] = anchor
        if items:
            self.store.put_many(list(items.items()))
