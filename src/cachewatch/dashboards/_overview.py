"""The ``cachewatch-overview`` dashboard: what the traffic is doing.

Traffic, errors, tokens, requests without usage, hit ratio, latency, breakpoints, miss
reasons, internal errors, and per-workspace / per-model tables. Panels from
``_panels``, expressions from ``_queries`` and ``_promql``.
"""

from __future__ import annotations

from typing import Any

from ._panels import Panel, PanelLayout, Target, dashboard, money_unit, wasted_writes_panel
from ._promql import RANGE, RATE, hit_ratio, quantile, sum_increase, sum_rate
from ._queries import (
    BP,
    COST,
    DUR,
    ERR,
    MISS,
    PREM,
    REQ,
    SAV,
    TOK,
    TRUNCATED,
    TTFT,
    UNREP,
    WASTED_WRITES_METRIC,
    error_ratio,
    has_metric,
    net_savings,
    zero_if_absent,
)

__all__ = ["OVERVIEW_UID", "build_overview_dashboard"]

OVERVIEW_UID = "cachewatch-overview"


def build_overview_dashboard() -> dict[str, Any]:
    """Traffic, tokens, hit ratio, latency, breakpoints, misses and internal errors."""
    money = money_unit()
    lay = PanelLayout()
    lay.row("At a glance")
    for panel in (
        Panel(
            "stat",
            "Request rate",
            "Requests per second across the selection.",
            [Target(sum_rate(REQ))],
            "reqps",
            w=4,
            h=4,
        ),
        Panel(
            "stat",
            "Error ratio",
            "Share of requests whose outcome is not ok (client_error, server_error, transport_error, aborted).",
            [Target(error_ratio(RATE))],
            "percentunit",
            w=4,
            h=4,
        ),
        Panel(
            "stat",
            "Cache hit ratio",
            "cache_read / (input + cache_read + cache_write_5m + cache_write_1h) tokens over the selected range.",
            [Target(hit_ratio(RANGE), instant=True)],
            "percentunit",
            w=4,
            h=4,
        ),
        Panel(
            "stat",
            "p95 request duration",
            "95th percentile of seconds from sending the request to the end of the response body.",
            [Target(quantile(0.95, DUR))],
            "s",
            w=4,
            h=4,
        ),
        Panel(
            "stat",
            "Cost (range)",
            "Money billed over the selected range, for models with a known price.",
            [Target(sum_increase(COST), instant=True)],
            money,
            w=4,
            h=4,
        ),
        Panel(
            "stat",
            "Internal errors (range)",
            "Faults cachewatch survived over the selected range; traffic was left untouched. Should be 0.",
            [Target(zero_if_absent(sum_increase(ERR)), instant=True)],
            "short",
            w=4,
            h=4,
            decimals=0,
        ),
    ):
        lay.add(panel)

    lay.row("Requests and tokens")
    lay.add(
        Panel(
            "timeseries",
            "Requests by outcome",
            "Requests per second by how they ended: ok, client_error, server_error, transport_error, aborted.",
            [Target(sum_rate(REQ, ("outcome",)), "{{outcome}}")],
            "reqps",
            stack=True,
        )
    )
    lay.add(
        Panel(
            "timeseries",
            "Error ratio by workspace",
            "Share of requests that did not end ok, per workspace (0 while every request succeeds).",
            [Target(error_ratio(RATE, ("workspace",)), "{{workspace}}")],
            "percentunit",
        )
    )
    lay.add(
        Panel(
            "timeseries",
            "Tokens by type",
            "Billed tokens per second by partition: input (uncached), cache_read, cache_write_5m, cache_write_1h, output.",
            [Target(sum_rate(TOK, ("type",)), "{{type}}")],
            "short",
            stack=True,
        )
    )
    lay.add(
        Panel(
            "timeseries",
            "Cache hit ratio by workspace",
            "cache_read / (input + cache_read + cache_write_5m + cache_write_1h), per workspace.",
            [Target(hit_ratio(RATE, ("workspace",)), "{{workspace}}")],
            "percentunit",
        )
    )

    lay.add(
        Panel(
            "timeseries",
            "Requests without usage",
            "Requests per second that ended ok without the provider reporting usage, by provider and API "
            "(an OpenAI-compatible stream without stream_options.include_usage...). Their tokens and cost "
            "are unknown, not zero, and are missing from every panel above; 0 when every response reports usage.",
            [Target(sum_rate(UNREP, ("provider", "api")), "{{provider}} {{api}}")],
            "reqps",
            w=24,
            h=6,
            stack=True,
        )
    )

    lay.row("Latency")
    for title, name, what in (
        ("Request duration p50 / p95", DUR, "from sending the request to the end of the response body"),
        ("Time to first token p50 / p95", TTFT, "from sending a streamed request to its first body chunk"),
    ):
        lay.add(
            Panel(
                "timeseries",
                title,
                f"Seconds {what}, per model.",
                [
                    Target(quantile(0.5, name, ("provider", "model")), "p50 {{provider}}/{{model}}"),
                    Target(quantile(0.95, name, ("provider", "model")), "p95 {{provider}}/{{model}}"),
                ],
                "s",
            )
        )

    lay.row("Cache behaviour")
    lay.add(
        Panel(
            "timeseries",
            "Breakpoints by action",
            "cache_control breakpoint decisions per second: inserted, kept (the caller's own), skipped, removed.",
            [Target(sum_rate(BP, ("action",)), "{{action}}")],
            "short",
            w=8,
        )
    )
    lay.add(
        Panel(
            "bargauge",
            "Breakpoints by location and action (range)",
            "Breakpoint decisions over the selected range, by where in the request (tools, system, messages, top_level).",
            [Target(sum_increase(BP, ("location", "action")), "{{location}} {{action}}", instant=True)],
            "short",
            w=8,
            decimals=0,
        )
    )
    lay.add(
        Panel(
            "timeseries",
            "Cache misses by reason",
            "Requests that read less from the cache than their prefix allowed, by diagnosed reason (0 when none).",
            [Target(zero_if_absent(sum_rate(MISS, ("reason",))), "{{reason}}")],
            "short",
            w=8,
            stack=True,
        )
    )
    lay.add(
        Panel(
            "timeseries",
            "Internal errors by stage",
            "Faults inside cachewatch that it survived, per second, by stage, and responses no longer observed "
            "past a size cap (their bytes passed unchanged, their usage may be incomplete), by reason "
            "(0 when none). Anything above 0 deserves a look.",
            [
                Target(zero_if_absent(sum_rate(ERR, ("stage",))), "{{stage}}"),
                Target(zero_if_absent(sum_rate(TRUNCATED, ("reason",))), "observation cap: {{reason}}"),
            ],
            "short",
            w=24 if not has_metric(WASTED_WRITES_METRIC) else 12,
            h=6,
        )
    )
    if has_metric(WASTED_WRITES_METRIC):
        lay.add(wasted_writes_panel())

    lay.row("Breakdowns")
    lay.add(_workspace_table(money))
    lay.add(_model_table(money))
    return dashboard(
        OVERVIEW_UID,
        "cachewatch: overview",
        "LLM API traffic seen by cachewatch: requests, tokens, prompt-cache hit ratio, latency, breakpoints, "
        "cache misses and internal errors.",
        lay,
    )


def _workspace_table(money: str) -> Panel:
    by = ("workspace",)
    return Panel(
        "table",
        "Per workspace (range)",
        "Requests, hit ratio and money per workspace over the selected range.",
        [
            Target(sum_increase(REQ, by), instant=True, table=True),
            Target(hit_ratio(RANGE, by), instant=True, table=True),
            Target(sum_increase(COST, by), instant=True, table=True),
            Target(sum_increase(SAV, by), instant=True, table=True),
            Target(sum_increase(PREM, by), instant=True, table=True),
            Target(net_savings(by, RANGE, per_hour=False), instant=True, table=True),
        ],
        columns={
            "A": ("Requests", "short"),
            "B": ("Hit ratio", "percentunit"),
            "C": ("Cost", money),
            "D": ("Savings", money),
            "E": ("Write premium", money),
            "F": ("Net savings", money),
        },
        h=8,
    )


def _model_table(money: str) -> Panel:
    by = ("provider", "model")
    return Panel(
        "table",
        "Per model (range)",
        "Requests, hit ratio, p95 duration and money per provider and model over the selected range.",
        [
            Target(sum_increase(REQ, by), instant=True, table=True),
            Target(hit_ratio(RANGE, by), instant=True, table=True),
            Target(quantile(0.95, DUR, by, RANGE), instant=True, table=True),
            Target(sum_increase(COST, by), instant=True, table=True),
            Target(net_savings(by, RANGE, per_hour=False), instant=True, table=True),
        ],
        columns={
            "A": ("Requests", "short"),
            "B": ("Hit ratio", "percentunit"),
            "C": ("p95 duration", "s"),
            "D": ("Cost", money),
            "E": ("Net savings", money),
        },
        h=8,
    )
