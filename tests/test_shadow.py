"""The shadow estimate (``breakpoints="shadow"``), sans-IO: what ``auto`` would have cost.

Traffic goes through the emulator's cache model in process (``_cache_sim``) twice: once
with ``auto`` (a real planner, its markers billed by the cache model) and once unchanged
with the shadow estimate beside it. The estimate must be within 10 % of what ``auto``
really cost on the same traffic (issue 17's bar), on traffic generated as in the regret
test; the cache rules it simulates are checked one by one on small exchanges.
"""

from __future__ import annotations

import gc
import random
import types
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import test_regret
from _cache_sim import Run
from cachewatch.accounting._records import TokenUsage
from cachewatch.emulator import ManualClock
from cachewatch.simulation._shadow import Shadow

MODEL = "claude-sonnet-4-6"
_WHERE = {"api": "messages", "host": "api.anthropic.com", "path": "/v1/messages"}
SECRET = "Zanzibar-7781-confidential"


def _words(seed: str, n: int) -> str:
    rng = random.Random(seed)
    return " ".join(
        rng.choice(("cache", "prompt", "policy", "refund", "order", "the", "a")) for _ in range(n)
    )


def _body(system: str, *questions: str) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for i, q in enumerate(questions):
        if i:
            messages.append({"role": "assistant", "content": f"Answer {i}."})
        messages.append({"role": "user", "content": q})
    return {"model": MODEL, "max_tokens": 16, "system": system, "messages": messages}


def _usage(total: int) -> TokenUsage:
    return TokenUsage(input=total, output=5)


class _Sim:
    """A shadow on a manual clock; ``send`` plays one exchange billed at ``total`` tokens."""

    def __init__(self) -> None:
        self.clock = ManualClock(start=1_000_000.0)
        self.shadow = Shadow(clock=self.clock)

    def begin(self, body: dict[str, Any], **where: str) -> Any:
        return self.shadow.begin(body=orjson.dumps(body), scope="k", **{**_WHERE, **where})

    def send(self, body: dict[str, Any], total: int, **where: str) -> Any:
        ticket = self.begin(body, **where)
        assert ticket is not None
        self.shadow.started(ticket)
        return self.shadow.finish(ticket, _usage(total))


# -- accuracy --------------------------------------------------------------------------


def _both(traffic: list[tuple[float, dict[str, Any]]]) -> tuple[float, float, float]:
    auto, shadow = Run.start("auto"), Run.start("shadow")
    for gap, body in traffic:
        for run in (auto, shadow):
            run.wait(gap)
            run.send(body)
    return auto.cost, shadow.shadow_cost, shadow.cost


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.lists(test_regret._REGIME, min_size=1, max_size=3))
def test_the_estimate_is_within_ten_percent_of_what_auto_costs(
    seed: int, regimes: list[tuple[str, int, int]]
) -> None:
    traffic, _ = test_regret._build(seed, regimes)
    auto, estimate, real = _both(traffic)
    assert abs(estimate - auto) <= 0.10 * auto, (auto, estimate, real)


def test_a_chat_estimate_reads_the_system_prompt_and_the_previous_turns() -> None:
    system = "Support assistant. " + _words("system", 2_400)
    questions = [f"Question {t}: " + _words(f"q{t}", 60) for t in range(4)]
    auto, estimate, real = _both([(20.0, _body(system, *questions[: t + 1])) for t in range(4)])
    assert estimate < 0.6 * real  # sent uncached, it would have been far cheaper with auto
    assert abs(estimate - auto) <= 0.02 * auto


# -- the cache rules, one by one ------------------------------------------------------------


def test_a_later_request_reads_what_an_earlier_one_would_have_written() -> None:
    sim = _Sim()
    system = "Assistant. " + _words("s", 2_000)
    first = sim.send(_body(system, "Question one?"), 2_600)
    assert first.simulated
    assert first.usage.cache_read == 0
    assert first.usage.cache_write_5m > 2_000
    assert first.usage.prompt_total == 2_600
    assert first.usage.output == 5
    sim.clock.advance(30)
    second = sim.send(_body(system, "Question one?", "Question two?"), 2_650)
    assert second.usage.cache_read >= first.usage.cache_write_5m - 50  # the first turn's prefix
    assert second.usage.prompt_total == 2_650


def test_a_read_of_a_whole_earlier_prompt_counts_what_that_prompt_was_billed() -> None:
    # The local estimate shares the billed total out by its own counts; a prefix that was a
    # whole earlier prompt needs no estimate: it is as long as that prompt was billed.
    sim = _Sim()
    system = "Assistant. " + _words("s", 2_000)
    first = sim.send(_body(system, "Question one?"), 2_600)
    assert first.usage.cache_write_5m == 2_600  # written up to its last block
    sim.clock.advance(30)
    # The provider bills the next turn far above what the estimate shares would give it.
    second = sim.send(_body(system, "Question one?", "Question two? " + _words("t", 30)), 4_100)
    assert second.usage.cache_read == 2_600
    assert second.usage.cache_write_5m == 1_500
    assert second.usage.prompt_total == 4_100


def test_entries_expire_after_their_ttl_and_a_hit_refreshes_them() -> None:
    sim = _Sim()
    system = "Assistant. " + _words("s", 2_000)
    sim.send(_body(system, "One?"), 2_500)
    sim.clock.advance(280)
    refreshed = sim.send(_body(system, "Two?"), 2_500)
    assert refreshed.usage.cache_read > 2_000  # read at 280 s: the TTL restarts
    sim.clock.advance(280)
    again = sim.send(_body(system, "Three?"), 2_500)
    assert again.usage.cache_read > 2_000  # 560 s after the write, 280 s after the refresh
    sim.clock.advance(301)
    expired = sim.send(_body(system, "Four?"), 2_500)
    assert expired.usage.cache_read == 0


def test_a_write_is_readable_only_once_its_response_has_started() -> None:
    sim = _Sim()
    system = "Assistant. " + _words("s", 2_000)
    a = sim.begin(_body(system, "A?"))
    b = sim.begin(_body(system, "B?"))  # in flight together: neither can read the other
    sim.shadow.started(a)
    sim.shadow.started(b)
    for ticket in (a, b):
        outcome = sim.shadow.finish(ticket, _usage(2_500))
        assert outcome.usage.cache_read == 0
    c = sim.send(_body(system, "C?"), 2_500)
    assert c.usage.cache_read > 2_000


def test_a_failed_request_writes_nothing() -> None:
    sim = _Sim()
    system = "Assistant. " + _words("s", 2_000)
    ticket = sim.begin(_body(system, "A?"))
    sim.shadow.started(ticket, 529)
    assert sim.shadow.finish(ticket, None, 529) is None
    after = sim.send(_body(system, "B?"), 2_500)
    assert after.usage.cache_read == 0
    assert after.usage.cache_write_5m > 0


def test_a_write_the_billed_total_puts_below_the_minimum_is_withdrawn() -> None:
    sim = _Sim()
    system = "Assistant. " + _words("s", 1_400)  # estimated above 1,024
    small = sim.send(_body(system, "A?"), 900)  # ...but the provider counted 900 tokens
    assert small.usage.cache_write_5m == small.usage.cache_read == 0
    assert small.usage.input == 900
    sim.clock.advance(10)
    after = sim.send(_body(system, "B?"), 900)
    assert after.usage.cache_read == 0  # nothing was written to read


def test_a_read_of_a_prefix_the_billed_total_puts_below_the_minimum_is_undone() -> None:
    """B starts while A (which reserved a write on its estimate) is still running, and
    reads that entry; both prompts are billed below the model's minimum: the provider never
    wrote it, so B read nothing, and nobody reads it later."""
    sim = _Sim()
    system = "Assistant. " + _words("s", 1_400)  # estimated above 1,024
    a = sim.begin(_body(system, "A?"))
    sim.shadow.started(a)  # A's reserved write is readable...
    b = sim.begin(_body(system, "B?"))  # ...and B, sent now, finds it
    first = sim.shadow.finish(a, _usage(900))  # the provider counted 900 tokens
    sim.shadow.started(b)
    second = sim.shadow.finish(b, _usage(900))
    assert first.usage.cache_write_5m == first.usage.cache_read == 0
    assert second.usage.cache_read == 0
    assert second.usage.input == 900
    sim.clock.advance(10)
    assert sim.send(_body(system, "C?"), 900).usage.cache_read == 0


def test_a_fault_after_planning_ends_the_shadow_plans_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planner claimed the prefixes this request writes (others wait for it); a fault in
    the simulation must end those claims, as the engine ends auto's on a fault."""
    from cachewatch.simulation._cache import CacheStore

    sim = _Sim()

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the simulated cache exploded")

    monkeypatch.setattr(CacheStore, "reserve", boom)
    system = "Assistant. " + _words("s", 2_000)
    with pytest.raises(RuntimeError):  # the caller's to count
        sim.begin(_body(system, "A?"))
    assert sim.shadow.planner.learner.claims() == 0


def test_requests_auto_would_leave_alone_keep_their_real_usage() -> None:
    sim = _Sim()
    tiny = sim.send(_body("Be brief.", "Hi?"), 40)  # below every minimum: no marker
    assert not tiny.simulated
    assert tiny.usage == _usage(40)
    chat = {"model": "gpt-5", "messages": [{"role": "user", "content": "Hi"}]}
    openai = sim.begin(chat, api="chat_completions", host="api.openai.com", path="/v1/chat/completions")
    assert openai is None  # no markers on OpenAI: auto sends what was sent


def test_a_request_auto_would_send_unchanged_for_a_number_it_cannot_keep_is_not_simulated() -> None:
    """auto leaves a body alone when re-serialising it would change one of the caller's
    numbers (an integer outside 64 bits: ``lossy_json``); the shadow, which plans without
    serialising, must make the same decision, not project reads auto never gets."""
    from cachewatch.planning._planner import Planner

    system = "Assistant. " + _words("s", 2_000)
    wide = orjson.dumps(_body(system, "A?"))[:-1] + b',"metadata":{"n":123456789012345678901234567890}}'
    auto = Planner().plan(body=wide, scope="k", **_WHERE)
    assert auto.body is None  # auto sends it unchanged
    assert auto.error == "lossy_json"
    sim = _Sim()
    for _ in range(2):  # nothing written, so nothing read the second time either
        # None: nothing to simulate, the real usage stands (as ShadowStage records it).
        assert sim.shadow.begin(body=wide, scope="k", **_WHERE) is None
        sim.clock.advance(30)
    assert sim.shadow.planner.learner.claims() == 0
    # A body whose numbers survive is planned, and simulated, as before.
    assert sim.send(_body(system, "B?"), 2_600).simulated


def test_caches_are_separate_per_scope_and_model() -> None:
    sim = _Sim()
    system = "Assistant. " + _words("s", 2_000)
    sim.send(_body(system, "A?"), 2_500)
    other_key = sim.shadow.begin(body=orjson.dumps(_body(system, "B?")), scope="other", **_WHERE)
    sim.shadow.started(other_key)
    assert sim.shadow.finish(other_key, _usage(2_500)).usage.cache_read == 0
    body = {**_body(system, "C?"), "model": "claude-opus-4-1"}
    assert sim.send(body, 2_500).usage.cache_read == 0


# -- no text, no key ---------------------------------------------------------------------


def _reachable_strings(root: object) -> list[str | bytes]:
    """Every str and bytes reachable from ``root`` through instances and containers."""
    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType)
    seen: set[int] = set()
    stack: list[object] = [root]
    found: list[str | bytes] = []
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        if isinstance(obj, (str, bytes)):
            found.append(obj)
            continue
        stack.extend(gc.get_referents(obj))
    return found


def test_shadow_state_holds_no_prompt_text() -> None:
    sim = _Sim()
    system = f"Assistant for {SECRET}. " + _words("s", 2_000)
    for turn in range(3):
        body = _body(system, *[f"{SECRET} question {t}" for t in range(turn + 1)])
        ticket = sim.begin(body)
        sim.shadow.started(ticket)
        sim.shadow.finish(ticket, _usage(2_600 + turn * 40))
        sim.clock.advance(15)
    strings = _reachable_strings(sim.shadow)
    assert strings  # the walk does reach the state (profile names, model ids...)
    leaks = [s for s in strings if (SECRET in s if isinstance(s, str) else SECRET.encode() in s)]
    assert not leaks
