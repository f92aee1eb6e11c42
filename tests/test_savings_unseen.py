"""Unseen traffic shapes that broke ``auto``'s promise, run end to end (``benchmarks/savings_unseen.py``).

Each workload below cost more than 1.01x the best fixed strategy before the policy rule
it exposed was fixed (in parentheses, the ratio before): an agent whose turns end in a
screenshot (1.171x, a document sighted twice as its own recurrence; a conversation that
was steady once and then changed on every request), prompts at the model's minimum
(1.232x, skipped on a point estimate), a sliding-window chat (1.029x) and a Qwen
OpenAI-compatible two-turn chat (1.020x). Every run is the real SDK against the emulator,
every fixed strategy is run too, and ``auto`` must cost at most 1.01x the best of them.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from _bench import load_benchmark


@pytest.fixture(scope="module")
def unseen() -> ModuleType:
    return load_benchmark("savings_unseen", "cachewatch_savings_unseen_benchmark")


@pytest.mark.parametrize(
    "name", ["screenshot agent", "prefix at minimum", "sliding-window chat", "Qwen compat 2-turn"]
)
def test_auto_costs_at_most_the_best_fixed_strategy_on_unseen_traffic(unseen: ModuleType, name: str) -> None:
    savings = unseen.S
    workload = unseen.WORKLOADS[name]
    results = {
        strategy: unseen._run(workload, strategy, {}, "")
        for strategy in savings.STRATEGIES
        if unseen._applicable(workload, strategy)
    }
    best = savings.best_fixed(results)
    auto = results["auto"].bill.cost
    assert auto <= savings.BAR * results[best].bill.cost, (best, {s: r.bill.cost for s, r in results.items()})
