"""The Grafana dashboards, as plain JSON-ready dicts built from the metric catalogue.

Two dashboards share one set of template variables (``datasource``, ``provider``,
``model``, ``workspace`` and ``currency``):

- ``cachewatch-overview``: traffic, errors, tokens, requests without usage, hit ratio,
  latency, breakpoints, miss reasons, internal errors, and per-workspace / per-model tables;
- ``cachewatch-cost-caching``: cost, cache savings, write premium and net savings per
  workspace and model, what caching changed, and (``breakpoints="shadow"``) real cost
  against what ``auto`` would have cost on the same requests.

Every expression is assembled by :mod:`._promql`, which looks each metric up in the
catalogue and refuses label matchers and groupings the metric does not have.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..sinks._catalogue import CATALOGUE
from ._promql import RANGE, RATE, hit_ratio, quantile, sel, sum_increase, sum_rate

__all__ = [
    "COST_UID",
    "DATASOURCE",
    "OVERVIEW_UID",
    "WASTED_WRITES_METRIC",
    "ZERO_FALLBACK",
    "build_cost_dashboard",
    "build_overview_dashboard",
]

OVERVIEW_UID = "cachewatch-overview"
COST_UID = "cachewatch-cost-caching"
SCHEMA_VERSION = 39
DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}

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
#: The labels a cost series and its shadow share: real cost is compared only where shadowed.
_MONEY_LABELS = ("provider", "model", "workspace", "currency")

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
    """The real cost of the series shadow mode estimated (the same provider, model, workspace
    and currency), so that it compares with :data:`SHADOW_COST` request for request."""
    fn = "rate" if per_hour else "increase"
    grouping = _by(by)
    expr = (
        f"sum{grouping} (\n  {fn}({sel(COST)}[{window}])\n"
        f"  and on ({', '.join(_MONEY_LABELS)}) {fn}({sel(SHADOW_COST)}[{window}])\n)"
    )
    return expr + PER_HOUR if per_hour else expr


def projected_saving(by: tuple[str, ...] = (), window: str = RANGE) -> str:
    """Real cost of the shadowed traffic minus what it would have cost with ``auto``."""
    return f"(\n  {shadowed_cost(by, window)}\n-\n  {sum_increase(SHADOW_COST, by, window)}\n)"


@dataclass
class Target:
    """One query of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False


@dataclass
class Panel:
    """A panel before layout: kind, query targets, unit and size."""

    kind: str
    title: str
    description: str
    targets: list[Target]
    unit: str = "short"
    w: int = 12
    h: int = 8
    decimals: int | None = None
    columns: dict[str, tuple[str, str]] = field(default_factory=dict)  # refId -> (name, unit)
    stack: bool = False
    min_zero: bool = True


class _Layout:
    """Places panels left to right in rows of 24 grid columns, with row headers."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def _newline(self) -> None:
        self.y += self.row_h
        self.x = 0
        self.row_h = 0

    def row(self, title: str) -> None:
        if self.x:
            self._newline()
        self.panels.append(
            {
                "id": self._id(),
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def add(self, panel: Panel) -> None:
        if self.x + panel.w > 24:
            self._newline()
        self.panels.append(_render(panel, self._id(), {"h": panel.h, "w": panel.w, "x": self.x, "y": self.y}))
        self.x += panel.w
        self.row_h = max(self.row_h, panel.h)
        if self.x >= 24:
            self._newline()


def _render(panel: Panel, panel_id: int, grid: dict[str, int]) -> dict[str, Any]:
    targets = []
    for i, t in enumerate(panel.targets):
        target: dict[str, Any] = {
            "refId": chr(ord("A") + i),
            "datasource": DATASOURCE,
            "editorMode": "code",
            "expr": t.expr,
            "legendFormat": t.legend or "__auto",
            "range": not t.instant,
            "instant": t.instant,
        }
        if t.table:
            target["format"] = "table"
        targets.append(target)
    defaults: dict[str, Any] = {
        "unit": panel.unit,
        "color": {"mode": "palette-classic" if panel.kind == "timeseries" else "thresholds"},
        "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
        "mappings": [],
    }
    if panel.decimals is not None:
        defaults["decimals"] = panel.decimals
    if panel.min_zero and panel.kind in ("timeseries", "bargauge"):
        defaults["min"] = 0
    options: dict[str, Any]
    overrides: list[dict[str, Any]] = []
    transformations: list[dict[str, Any]] = []
    reduce = {"calcs": ["lastNotNull"], "fields": "", "values": False}
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
        }
        options = {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "showLegend": True,
                "calcs": ["mean", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif panel.kind == "stat":
        options = {
            "reduceOptions": reduce,
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        }
    elif panel.kind == "bargauge":
        options = {
            "reduceOptions": reduce,
            "displayMode": "gradient",
            "orientation": "horizontal",
            "showUnfilled": True,
        }
    elif panel.kind == "table":
        options = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"]}}
        transformations = [
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {"excludeByName": {"Time": True}, "indexByName": {}, "renameByName": {}},
            },
        ]
        for ref, (name, unit) in panel.columns.items():
            overrides.append(
                {
                    "matcher": {"id": "byName", "options": f"Value #{ref}"},
                    "properties": [{"id": "displayName", "value": name}, {"id": "unit", "value": unit}],
                }
            )
    else:  # pragma: no cover - a typo in this module
        raise ValueError(f"unknown panel kind {panel.kind!r}")
    rendered: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": grid,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides},
        "options": options,
    }
    if transformations:
        rendered["transformations"] = transformations
    return rendered


def _variable(name: str, label: str, metric: str, depends: tuple[str, ...] = ()) -> dict[str, Any]:
    where = ", ".join(f'{dep}=~"${dep}"' for dep in depends)
    selector = sel(metric, templated=False)
    if where:
        selector = f"{selector}{{{where}}}"
    # Validate the queried label and its filters against the catalogue.
    sel(metric, dict.fromkeys((name, *depends), '=~".*"'), templated=False)
    query = f"label_values({selector}, {name})"
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": query,
        "definition": query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
    }


def _templating() -> dict[str, Any]:
    datasource = {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "refresh": 1,
        "regex": "",
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
    }
    currency_query = f"label_values({sel(COST, templated=False)}, currency)"
    currency = {
        "name": "currency",
        "label": "Currency",
        "type": "query",
        "datasource": DATASOURCE,
        "query": currency_query,
        "definition": currency_query,
        "description": "Money panels sum one currency at a time (prices may be in USD or CNY).",
        "refresh": 2,
        "multi": False,
        "includeAll": False,
        "current": {"selected": True, "text": "USD", "value": "USD"},
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
    }
    return {
        "list": [
            datasource,
            _variable("provider", "Provider", REQ),
            _variable("model", "Model", REQ, ("provider",)),
            _variable("workspace", "Workspace", REQ, ("provider", "model")),
            currency,
        ]
    }


def _dashboard(uid: str, title: str, description: str, layout: _Layout) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["cachewatch", "llm", "prompt-cache"],
        "editable": True,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "weekStart": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [
            {
                "type": "dashboards",
                "title": "cachewatch",
                "tags": ["cachewatch"],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "templating": _templating(),
        "panels": layout.panels,
    }


def _money_unit() -> str:
    return "currencyUSD"


def build_overview_dashboard() -> dict[str, Any]:
    """Traffic, tokens, hit ratio, latency, breakpoints, misses and internal errors."""
    money = _money_unit()
    lay = _Layout()
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
        lay.add(_wasted_writes_panel())

    lay.row("Breakdowns")
    lay.add(_workspace_table(money))
    lay.add(_model_table(money))
    return _dashboard(
        OVERVIEW_UID,
        "cachewatch: overview",
        "LLM API traffic seen by cachewatch: requests, tokens, prompt-cache hit ratio, latency, breakpoints, "
        "cache misses and internal errors.",
        lay,
    )


def _wasted_writes_panel() -> Panel:
    labels = [label for label in ("workspace", "model") if label in _labels(WASTED_WRITES_METRIC)]
    by = (labels[0],) if labels else ()
    return Panel(
        "timeseries",
        "Wasted cache writes",
        "Cache-write tokens per second that were never read within their TTL.",
        [Target(sum_rate(WASTED_WRITES_METRIC, by), "{{" + by[0] + "}}" if by else "wasted")],
        "short",
    )


def _labels(name: str) -> tuple[str, ...]:
    return next(spec.labels for spec in CATALOGUE if spec.name == name)


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


def _shadow_panels(lay: _Layout, money: str) -> None:
    """Real vs shadow: what ``breakpoints="auto"`` would have cost the traffic sent in shadow mode."""
    note = (
        ' The shadow estimate simulates the provider\'s cache for the markers breakpoints="auto" '
        "would have placed, on requests sent unchanged (breakpoints=\"shadow\"), calibrated to the "
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
    money = _money_unit()
    lay = _Layout()
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
        lay.add(_wasted_writes_panel())
    lay.add(
        Panel(
            "bargauge",
            "Tokens a volatile block kept from the cache (range)",
            "Prompt tokens that would have been cacheable had the block that changes on every request "
            "(by position: tools.N, system.N, :first_line when only its first line changes) come after "
            "the stable part of the prompt, per model and block, over the selected range. Move that "
            "block (a timestamp, a request id) to the end of the prompt.",
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
    return _dashboard(
        COST_UID,
        "cachewatch: cost and caching",
        "What LLM traffic cost, what prompt caching saved, what cache writes cost extra, per workspace and model.",
        lay,
    )
