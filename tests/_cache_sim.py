"""A sans-IO provider for placement tests: the emulator's cache model without HTTP.

``Provider.send(body)`` renders an Anthropic Messages body the way the emulator does
(``emulator._anthropic.render``), resolves its breakpoints, bills it against one
:class:`~cachewatch.emulator.CacheStore` on a manual clock and commits the writes at
once (sequential traffic: each response starts before the next request). Strategies
(``none``, ``system``, ``sys+last``, ``top-level``, ``litellm``, ``auto``) are the ones
of ``benchmarks/savings.py``; ``auto`` runs a real :class:`Planner` with its feedback.
``shadow`` sends every body unchanged (as ``none``) and runs the shadow estimate beside
it: ``Run.shadow_cost`` is what it says ``auto`` would have cost.

Cost is in token units: uncached input 1, 5m write 1.25, 1h write 2, read 0.1.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import orjson

from cachewatch.accounting._records import TokenUsage
from cachewatch.emulator import CacheStore, ManualClock
from cachewatch.emulator._anthropic import render
from cachewatch.emulator._cache import resolve_breakpoints
from cachewatch.emulator._profiles import PROFILES
from cachewatch.planning._planner import Planner
from cachewatch.simulation._shadow import Shadow

__all__ = ["FIXED", "Provider", "Run", "apply_strategy", "cost_of"]

FIXED = ("none", "system", "sys+last", "top-level", "litellm")
_EPHEMERAL = {"type": "ephemeral"}
_WHERE = {"api": "messages", "host": "api.anthropic.com", "path": "/v1/messages"}


def cost_of(usage: TokenUsage) -> float:
    return usage.input + 1.25 * usage.cache_write_5m + 2.0 * usage.cache_write_1h + 0.1 * usage.cache_read


class Provider:
    """The emulator's Anthropic cache model, in process."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.store = CacheStore(clock)
        self.profile = PROFILES["anthropic"]

    def send(self, body: dict[str, Any]) -> TokenUsage:
        prompt = render(body)
        top = body.get("cache_control")
        breakpoints = resolve_breakpoints(prompt, top if isinstance(top, dict) else None, self.profile)
        reservation = self.store.begin(
            prompt,
            breakpoints,
            profile=self.profile,
            min_tokens=self.profile.min_tokens_for(prompt.model, None),
            namespace="k",
        )
        reservation.commit()
        u = reservation.usage
        return TokenUsage(
            input=u.input_tokens, cache_read=u.cache_read, cache_write_5m=u.cache_write_5m,
            cache_write_1h=u.cache_write_1h, output=1,
        )  # fmt: skip


def _mark_content(owner: dict[str, Any], key: str) -> None:
    content = owner.get(key)
    if isinstance(content, str) and content.strip():
        owner[key] = [{"type": "text", "text": content, "cache_control": dict(_EPHEMERAL)}]
    elif isinstance(content, list):
        for block in reversed(content):
            if isinstance(block, dict) and block.get("type") == "text" and str(block.get("text", "")).strip():
                block["cache_control"] = dict(_EPHEMERAL)
                return


def apply_strategy(strategy: str, body: dict[str, Any]) -> dict[str, Any]:
    """The body a fixed strategy sends (a deep copy with its markers)."""
    out = copy.deepcopy(body)
    if strategy == "none":
        return out
    if strategy == "top-level":
        out["cache_control"] = dict(_EPHEMERAL)
        return out
    if out.get("system") is not None:
        _mark_content(out, "system")
    messages = out["messages"]
    if strategy == "sys+last":
        _mark_content(messages[-1], "content")
    elif strategy == "litellm":
        for message in reversed(messages):
            if message.get("role") == "user":
                _mark_content(message, "content")
                break
    return out


@dataclass
class Run:
    """One strategy over one request sequence; ``cost`` in token units."""

    strategy: str
    clock: ManualClock
    provider: Provider
    planner: Planner | None
    cost: float = 0.0
    writes_unread: int = 0
    shadow: Shadow | None = None
    #: ``shadow``: what the shadow estimate says ``auto`` would have cost.
    shadow_cost: float = 0.0

    @classmethod
    def start(cls, strategy: str) -> Run:
        clock = ManualClock(start=1_000_000.0)
        planner = Planner(clock=clock) if strategy == "auto" else None
        shadow = Shadow(clock=clock) if strategy == "shadow" else None
        return cls(strategy, clock, Provider(clock), planner, shadow=shadow)

    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def send(self, body: dict[str, Any]) -> TokenUsage:
        if self.shadow is not None:
            raw = orjson.dumps(body)
            ticket = self.shadow.begin(body=raw, **_WHERE, scope="k")
            usage = self.provider.send(orjson.loads(raw))
            outcome = None
            if ticket is not None:
                self.shadow.started(ticket)
                outcome = self.shadow.finish(ticket, usage)
            self.shadow_cost += cost_of(outcome.usage if outcome is not None else usage)
        elif self.planner is None:
            usage = self.provider.send(apply_strategy(self.strategy, body))
        else:
            raw = orjson.dumps(body)
            plan = self.planner.plan(body=raw, **_WHERE)
            sent = orjson.loads(plan.body if plan.body is not None else raw)
            usage = self.provider.send(sent)
            self.planner.started(plan)
            self.planner.finished(plan, usage)
            self.planner.observe(plan, usage)
        self.cost += cost_of(usage)
        return usage
