"""The budget of 1h bets (``planning._budget``): what is charged, what is credited, the bound."""

from __future__ import annotations

import pytest

from cachewatch.planning._budget import OneHourBudget


def test_a_bet_is_affordable_only_once_the_bill_or_the_bets_before_it_pay_for_it() -> None:
    budget = OneHourBudget(share=0.005)
    assert not budget.affords(1_000.0)
    budget.billed(100_000.0)  # 0.5% of it: 500
    assert not budget.affords(1_000.0)
    budget.billed(100_000.0)
    assert budget.affords(1_000.0)
    budget.placed([1, 2], 1_000.0, now=0.0)
    assert budget.balance == pytest.approx(0.0)
    assert not budget.affords(1.0)


def test_only_a_late_read_of_a_bet_is_credited_and_one_per_request() -> None:
    budget = OneHourBudget(share=0.0)
    budget.placed([1, 2], 1_000.0, now=0.0)
    assert budget.has_bets()
    # Within 5 minutes a 5m entry would have served it too: nothing to credit.
    budget.sighted([(2, True, 0.9, 1_000.0)], now=200.0)
    assert budget.balance == pytest.approx(-1_000.0)
    # 5-60 minutes after its last sighting, found cached: only its 1h TTL kept it. Of one
    # request's nested prefixes only the largest saving counts.
    budget.sighted([(1, True, 0.9, 600.0), (2, True, 1.15, 1_000.0)], now=200.0 + 600.0)
    assert budget.balance == pytest.approx(-1_000.0 + 1.15 * 1_000.0)
    # Not cached (the provider evicted it), or past the hour: nothing.
    budget.sighted([(2, False, 1.15, 1_000.0)], now=800.0 + 600.0)
    budget.sighted([(2, True, 1.15, 1_000.0)], now=1_400.0 + 3_700.0)
    assert budget.balance == pytest.approx(150.0)
    budget.sighted([(99, True, 1.15, 1_000.0)], now=9_000.0)  # not a bet: nothing
    assert budget.balance == pytest.approx(150.0)


def test_the_table_of_bets_is_bounded() -> None:
    budget = OneHourBudget(max_bets=3)
    for key in range(10):
        budget.placed([key], 0.0, now=float(key))
    assert len(budget._bets) == 3


def test_a_late_read_is_credited_only_past_what_a_live_entry_would_have_served() -> None:
    # A system prompt kept cached by steady 5m traffic (10,000 tokens) and a document
    # after it, bet on at 1h (12,000 in all). The late return would have read the first
    # 10,000 tokens anyway: the 1h TTL saved only the 2,000 past them.
    budget = OneHourBudget(share=0.0)
    budget.placed([2], 0.75 * 2_000.0, now=0.0)
    budget.sighted([(1, True, 1.15, 10_000.0), (2, True, 1.15, 12_000.0)], now=600.0)
    assert budget.balance == pytest.approx(-0.75 * 2_000.0 + 1.15 * 2_000.0)
    # Where nothing shallower was cached, the whole prefix was saved.
    budget.sighted([(1, False, 0.9, 10_000.0), (2, True, 0.9, 12_000.0)], now=1_200.0)
    assert budget.balance == pytest.approx(-0.75 * 2_000.0 + 1.15 * 2_000.0 + 0.9 * 12_000.0)
