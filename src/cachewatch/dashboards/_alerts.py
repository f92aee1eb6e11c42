"""Prometheus alerting rules (and their promtool unit tests), built from the metric catalogue.

Rules, in one group ``cachewatch``:

- ``cachewatch:cost_budget_per_hour``: a recording rule holding the hourly budget per
  currency. It is the one place to configure the budget: edit the ``vector(...)``
  constant, or add one rule per currency (keep the ``currency`` label).
- ``CachewatchCacheHitRatioLow``: the prompt-cache hit ratio of a (provider, workspace)
  stayed below a threshold while it had traffic.
- ``CachewatchWastedCacheWritesHigh``: a large share of cache-write tokens expired unread.
- ``CachewatchCacheWritePremiumHigh``: cache writes cost a large share of what cache
  reads save, which is what writes that are never read look like in money.
- ``CachewatchUsageUnreported``: requests kept ending ok without usage, so their tokens
  and cost are unknown (not zero).
- ``CachewatchInternalErrors``: cachewatch survived an internal fault.
- ``CachewatchCostOverBudget``: the hourly cost rate is above the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._promql import PROMPT_TOKEN_TYPES, hit_ratio, sel, sum_increase, sum_rate
from ._queries import WASTED_WRITES_METRIC

__all__ = ["AlertSettings", "build_alert_rules", "build_alert_tests"]

REQ = "cachewatch_requests_total"
COST = "cachewatch_cost_total"
SAV = "cachewatch_cache_savings_total"
PREM = "cachewatch_cache_write_premium_total"
ERR = "cachewatch_internal_errors_total"
TOK = "cachewatch_tokens_total"
UNREP = "cachewatch_usage_unreported_total"
BUDGET_RECORD = "cachewatch:cost_budget_per_hour"


@dataclass(frozen=True)
class AlertSettings:
    """Thresholds of the generated rules (the defaults are what ``dashboards/`` ships)."""

    #: Alert when the hit ratio is below this...
    hit_ratio_threshold: float = 0.3
    #: ...over this window, for as long...
    hit_ratio_window: str = "15m"
    #: ...while the (provider, workspace) served at least this many requests in the window.
    hit_ratio_min_requests: int = 20
    #: Alert when cache-write premium exceeds this share of cache savings...
    premium_to_savings_ratio: float = 0.5
    #: ...and at least this much money went to the premium in the window.
    premium_min_amount: float = 0.01
    premium_window: str = "30m"
    #: With a wasted-write metric: alert when the tokens that expired unread over
    #: ``premium_window`` are this share of the tokens written over the same window
    #: ``wasted_lag`` earlier (a write is counted wasted when its TTL ran out: compared with
    #: the writes of the same window, a client that stopped writing would show its last
    #: expiries as an infinite share)...
    wasted_share: float = 0.5
    wasted_lag: str = "5m"
    #: ...and at least this many tokens expired unread in ``premium_window``.
    wasted_min_tokens: int = 10_000
    #: Hourly budget per currency, recorded as ``cachewatch:cost_budget_per_hour``.
    budgets_per_hour: tuple[tuple[str, float], ...] = (("USD", 10.0),)
    internal_errors_window: str = "10m"
    #: Alert when a (provider, api, model, workspace) had requests without usage over this window.
    usage_unreported_window: str = "15m"


def _rule_expr_hit_ratio(s: AlertSettings) -> str:
    by = ("provider", "workspace")
    ratio = hit_ratio(s.hit_ratio_window, by, templated=False)
    traffic = sum_increase(REQ, by, s.hit_ratio_window, templated=False)
    return f"(\n{ratio}\n) < {s.hit_ratio_threshold:g}\nand on (provider, workspace)\n{traffic} >= {s.hit_ratio_min_requests}"


def _rule_expr_premium(s: AlertSettings) -> str:
    by = ("provider", "model", "workspace", "currency")
    w = s.premium_window
    premium = sum_rate(PREM, by, w, templated=False)
    savings = sum_rate(SAV, by, w, templated=False)
    spent = sum_increase(PREM, by, w, templated=False)
    return (
        f"{premium}\n> {s.premium_to_savings_ratio:g} *\n{savings}\nand\n{spent} > {s.premium_min_amount:g}"
    )


def _rule_expr_wasted(s: AlertSettings) -> str:
    by = ("provider", "model", "workspace")
    writes = sel(TOK, {"type": '=~"cache_write_5m|cache_write_1h"'}, templated=False)
    written = f"sum by ({', '.join(by)}) (rate({writes}[{s.premium_window}] offset {s.wasted_lag}))"
    wasted = sum_rate(WASTED_WRITES_METRIC, by, s.premium_window, templated=False)
    amount = sum_increase(WASTED_WRITES_METRIC, by, s.premium_window, templated=False)
    return f"{wasted}\n/\n{written}\n> {s.wasted_share:g}\nand\n{amount} >= {s.wasted_min_tokens}"


def _rule_expr_internal_errors(s: AlertSettings) -> str:
    w = s.internal_errors_window
    errors = sel(ERR, templated=False)
    # increase() needs two samples of a series, so a fault that creates the series (its
    # first sample is already 1) is caught by the second branch: present now, absent w ago.
    return (
        f"sum by (stage) (increase({errors}[{w}])) > 0\n"
        f"or\nsum by (stage) ({errors} unless {errors} offset {w}) > 0"
    )


def _rule_expr_unreported(s: AlertSettings) -> str:
    by = ("provider", "api", "model", "workspace")
    return f"{sum_increase(UNREP, by, s.usage_unreported_window, templated=False)} > 0"


_UNREPORTED_DESCRIPTION = (
    "These requests ended ok but the provider reported no usage (an OpenAI-compatible stream without "
    "stream_options.include_usage, for instance): their tokens and cost are unknown and missing from "
    "every total. Ask for usage in the client, or let cachewatch do it: "
    "wrap(client, include_usage=True) or cachewatch proxy --include-usage."
)


def _rule_expr_budget() -> str:
    cost = sum_rate(COST, ("currency",), "1h", templated=False)
    return f"{cost} * 3600\n> on (currency)\n{BUDGET_RECORD}"


def build_alert_rules(settings: AlertSettings | None = None) -> dict[str, Any]:
    """The Prometheus rule file (``alerts.yml``) as a dict."""
    s = settings or AlertSettings()
    rules: list[dict[str, Any]] = [
        {"record": BUDGET_RECORD, "expr": f"vector({amount:g})", "labels": {"currency": currency}}
        for currency, amount in s.budgets_per_hour
    ]
    rules.append(
        {
            "alert": "CachewatchCacheHitRatioLow",
            "expr": _rule_expr_hit_ratio(s),
            "for": s.hit_ratio_window,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "Prompt-cache hit ratio of {{ $labels.provider }}/{{ $labels.workspace }} is {{ $value | humanizePercentage }}",
                "description": (
                    f"cache_read / ({' + '.join(PROMPT_TOKEN_TYPES)}) tokens stayed below "
                    f"{s.hit_ratio_threshold:.0%} for {s.hit_ratio_window} while the workspace had traffic. "
                    "Look at the cache-miss reasons panel: a changed system prompt or tool list, "
                    "an expired TTL or breakpoints switched off."
                ),
            },
        }
    )
    rules.append(
        {
            "alert": "CachewatchWastedCacheWritesHigh",
            "expr": _rule_expr_wasted(s),
            "for": "15m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "{{ $value | humanizePercentage }} of cache-write tokens of "
                "{{ $labels.provider }}/{{ $labels.model }} in {{ $labels.workspace }} expire unread",
                "description": (
                    f"Over {s.premium_window}, at least {s.wasted_min_tokens:,} cache-write tokens expired "
                    f"without being read, more than {s.wasted_share:.0%} of the tokens written over the "
                    f"{s.premium_window} before {s.wasted_lag} earlier: the write premium is paid with no discount to show for it. "
                    "Check the breakpoints panel and the miss reasons."
                ),
            },
        }
    )
    rules.append(
        {
            "alert": "CachewatchCacheWritePremiumHigh",
            "expr": _rule_expr_premium(s),
            "for": "15m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "Cache writes of {{ $labels.provider }}/{{ $labels.model }} in {{ $labels.workspace }} cost more than "
                f"{s.premium_to_savings_ratio:.0%} of what cache reads save",
                "description": (
                    f"Over {s.premium_window}, the cache-write premium exceeded {s.premium_to_savings_ratio:.0%} "
                    "of the cache-read savings. Writes that are never read within their TTL (wasted writes) "
                    "pay the premium without earning the discount; this is how they show up in money."
                ),
            },
        }
    )
    rules.append(
        {
            "alert": "CachewatchUsageUnreported",
            "expr": _rule_expr_unreported(s),
            "for": s.usage_unreported_window,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "{{ $value | humanize }} requests to {{ $labels.provider }} {{ $labels.api }} "
                "{{ $labels.model }} in {{ $labels.workspace }} reported no usage",
                "description": _UNREPORTED_DESCRIPTION,
            },
        }
    )
    rules.append(
        {
            "alert": "CachewatchInternalErrors",
            "expr": _rule_expr_internal_errors(s),
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "cachewatch survived internal faults in stage {{ $labels.stage }}",
                "description": (
                    "cachewatch left the traffic untouched but its accounting for the affected requests "
                    "may be incomplete. The log has one line per (stage, exception type)."
                ),
            },
        }
    )
    rules.append(
        {
            "alert": "CachewatchCostOverBudget",
            "expr": _rule_expr_budget(),
            "for": "15m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "LLM spend is {{ $value | humanize }} {{ $labels.currency }} per hour, above budget",
                "description": (
                    "The hourly cost rate over the last hour is above cachewatch:cost_budget_per_hour "
                    "(configured in this file)."
                ),
            },
        }
    )
    return {"groups": [{"name": "cachewatch", "rules": rules}]}


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    rendered = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    # sel() raises for a metric or label that the catalogue does not have.
    sel(name, {k: f'="{v}"' for k, v in labels.items()}, templated=False)
    return {"series": f"{name}{{{rendered}}}", "values": values}


def build_alert_tests(rule_file: str = "alerts.yml") -> dict[str, Any]:
    """A ``promtool test rules`` file with series that fire and do not fire each alert.

    Written for the default :class:`AlertSettings`.
    """
    s = AlertSettings()
    tok = {"provider": "anthropic", "api": "messages", "model": "claude-sonnet-4-6"}
    money = {"provider": "anthropic", "model": "claude-sonnet-4-6", "currency": "USD"}
    req = {**tok, "outcome": "ok"}
    series: list[dict[str, str]] = []
    # Hit ratio: "good" reads 90 %, "bad" 0 %, "quiet" 0 % but with too little traffic.
    for ws, read, uncached, requests in (
        ("good", "900", "100", "10"),
        ("bad", "0", "1000", "10"),
        ("quiet", "0", "1000", "0.5"),
    ):
        for type_, per_minute in (
            ("input", uncached),
            ("cache_read", read),
            ("cache_write_5m", "0"),
            ("cache_write_1h", "0"),
        ):
            series.append(_series(TOK, {**tok, "workspace": ws, "type": type_}, f"0+{per_minute}x60"))
        series.append(_series(REQ, {**req, "workspace": ws}, f"0+{requests}x60"))
    # Write premium vs savings: "wasteful" writes and never reads; "thrifty" saves 10x the premium.
    for ws, premium, savings in (("wasteful", "0.01", "0"), ("thrifty", "0.01", "0.1")):
        series.append(_series(PREM, {**money, "workspace": ws}, f"0+{premium}x60"))
        series.append(_series(SAV, {**money, "workspace": ws}, f"0+{savings}x60"))
    # Internal errors: "planner" keeps failing, "sink" faulted once (the series appears at 1)
    # 5 minutes before the check, "parser" faulted once long ago.
    series.append(_series(ERR, {"stage": "planner"}, "0+1x60"))
    series.append(_series(ERR, {"stage": "sink"}, "_x35 1x25"))
    series.append(_series(ERR, {"stage": "parser"}, "1x60"))
    # Usage unreported: "silent" streams one request a minute without usage, "counted" none.
    unrep = {"provider": "openai", "api": "chat_completions", "model": "gpt-5"}
    series.append(_series(UNREP, {**unrep, "workspace": "silent"}, "0+1x60"))
    series.append(_series(UNREP, {**unrep, "workspace": "counted"}, "0x60"))
    # Cost: "busy" spends 0.5 USD a minute (30/h), "calm" 0.05 (3/h): 33/h in all.
    for ws, per_minute in (("busy", "0.5"), ("calm", "0.05")):
        series.append(_series(COST, {**money, "workspace": ws}, f"0+{per_minute}x90"))
    alerts: list[dict[str, Any]] = [
        {
            "eval_time": "40m",
            "alertname": "CachewatchCacheHitRatioLow",
            "exp_alerts": [
                {
                    "exp_labels": {"severity": "warning", "provider": "anthropic", "workspace": "bad"},
                    "exp_annotations": {
                        "summary": "Prompt-cache hit ratio of anthropic/bad is 0%",
                        "description": (
                            f"cache_read / ({' + '.join(PROMPT_TOKEN_TYPES)}) tokens stayed below "
                            f"{s.hit_ratio_threshold:.0%} for {s.hit_ratio_window} while the workspace had traffic. "
                            "Look at the cache-miss reasons panel: a changed system prompt or tool list, "
                            "an expired TTL or breakpoints switched off."
                        ),
                    },
                }
            ],
        },
        # Below the threshold since the start, but not yet for 15 minutes.
        {"eval_time": "10m", "alertname": "CachewatchCacheHitRatioLow", "exp_alerts": []},
        {
            "eval_time": "50m",
            "alertname": "CachewatchCacheWritePremiumHigh",
            "exp_alerts": [
                {
                    "exp_labels": {"severity": "warning", **money, "workspace": "wasteful"},
                    "exp_annotations": {
                        "summary": "Cache writes of anthropic/claude-sonnet-4-6 in wasteful cost more than "
                        f"{s.premium_to_savings_ratio:.0%} of what cache reads save",
                        "description": (
                            f"Over {s.premium_window}, the cache-write premium exceeded {s.premium_to_savings_ratio:.0%} "
                            "of the cache-read savings. Writes that are never read within their TTL (wasted writes) "
                            "pay the premium without earning the discount; this is how they show up in money."
                        ),
                    },
                }
            ],
        },
        {
            "eval_time": "40m",
            "alertname": "CachewatchUsageUnreported",
            "exp_alerts": [
                {
                    "exp_labels": {"severity": "warning", **unrep, "workspace": "silent"},
                    "exp_annotations": {
                        "summary": "15 requests to openai chat_completions gpt-5 in silent reported no usage",
                        "description": _UNREPORTED_DESCRIPTION,
                    },
                }
            ],
        },
        # Unreported since the start, but not yet for 15 minutes.
        {"eval_time": "10m", "alertname": "CachewatchUsageUnreported", "exp_alerts": []},
        {
            "eval_time": "40m",
            "alertname": "CachewatchInternalErrors",
            "exp_alerts": [
                {
                    "exp_labels": {"severity": "warning", "stage": stage},
                    "exp_annotations": _errors_annotations(stage),
                }
                for stage in ("planner", "sink")
            ],
        },
        {
            "eval_time": "80m",
            "alertname": "CachewatchCostOverBudget",
            "exp_alerts": [
                {
                    "exp_labels": {"severity": "warning", "currency": "USD"},
                    "exp_annotations": {
                        "summary": "LLM spend is 33 USD per hour, above budget",
                        "description": (
                            "The hourly cost rate over the last hour is above cachewatch:cost_budget_per_hour "
                            "(configured in this file)."
                        ),
                    },
                }
            ],
        },
        # The first hour's rate is extrapolated from fewer samples; 10 minutes in, "for" has not elapsed.
        {"eval_time": "10m", "alertname": "CachewatchCostOverBudget", "exp_alerts": []},
    ]
    # Wasted writes: "wasteful" lets 80 % of its writes expire unread, "thrifty" 10 %.
    # "quiet" wrote for 20 minutes, then stopped, and a trickle of its writes expired
    # after: no new writes in 30 minutes is no infinite share, and 3 tokens a minute is
    # under the floor.
    for ws, written, wasted in (
        ("wasteful", "0+1000x60", "0+800x60"),
        ("thrifty", "0+1000x60", "0+100x60"),
        ("quiet", "0+1000x20 20000x40", "0+3x60"),
    ):
        labels = {"provider": "anthropic", "model": "claude-sonnet-4-6", "workspace": ws}
        series.append(_series(TOK, {**tok, "workspace": ws, "type": "cache_write_5m"}, written))
        series.append(_series(WASTED_WRITES_METRIC, labels, wasted))
    alerts.append(
        {
            "eval_time": "50m",
            "alertname": "CachewatchWastedCacheWritesHigh",
            "exp_alerts": [
                {
                    "exp_labels": {
                        "severity": "warning",
                        "provider": "anthropic",
                        "model": "claude-sonnet-4-6",
                        "workspace": "wasteful",
                    },
                    "exp_annotations": {
                        "summary": "80% of cache-write tokens of anthropic/claude-sonnet-4-6 in wasteful expire unread",
                        "description": (
                            f"Over {s.premium_window}, at least {s.wasted_min_tokens:,} cache-write tokens expired "
                            f"without being read, more than {s.wasted_share:.0%} of the tokens written over the "
                            f"{s.premium_window} before {s.wasted_lag} earlier: the write premium is paid with no discount to show for it. "
                            "Check the breakpoints panel and the miss reasons."
                        ),
                    },
                }
            ],
        }
    )
    return {
        "rule_files": [rule_file],
        "evaluation_interval": "1m",
        "tests": [
            {"interval": "1m", "input_series": series, "alert_rule_test": alerts},
            {
                "interval": "1m",
                "input_series": [_series(COST, {**money, "workspace": "calm"}, "0+0.05x90")],
                "alert_rule_test": [
                    {"eval_time": "80m", "alertname": "CachewatchCostOverBudget", "exp_alerts": []}
                ],
                "promql_expr_test": [
                    {
                        "expr": BUDGET_RECORD,
                        "eval_time": "1m",
                        "exp_samples": [
                            {"labels": f'{BUDGET_RECORD}{{currency="{c}"}}', "value": v}
                            for c, v in s.budgets_per_hour
                        ],
                    }
                ],
            },
        ],
    }


def _errors_annotations(stage: str) -> dict[str, str]:
    return {
        "summary": f"cachewatch survived internal faults in stage {stage}",
        "description": (
            "cachewatch left the traffic untouched but its accounting for the affected requests "
            "may be incomplete. The log has one line per (stage, exception type)."
        ),
    }
