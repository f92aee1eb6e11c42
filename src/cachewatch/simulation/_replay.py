"""``cachewatch replay``: a recorded traffic shape, run through every marker strategy.

Data flow: shape file (``_shape``) -> one synthetic body per exchange -> per strategy, the
cache model (``_cache``) in the order the exchanges really began, started and ended ->
a bill per strategy -> the comparison table.

Each recorded block becomes a synthetic text derived from its digest and sized to its
token count, so equal blocks stay equal and a changed block changes every prefix after
it, exactly as in the real traffic. Prefix identities are the planner's layout digests
of those bodies; sizes are the recorded tokens (shares of what the provider billed).

Strategies:

* ``off``: the requests as they were sent (the caller's own markers);
* ``auto``: a real :class:`~cachewatch.planning._planner.Planner` planning the synthetic
  bodies on the replay clock, with its feedback (what ``breakpoints="auto"`` would do);
* the fixed strategies of ``benchmarks/savings.py``, in place of the caller's markers:
  ``none``; ``system`` (the last system block); ``sys+last`` (and the last block of the
  last message); ``top-level`` (Anthropic's automatic mode: the last cacheable block;
  Anthropic profile only); ``litellm`` (the system and the last user turn, a user message
  that is not only tool results).

Every strategy is billed by the same cache model with the same rules (the profile's
minimum and lookback, 5m/1h TTLs refreshed on a hit, writes readable once the response
that made them started). ``recorded`` is what the provider really billed. An exchange
to an endpoint without markers (OpenAI, DeepSeek...) or to a profile replay does not
know keeps its recorded usage under every strategy. Money is priced with a
:class:`~cachewatch.accounting._pricing.PriceTable` as explicit-cache usage.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from ..accounting._pricing import PriceTable
from ..accounting._records import TokenUsage
from ..planning._plan import Plan
from ..planning._planner import Planner
from ..planning._profiles import Profile, ProfileRegistry
from ..planning._tokens import TokenEstimator
from ..planning._walk import walk
from ._cache import Breakpoint, CacheStore, Reservation, Ttl, bill
from ._shadow import breakpoints_of
from ._shape import Block, ExchangeShape

__all__ = ["FIXED", "STRATEGIES", "ReplayResult", "Totals", "replay"]

FIXED: Final = ("none", "system", "sys+last", "top-level", "litellm")
STRATEGIES: Final = ("off", "auto", *FIXED)

#: A (host, path) the shipped profile registry matches to each profile that takes markers.
_ENDPOINTS: Final[Mapping[str, tuple[str, str]]] = {
    "anthropic": ("api.anthropic.com", "/v1/messages"),
    "dashscope": ("dashscope-intl.aliyuncs.com", "/apps/anthropic/v1/messages"),
    "dashscope_openai": ("dashscope-intl.aliyuncs.com", "/compatible-mode/v1/chat/completions"),
    "dashscope_native": ("dashscope-intl.aliyuncs.com", "/api/v1/services/aigc/text-generation/generation"),
    "relay": ("relay.invalid", "/v1/messages"),
}
#: Token-unit weights: uncached input, 5-minute write, 1-hour write, read.
UNITS: Final = {"input": 1.0, "w5m": 1.25, "w1h": 2.0, "read": 0.1}
_VOCAB: Final = [
    "cache",
    "prompt",
    "policy",
    "refund",
    "order",
    "invoice",
    "account",
    "region",
    "ticket",
    "report",
    "metric",
    "alert",
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "for",
    "on",
    "with",
    "that",
    "by",
    "this",
    "be",
    "are",
    "from",
    "as",
    "at",
    "or",
    "an",
    "it",
    "not",
]


@dataclass
class Totals:
    """What one strategy was billed over the replay."""

    requests: int = 0
    input: int = 0
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    output: int = 0
    #: Money per currency (requests whose model has a price).
    cost: dict[str, float] = field(default_factory=dict)
    #: Requests whose model has no price.
    unpriced: int = 0

    def add(self, usage: TokenUsage, model: str, prices: PriceTable) -> None:
        self.requests += 1
        self.input += usage.input
        self.cache_read += usage.cache_read
        self.cache_write_5m += usage.cache_write_5m
        self.cache_write_1h += usage.cache_write_1h
        self.output += usage.output
        cost = prices.cost(model, usage)
        if cost is None:
            self.unpriced += 1
        else:
            self.cost[cost.currency] = self.cost.get(cost.currency, 0.0) + cost.total

    @property
    def units(self) -> float:
        """Net input cost in token units (input 1, 5m write 1.25, 1h write 2, read 0.1)."""
        return (
            self.input * UNITS["input"]
            + self.cache_write_5m * UNITS["w5m"]
            + self.cache_write_1h * UNITS["w1h"]
            + self.cache_read * UNITS["read"]
        )


@dataclass
class ReplayResult:
    """Per strategy, what the recorded traffic would have been billed; ``recorded``: what it was."""

    strategies: dict[str, Totals]
    recorded: Totals
    #: Exchanges every strategy billed as recorded (no markers there, or an unknown profile).
    as_recorded: int = 0
    #: Exchanges whose synthetic body did not lay out as recorded (``auto`` kept their usage).
    misaligned: int = 0


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(slots=True)
class _Prepared:
    """One exchange, ready for every strategy."""

    profile: Profile | None
    hashes: list[bytes] = field(default_factory=list)
    cumulative: list[int] = field(default_factory=list)
    body: bytes = b""
    fixed: dict[str, list[Breakpoint]] = field(default_factory=dict)
    min_tokens: int = 0


def replay(
    exchanges: Iterable[ExchangeShape],
    *,
    strategies: Sequence[str] = STRATEGIES,
    prices: PriceTable | None = None,
    planner_options: Mapping[str, Any] | None = None,
) -> ReplayResult:
    """Run ``exchanges`` through each of ``strategies``; see the module docstring."""
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        raise ValueError(f"unknown strategies {sorted(unknown)}; known: {', '.join(STRATEGIES)}")
    prices = prices if prices is not None else PriceTable()
    registry = ProfileRegistry()
    items = list(exchanges)
    texts = _Texts()
    # Each exchange is prepared (its synthetic body built) when it begins and dropped when it
    # ends: memory follows the exchanges in flight, not the length of the recording.
    prepared: dict[int, _Prepared] = {}
    events: list[tuple[float, int, int, int, int]] = []
    for i, x in enumerate(items):
        events.append((x.begin, x.writer, x.order[0], 0, i))
        if x.started is not None:
            events.append((x.started, x.writer, x.order[1], 1, i))
        events.append((x.ended, x.writer, x.order[2], 2, i))
    events.sort()
    clock = _Clock()
    worlds = [_World(s, clock, prices, dict(planner_options or {})) for s in strategies]
    recorded = Totals()
    result = ReplayResult({w.strategy: w.totals for w in worlds}, recorded)
    for when, _, _, kind, i in events:
        clock.now = max(clock.now, when)
        x = items[i]
        prep = prepared.get(i)
        if prep is None:
            prep = prepared[i] = _prepare(x, registry, texts)
        for world in worlds:
            if kind == 0:
                world.begin(i, x, prep)
            elif kind == 1:
                world.started(i, x)
            else:
                world.end(i, x, prep)
        if kind == 0:
            prep.body = b""  # only the planners read it, at the start
        elif kind == 2:
            del prepared[i]
            recorded.add(_recorded(x), x.model, prices)
            if prep.profile is None:
                result.as_recorded += 1
    result.misaligned = max((w.misaligned for w in worlds), default=0)
    return result


def _recorded(x: ExchangeShape) -> TokenUsage:
    return x.usage if x.usage is not None else TokenUsage(input=x.prompt_tokens)


class _World:
    """One strategy's cache, planner and bill."""

    def __init__(self, strategy: str, clock: _Clock, prices: PriceTable, options: dict[str, Any]) -> None:
        self.strategy = strategy
        self.prices = prices
        self.cache = CacheStore(clock)
        self.planner = Planner(clock=clock, **options) if strategy == "auto" else None
        self.totals = Totals()
        self.misaligned = 0
        self._open: dict[int, tuple[Reservation | None, Plan | None]] = {}

    def begin(self, i: int, x: ExchangeShape, prep: _Prepared) -> None:
        profile = prep.profile
        if profile is None:
            self._open[i] = (None, None)
            return
        plan: Plan | None = None
        if self.planner is not None:
            host, path = _ENDPOINTS[profile.name]
            plan = self.planner.plan(api=x.api, host=host, path=path, body=prep.body, scope=x.scope)
            if plan.layout is not None and len(plan.layout.positions) != len(x.blocks):
                self.misaligned += 1
                self._open[i] = (None, plan)
                return
            breakpoints = breakpoints_of(plan, profile)
        elif self.strategy == "off":
            breakpoints = _caller_breakpoints(x, profile)
        else:
            breakpoints = prep.fixed.get(self.strategy, [])
        reservation = None
        if breakpoints:
            reservation = self.cache.reserve(
                prep.hashes,
                prep.cumulative,
                breakpoints,
                lookback=profile.lookback,
                min_tokens=prep.min_tokens,
                namespace=f"{x.scope}\x00{profile.name}\x00{x.model}",
            )
        self._open[i] = (reservation, plan)

    def started(self, i: int, x: ExchangeShape) -> None:
        reservation, plan = self._open.get(i, (None, None))
        status = x.status if x.status is not None else 200
        if reservation is not None and status < 400:
            reservation.commit()
        if plan is not None and self.planner is not None:
            self.planner.started(plan, status)

    def end(self, i: int, x: ExchangeShape, prep: _Prepared) -> None:
        reservation, plan = self._open.pop(i, (None, None))
        usage = _recorded(x)
        if reservation is not None:
            if x.started is None or (x.status or 200) >= 400:
                reservation.withdraw([bp.index for bp in reservation.written])
            total = x.prompt_tokens
            cumulative = [min(total, c) for c in prep.cumulative]
            split = bill(cumulative, reservation.hit, reservation.written, total)
            usage = TokenUsage(
                split.input_tokens, split.cache_read, split.cache_write_5m, split.cache_write_1h, usage.output
            )
        if plan is not None and self.planner is not None:
            self.planner.finished(plan, usage)
            self.planner.observe(plan, usage)
        self.totals.add(usage, x.model, self.prices)


# -- preparing an exchange ----------------------------------------------------------------


def _prepare(x: ExchangeShape, registry: ProfileRegistry, texts: _Texts) -> _Prepared:
    profile = registry.get(x.profile) if x.profile in _ENDPOINTS else None
    if profile is None or not profile.supports_markers or not x.blocks:
        return _Prepared(None)
    body = _synthesize(x, texts)
    obj = orjson.loads(body)
    layout = walk(
        x.api, obj, TokenEstimator(use_qwen_tokenizer=False).prefix(model=x.model, provider="other")
    )
    if layout is None or len(layout.positions) != len(x.blocks):
        return _Prepared(None)
    cumulative: list[int] = []
    running = x.tools[1] if x.tools else 0
    for b in x.blocks:
        running += b.tokens
        cumulative.append(running)
    prep = _Prepared(profile, layout.digests, cumulative, body, min_tokens=profile.min_tokens_for(x.model))
    for strategy in FIXED:
        prep.fixed[strategy] = _fixed(strategy, x, profile)
    return prep


def _last_eligible(blocks: Sequence[Block], indices: Iterable[int]) -> int | None:
    found = None
    for i in indices:
        if blocks[i].eligible and blocks[i].location != "tools":
            found = i
    return found


def _fixed(strategy: str, x: ExchangeShape, profile: Profile) -> list[Breakpoint]:
    """The breakpoints of a fixed strategy (``benchmarks/savings.py``) on a recorded request."""
    blocks = x.blocks
    if strategy == "none":
        return []
    if strategy == "top-level":
        if not profile.top_level_automatic:
            return []
        target = next(
            (
                i
                for i in range(len(blocks) - 1, -1, -1)
                if blocks[i].eligible or blocks[i].location == "tools"
            ),
            None,
        )
        return [] if target is None else [Breakpoint(target, "5m")]
    at: set[int] = set()
    system = _last_eligible(blocks, (i for i, b in enumerate(blocks) if b.location == "system"))
    if system is not None:
        at.add(system)
    messages = [i for i, b in enumerate(blocks) if b.location == "messages"]
    if strategy == "sys+last" and messages:
        last_message = blocks[messages[-1]].index
        found = _last_eligible(blocks, (i for i in messages if blocks[i].index == last_message))
        if found is not None:
            at.add(found)
    elif strategy == "litellm":
        for m in sorted({blocks[i].index for i in messages}, reverse=True):
            own = [i for i in messages if blocks[i].index == m]
            role = x.messages[m].role if m < len(x.messages) else "other"
            if role == "user" and any(blocks[i].kind != "tool_result" for i in own):
                found = _last_eligible(blocks, own)
                if found is not None:
                    at.add(found)
                break
    return [Breakpoint(i, "5m") for i in sorted(at)]


def _caller_breakpoints(x: ExchangeShape, profile: Profile) -> list[Breakpoint]:
    at: dict[int, Ttl] = {}
    for i, b in enumerate(x.blocks):
        if b.marker is not None:
            at[i] = "1h" if b.marker == "1h" and profile.honours_1h else "5m"
    if x.top_level is not None and profile.top_level_automatic:
        target = next((i for i in range(len(x.blocks) - 1, -1, -1) if x.blocks[i].eligible), None)
        if target is not None:
            at.setdefault(target, "1h" if x.top_level == "1h" and profile.honours_1h else "5m")
    out = [Breakpoint(i, ttl) for i, ttl in sorted(at.items())]
    return out[-profile.max_breakpoints :] if len(out) > profile.max_breakpoints else out


# -- synthetic bodies ---------------------------------------------------------------------


class _Texts:
    """Deterministic synthetic texts by block digest; bounded in memory.

    A block's recorded tokens are its share of each request's billed total, which moves a
    little from request to request; its text must not, or equal prefixes would differ. So a
    digest's size is fixed at its first sight (kept for every digest: a few bytes each) and
    its text is a function of the digest and that size alone. The texts themselves are kept
    up to ``budget`` characters (least recently used first out) and rebuilt when needed.
    """

    def __init__(self, budget: int = 64_000_000) -> None:
        self.budget = budget
        self._sizes: dict[str, int] = {}
        self._texts: OrderedDict[str, str] = OrderedDict()
        self._chars = 0

    def __call__(self, digest: str, tokens: int) -> str:
        found = self._texts.get(digest)
        if found is not None:
            self._texts.move_to_end(digest)
            return found
        size = self._sizes.setdefault(digest, tokens)
        rng = random.Random(int(digest, 16) if digest else 0)
        text = digest + " " + " ".join(rng.choices(_VOCAB, k=max(1, size * 2 // 3)))
        self._texts[digest] = text
        self._chars += len(text)
        while self._chars > self.budget and len(self._texts) > 1:
            self._chars -= len(self._texts.popitem(last=False)[1])
        return text


def _marker(b: Block) -> dict[str, str] | None:
    if b.marker is None:
        return None
    return {"type": "ephemeral", "ttl": "1h"} if b.marker == "1h" else {"type": "ephemeral"}


def _anthropic_block(b: Block, text: str) -> Any:
    if not b.eligible:
        if b.kind == "text":
            return {"type": "text", "text": " "}
        return {"type": "thinking", "thinking": text, "signature": b.digest}
    if b.kind == "tool_result":
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": f"toolu_{b.digest}", "content": text}
    elif b.kind == "tool_use":
        block = {"type": "tool_use", "id": f"toolu_{b.digest}", "name": "tool", "input": {"text": text}}
    else:
        block = {"type": "text", "text": text}
    marker = _marker(b)
    if marker is not None:
        block["cache_control"] = marker
    return block


def _part(b: Block, text: str, native: bool) -> Any:
    if not b.eligible:
        return {"thinking": text} if native else {"type": "thinking", "thinking": text}
    part: dict[str, Any] = {"text": text} if native else {"type": "text", "text": text}
    marker = _marker(b)
    if marker is not None:
        part["cache_control"] = marker
    return part


def _content(parts: list[tuple[Block, Any]]) -> Any:
    if len(parts) == 1 and parts[0][0].plain and parts[0][0].marker is None:
        block = parts[0][1]
        text = block.get("text") if isinstance(block, dict) else None
        if isinstance(text, str):
            return text
    return [p for _, p in parts]


def _synthesize(x: ExchangeShape, texts: _Texts) -> bytes:
    """A body of ``x.api`` with the recorded structure and synthetic texts (see the module docstring)."""
    by_message: dict[int, list[tuple[Block, Any]]] = {}
    system: list[tuple[Block, Any]] = []
    tools: list[Any] = []
    native = x.api == "dashscope_generation"
    for b in x.blocks:
        text = texts(b.digest, b.tokens)
        if b.location == "tools":
            tool: dict[str, Any] = {"name": f"tool_{b.digest}", "description": text, "input_schema": {}}
            if b.marker is not None:
                tool["cache_control"] = _marker(b)
            tools.append(tool)
        elif x.api == "messages":
            rendered = _anthropic_block(b, text)
            (system if b.location == "system" else by_message.setdefault(b.index, [])).append((b, rendered))
        else:
            by_message.setdefault(b.index, []).append((b, _part(b, text, native)))
    messages: list[dict[str, Any]] = []
    for m, message in enumerate(x.messages):
        out: dict[str, Any] = {"role": message.role}
        parts = by_message.get(m)
        if parts is not None:
            out["content"] = _content(parts)
        elif x.api == "messages":
            out["content"] = []
        else:
            out["content"] = None
        if message.header is not None:
            out["name"] = message.header
        if message.calls is not None:
            call = {"id": message.calls, "type": "function", "function": {"name": "f", "arguments": "{}"}}
            out["tool_calls"] = [call]
        messages.append(out)
    body: dict[str, Any] = {"model": x.model}
    if x.api == "messages":
        if tools:
            body["tools"] = tools
        if system:
            body["system"] = _content(system)
        body["messages"] = messages
        if x.context is not None:
            body["tool_choice"] = {"type": "auto", "replay": x.context}
        if x.top_level is not None:
            body["cache_control"] = (
                {"type": "ephemeral", "ttl": "1h"} if x.top_level == "1h" else {"type": "ephemeral"}
            )
        body["max_tokens"] = 1
        return orjson.dumps(body)
    defined = None
    if x.tools is not None:
        digest, tokens = x.tools
        defined = [
            {
                "type": "function",
                "function": {"name": f"t{digest}", "description": texts(digest, tokens)},
            }
        ]
    if native:
        body["input"] = {"messages": messages}
        if defined is not None:
            body["parameters"] = {"tools": defined}
    else:
        body["messages"] = messages
        if defined is not None:
            body["tools"] = defined
    return orjson.dumps(body)
