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
    budget.placed([1, 2], [600.0, 1_000.0], 1_000.0, now=0.0)
    assert budget.balance == pytest.approx(0.0)
    assert not budget.affords(1.0)


def test_only_a_late_read_of_a_bet_is_credited_and_one_per_request() -> None:
    budget = OneHourBudget(share=0.0)
    budget.placed([1, 2], [600.0, 1_000.0], 1_000.0, now=0.0)
    assert budget.has_bets()
    # Within 5 minutes a 5m entry would have served it too: nothing to credit.
    budget.sighted([(2, True, 0.9)], now=200.0)
    assert budget.balance == pytest.approx(-1_000.0)
    # 5-60 minutes after its last sighting, found cached: only its 1h TTL kept it. Of one
    # request's nested prefixes only the largest saving counts.
    budget.sighted([(1, True, 0.9), (2, True, 1.15)], now=200.0 + 600.0)
    assert budget.balance == pytest.approx(-1_000.0 + 1.15 * 1_000.0)
    # Not cached (the provider evicted it), or past the hour: nothing.
    budget.sighted([(2, False, 1.15)], now=800.0 + 600.0)
    budget.sighted([(2, True, 1.15)], now=1_400.0 + 3_700.0)
    assert budget.balance == pytest.approx(150.0)
    budget.sighted([(99, True, 1.15)], now=9_000.0)  # not a bet: nothing
    assert budget.balance == pytest.approx(150.0)


def test_the_table_of_bets_is_bounded() -> None:
    budget = OneHourBudget(max_bets=3)
    for key in range(10):
        budget.placed([key], [1.0], 0.0, now=float(key))
    assert len(budget._bets) == 3
