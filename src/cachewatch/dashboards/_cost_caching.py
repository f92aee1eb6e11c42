"""The ``cachewatch-cost-caching`` dashboard: what the traffic cost and what caching changed.

Cost, cache savings, write premium and net savings per workspace and model, what
caching changed, and (``breakpoints="shadow"``) real cost against what ``auto`` would
have cost on the same requests. Panels from ``_panels``, expressions from ``_queries``
and ``_promql``.
"""

from __future__ import annotations

from typing import Any

from ._panels import Panel, PanelLayout, Target, dashboard, money_unit, wasted_writes_panel
from ._promql import RANGE, RATE, hit_ratio, sum_increase, sum_rate
from ._queries import (
    COST,
    MISS,
    PER_HOUR,
    PREM,
    SAV,
    SHADOW_COST,
    SHADOW_TOK,
    TOK,
    VOLATILE,
    WASTED_WRITES_METRIC,
    has_metric,
    net_saved_share,
    net_savings,
    projected_saving,
    shadowed_cost,
    zero_if_absent,
)

__all__ = ["COST_UID", "build_cost_dashboard"]

COST_UID = "cachewatch-cost-caching"


def _shadow_panels(lay: PanelLayout, money: str) -> None:
    """Real vs shadow: what ``breakpoints="auto"`` would have cost the traffic sent in shadow mode."""
    note = (
        ' The shadow estimate simulates the provider\'s cache for the markers breakpoints="auto" '
        'would have placed, on requests sent unchanged (breakpoints="shadow"), calibrated to the '
        "billed prompt totals; it assumes every marker is honoured and no entry is evicted before its TTL."
    )
    lay.row('Shadow mode: what breakpoints="auto" would save')
    for title, description, expr, unit in (
        (
            "Real cost (shadowed traffic)",
            "What the requests sent in shadow mode cost, over the selected range." + note,
            shadowed_cost(),
            money,
        ),
        (
            "With auto (shadow estimate)",
            "What the same requests would have cost with breakpoints=auto." + note,
            sum_increase(SHADOW_COST),
            money,
        ),
        (
            "Projected saving",
            "Real cost minus the shadow estimate: what turning breakpoints=auto on would have saved." + note,
            projected_saving(),
            money,
        ),
        (
            "Projected saving share",
            "Projected saving / real cost of the shadowed traffic." + note,
            f"{projected_saving()}\n/\n{shadowed_cost()}",
            "percentunit",
        ),
        (
            "Hit ratio with auto (estimate)",
            "cache_read / prompt tokens the shadowed traffic would have had with breakpoints=auto." + note,
            hit_ratio(RANGE, name=SHADOW_TOK),
            "percentunit",
        ),
    ):
        lay.add(Panel("stat", title, description, [Target(expr, instant=True)], unit, w=4, h=4))
    lay.add(
        Panel(
            "timeseries",
            "Real vs with auto, cost per hour by workspace",
            "Per workspace in shadow mode: its real billing rate and the rate the shadow estimate "
            "gives for breakpoints=auto, extrapolated to an hour." + note,
            [
                Target(shadowed_cost(("workspace",), RATE, per_hour=True), "{{workspace}} real"),
                Target(sum_rate(SHADOW_COST, ("workspace",)) + PER_HOUR, "{{workspace}} with auto"),
            ],
            money,
        )
    )
    by = ("workspace", "provider", "model")
    lay.add(
        Panel(
            "table",
            "Real vs with auto per workspace and model (range)",
            "Per workspace, provider and model in shadow mode: real cost, the shadow estimate for "
            "breakpoints=auto, the projected saving and the hit ratio auto would have had." + note,
            [
                Target(shadowed_cost(by), instant=True, table=True),
                Target(sum_increase(SHADOW_COST, by), instant=True, table=True),
                Target(projected_saving(by), instant=True, table=True),
                Target(hit_ratio(RANGE, by, name=SHADOW_TOK), instant=True, table=True),
            ],
            columns={
                "A": ("Real cost", money),
                "B": ("With auto (estimate)", money),
                "C": ("Projected saving", money),
                "D": ("Hit ratio with auto", "percentunit"),
            },
        )
    )


def build_cost_dashboard() -> dict[str, Any]:
    """Cost, savings, write premium and net savings per workspace and model."""
    money = money_unit()
    lay = PanelLayout()
    lay.row("Selected range")
    for title, description, expr, unit in (
        ("Cost", "Money billed over the selected range.", sum_increase(COST), money),
        (
            "Cache savings",
            "What the cache-read discount saved against paying the base input price.",
            sum_increase(SAV),
            money,
        ),
        (
            "Cache write premium",
            "Extra paid for cache writes above the base input price.",
            sum_increase(PREM),
            money,
        ),
        (
            "Net savings",
            "Cache savings minus the write premium.",
            net_savings((), RANGE, per_hour=False),
            money,
        ),
        (
            "Saved vs no caching",
            "Net savings / what the same traffic would have cost without caching (cost + savings - write premium).",
            net_saved_share(),
            "percentunit",
        ),
        (
            "Cache hit ratio",
            "cache_read / (input + cache_read + cache_write_*) tokens.",
            hit_ratio(RANGE),
            "percentunit",
        ),
    ):
        lay.add(Panel("stat", title, description, [Target(expr, instant=True)], unit, w=4, h=4))

    lay.row("Money over time (per hour)")
    lay.add(
        Panel(
            "timeseries",
            "Cost per hour by workspace",
            "Billing rate per workspace, extrapolated to an hour.",
            [Target(sum_rate(COST, ("workspace",)) + PER_HOUR, "{{workspace}}")],
            money,
        )
    )
    lay.add(
        Panel(
            "timeseries",
            "Cost per hour by model",
            "Billing rate per provider and model, extrapolated to an hour.",
            [Target(sum_rate(COST, ("provider", "model")) + PER_HOUR, "{{provider}}/{{model}}")],
            money,
        )
    )
    lay.add(
        Panel(
            "timeseries",
            "Savings, write premium and net savings per hour",
            "Cache-read savings, the cache-write premium, and their difference (net savings).",
            [
                Target(sum_rate(SAV) + PER_HOUR, "savings"),
                Target(sum_rate(PREM) + PER_HOUR, "write premium"),
                Target(net_savings(), "net savings"),
            ],
            money,
            min_zero=False,
        )
    )
    lay.add(
        Panel(
            "timeseries",
            "Net savings per hour by workspace",
            "Cache savings minus write premium per workspace; below 0 means caching costs more than it saves.",
            [Target(net_savings(("workspace",)), "{{workspace}}")],
            money,
            min_zero=False,
        )
    )
    lay.add(
        Panel(
            "timeseries",
            "Net savings per hour by model",
            "Cache savings minus write premium per provider and model.",
            [Target(net_savings(("provider", "model")), "{{provider}}/{{model}}")],
            money,
            min_zero=False,
        )
    )
    lay.add(
        Panel(
            "timeseries",
            "Write premium per hour by workspace",
            "Extra paid for cache writes above the base input price, per workspace.",
            [Target(sum_rate(PREM, ("workspace",)) + PER_HOUR, "{{workspace}}")],
            money,
        )
    )

    lay.row("Caching")
    lay.add(
        Panel(
            "timeseries",
            "Cache hit ratio by model",
            "cache_read / (input + cache_read + cache_write_*) per provider and model.",
            [Target(hit_ratio(RATE, ("provider", "model")), "{{provider}}/{{model}}")],
            "percentunit",
            w=8,
        )
    )
    lay.add(
        Panel(
            "timeseries",
            "Cache reads and writes",
            "Cache tokens per second: reads, 5-minute writes and 1-hour writes.",
            [
                Target(
                    sum_rate(TOK, ("type",), type='=~"cache_read|cache_write_5m|cache_write_1h"'),
                    "{{type}}",
                )
            ],
            "short",
            w=8,
        )
    )
    lay.add(
        Panel(
            "bargauge",
            "Cache misses by reason (range)",
            "Requests that read less than their prefix allowed over the selected range, by reason (0 when none).",
            [Target(zero_if_absent(sum_increase(MISS, ("reason",))), "{{reason}}", instant=True)],
            "short",
            w=8,
            decimals=0,
        )
    )
    if has_metric(WASTED_WRITES_METRIC):
        lay.add(wasted_writes_panel())
    lay.add(
        Panel(
            "bargauge",
            "Tokens a volatile block kept from the cache (range)",
            "Prompt tokens that would have been cacheable had the block that changes on every request "
            "(by position: tools.N, system.N, :first_line when only its first line changes) come after "
            "the stable part of the prompt, per model and block, over the selected range. Move that "
            "block (a timestamp, a request id) to the end of the prompt; a tool, to the end of the "
            "tool list (tools come before the system prompt). tools:order: the same tools come in "
            "another order; give them one (sorted by name).",
            [Target(sum_increase(VOLATILE, ("model", "block")), "{{model}} {{block}}", instant=True)],
            "short",
            w=8,
            decimals=0,
        )
    )

    _shadow_panels(lay, money)

    lay.row("Breakdown")
    by = ("workspace", "provider", "model")
    lay.add(
        Panel(
            "table",
            "Per workspace and model (range)",
            "Money and hit ratio per workspace, provider and model over the selected range.",
            [
                Target(sum_increase(COST, by), instant=True, table=True),
                Target(sum_increase(SAV, by), instant=True, table=True),
                Target(sum_increase(PREM, by), instant=True, table=True),
                Target(net_savings(by, RANGE, per_hour=False), instant=True, table=True),
                Target(hit_ratio(RANGE, by), instant=True, table=True),
            ],
            columns={
                "A": ("Cost", money),
                "B": ("Savings", money),
                "C": ("Write premium", money),
                "D": ("Net savings", money),
                "E": ("Hit ratio", "percentunit"),
            },
            w=24,
            h=9,
        )
    )
    return dashboard(
        COST_UID,
        "cachewatch: cost and caching",
        "What LLM traffic cost, what prompt caching saved, what cache writes cost extra, per workspace and model.",
        lay,
    )
