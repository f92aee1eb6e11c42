"""Grafana panel and dashboard builders: plain JSON-ready dicts, laid out on the grid.

Data flow: queries (``_queries``) -> **panels** (:class:`Panel`, :class:`Target`, laid
out by :class:`PanelLayout`) -> a dashboard (``_overview``, ``_cost_caching``) -> JSON.

Every dashboard shares one set of template variables (``datasource``, ``provider``,
``model``, ``workspace`` and ``currency``), the same links and annotations, and the
wasted-writes panel when the catalogue has its metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._promql import sel, sum_rate
from ._queries import COST, REQ, WASTED_WRITES_METRIC, labels_of

__all__ = ["DATASOURCE", "Panel", "PanelLayout", "Target", "dashboard", "money_unit", "wasted_writes_panel"]

SCHEMA_VERSION = 39
DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}


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


class PanelLayout:
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
    money = panel.unit == MONEY
    defaults: dict[str, Any] = {
        "unit": "none" if money else panel.unit,
        "color": {"mode": "palette-classic" if panel.kind == "timeseries" else "thresholds"},
        "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
        "mappings": [],
    }
    if panel.decimals is not None:
        defaults["decimals"] = panel.decimals
    elif money:
        defaults["decimals"] = 4
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
            properties: list[dict[str, Any]] = [
                {"id": "displayName", "value": name},
                {"id": "unit", "value": unit},
            ]
            if unit == MONEY:
                properties = [
                    {"id": "displayName", "value": f"{name} ($currency)"},
                    {"id": "unit", "value": "none"},
                    {"id": "decimals", "value": 4},
                ]
            overrides.append(
                {"matcher": {"id": "byName", "options": f"Value #{ref}"}, "properties": properties}
            )
    else:  # pragma: no cover - a typo in this module
        raise ValueError(f"unknown panel kind {panel.kind!r}")
    rendered: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": f"{panel.title} ($currency)" if money else panel.title,
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


def dashboard(uid: str, title: str, description: str, layout: PanelLayout) -> dict[str, Any]:
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


#: The unit of a money panel or column. Grafana's units do not take template variables, and
#: the money is in the ``$currency`` the dashboard's variable selects (USD or CNY): rendered
#: as a plain number of 4 decimals, with the currency in the panel's title or the column's
#: name, which do take them.
MONEY = "money"


def money_unit() -> str:
    return MONEY


def wasted_writes_panel() -> Panel:
    labels = [label for label in ("workspace", "model") if label in labels_of(WASTED_WRITES_METRIC)]
    by = (labels[0],) if labels else ()
    return Panel(
        "timeseries",
        "Wasted cache writes",
        "Cache-write tokens per second that were never read within their TTL.",
        [Target(sum_rate(WASTED_WRITES_METRIC, by), "{{" + by[0] + "}}" if by else "wasted")],
        "short",
    )
