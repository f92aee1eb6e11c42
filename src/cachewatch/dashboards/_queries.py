"""The dashboards' queries: the metric names they draw and the PromQL derived from them.

Data flow: metric catalogue (``sinks._catalogue``) -> ``_promql`` (selectors, rates,
quantiles, each checked against the catalogue) -> **queries** (error ratio, net
savings, shadowed cost, zero fallbacks...) -> panels (``_panels``) and dashboards.
"""

from __future__ import annotations

from ..sinks._catalogue import CATALOGUE
from ._promql import RANGE, RATE, sel, sum_increase, sum_rate

__all__ = [
    "BP",
    "COST",
    "DUR",
    "ERR",
    "MISS",
    "PER_HOUR",
    "PREM",
    "REQ",
    "SAV",
    "SHADOW_COST",
    "SHADOW_TOK",
    "TOK",
    "TRUNCATED",
    "TTFT",
    "UNREP",
    "VOLATILE",
    "WASTED_WRITES_METRIC",
    "ZERO_FALLBACK",
    "error_ratio",
    "has_metric",
    "labels_of",
    "net_saved_share",
    "net_savings",
    "projected_saving",
    "shadowed_cost",
    "zero_if_absent",
]

#: Appended to queries over counters that legitimately have no series while nothing
#: happened (internal errors, cache misses): the panel shows 0 instead of "No data".
#: ``on ()`` keeps the zero out when real series exist.
ZERO_FALLBACK = "\nor on () vector(0)"

#: Wasted cache writes (SPEC section 7) are drawn only once the catalogue has this metric.
WASTED_WRITES_METRIC = "cachewatch_cache_wasted_write_tokens_total"

REQ = "cachewatch_requests_total"
TOK = "cachewatch_tokens_total"
DUR = "cachewatch_request_duration_seconds"
TTFT = "cachewatch_time_to_first_token_seconds"
BP = "cachewatch_breakpoints_total"
COST = "cachewatch_cost_total"
SAV = "cachewatch_cache_savings_total"
PREM = "cachewatch_cache_write_premium_total"
MISS = "cachewatch_cache_misses_total"
ERR = "cachewatch_internal_errors_total"
UNREP = "cachewatch_usage_unreported_total"
TRUNCATED = "cachewatch_observation_truncated_total"
VOLATILE = "cachewatch_volatile_prefix_tokens_total"
SHADOW_COST = "cachewatch_shadow_cost_total"
SHADOW_TOK = "cachewatch_shadow_tokens_total"

PER_HOUR = " * 3600"


def has_metric(name: str) -> bool:
    """Whether the catalogue has ``name`` (optional panels are drawn only then)."""
    return any(spec.name == name for spec in CATALOGUE)


def zero_if_absent(expr: str) -> str:
    """``expr``, or a single 0 when ``expr`` has no series at all."""
    return f"({expr}){ZERO_FALLBACK}"


def _by(by: tuple[str, ...]) -> str:
    return f" by ({', '.join(by)})" if by else ""


def error_ratio(window: str, by: tuple[str, ...] = ()) -> str:
    """Share of requests whose outcome is not ``ok``; 0 (not empty) when every request succeeded."""
    errors = sel(REQ, {"outcome": '!="ok"'})
    every = sel(REQ)
    return (
        f"sum{_by(by)} (rate({errors}[{window}]) or rate({every}[{window}]) * 0)\n"
        f"/\nsum{_by(by)} (rate({every}[{window}]))"
    )


def net_savings(by: tuple[str, ...] = (), window: str = RATE, per_hour: bool = True) -> str:
    """Cache savings minus cache-write premium."""
    fn = sum_rate if per_hour else sum_increase
    expr = f"(\n  {fn(SAV, by, window)}\n-\n  {fn(PREM, by, window)}\n)"
    return expr + PER_HOUR if per_hour else expr


def net_saved_share(by: tuple[str, ...] = (), window: str = RANGE) -> str:
    """Net savings over what the same traffic would have cost without caching.

    Without caching: ``cost + savings - write premium`` (reads at the base price, writes
    without their premium).
    """
    net = f"({sum_increase(SAV, by, window)} - {sum_increase(PREM, by, window)})"
    return f"{net}\n/\n({sum_increase(COST, by, window)} + {net})"


def shadowed_cost(by: tuple[str, ...] = (), window: str = RANGE, *, per_hour: bool = False) -> str:
    """The real cost of the series shadow mode estimated, so that it compares with
    :data:`SHADOW_COST` request for request.

    A cost series and its shadow carry the same labels, the target's (``instance``,
    ``job``) included: ``and`` matches them on all of them, so a process in shadow mode is
    compared with its own real cost, never with that of its neighbours on ``auto``.
    """
    fn = "rate" if per_hour else "increase"
    grouping = _by(by)
    expr = f"sum{grouping} (\n  {fn}({sel(COST)}[{window}])\n  and {fn}({sel(SHADOW_COST)}[{window}])\n)"
    return expr + PER_HOUR if per_hour else expr


def projected_saving(by: tuple[str, ...] = (), window: str = RANGE) -> str:
    """Real cost of the shadowed traffic minus what it would have cost with ``auto``."""
    return f"(\n  {shadowed_cost(by, window)}\n-\n  {sum_increase(SHADOW_COST, by, window)}\n)"


def labels_of(name: str) -> tuple[str, ...]:
    return next(spec.labels for spec in CATALOGUE if spec.name == name)
