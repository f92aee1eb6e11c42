"""Grafana dashboards, Prometheus alert rules and their deployment files, from the metric catalogue.

Every PromQL expression is assembled from :func:`cachewatch.sinks._catalogue.metric`
look-ups, so a renamed metric or label raises here, at generation time, instead of
silently emptying a panel. ``write_dashboards(out_dir)`` writes::

    cachewatch-overview.json, cachewatch-cost-caching.json   Grafana dashboards
    alerts.yml, alerts_test.yml                              Prometheus rules and promtool tests
    prometheus.yml, docker-compose.yml                       Prometheus + Grafana against the demo
    provisioning/datasources/cachewatch.yaml                 Grafana datasource
    provisioning/dashboards/cachewatch.yaml                  Grafana dashboard provider
    README.md

Run ``python -m cachewatch.dashboards --out DIR`` to regenerate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._alerts import AlertSettings, build_alert_rules, build_alert_tests
from ._cost_caching import build_cost_dashboard
from ._deploy import (
    ALERTS_HEADER,
    ALERTS_TEST_HEADER,
    COMPOSE_HEADER,
    DATASOURCE_HEADER,
    PROMETHEUS_HEADER,
    PROVIDER_HEADER,
    README,
    build_compose,
    build_dashboard_provider,
    build_datasource,
    build_prometheus_config,
)
from ._overview import build_overview_dashboard
from ._queries import ZERO_FALLBACK
from ._yaml import dump_yaml

__all__ = [
    "ZERO_FALLBACK",
    "AlertSettings",
    "build_alert_rules",
    "build_alert_tests",
    "build_dashboards",
    "build_files",
    "write_dashboards",
]


def build_dashboards() -> dict[str, dict[str, Any]]:
    """The Grafana dashboards, by file name."""
    return {
        "cachewatch-overview.json": build_overview_dashboard(),
        "cachewatch-cost-caching.json": build_cost_dashboard(),
    }


def build_files(settings: AlertSettings | None = None) -> dict[str, str]:
    """Every generated file's text, by path relative to the output folder."""
    dashboards = build_dashboards()
    files = {
        name: json.dumps(board, indent=2, ensure_ascii=False) + "\n" for name, board in dashboards.items()
    }
    files["alerts.yml"] = dump_yaml(build_alert_rules(settings), ALERTS_HEADER)
    files["alerts_test.yml"] = dump_yaml(build_alert_tests("alerts.yml"), ALERTS_TEST_HEADER)
    files["prometheus.yml"] = dump_yaml(build_prometheus_config(), PROMETHEUS_HEADER)
    files["docker-compose.yml"] = dump_yaml(build_compose(list(dashboards)), COMPOSE_HEADER)
    files["provisioning/datasources/cachewatch.yaml"] = dump_yaml(build_datasource(), DATASOURCE_HEADER)
    files["provisioning/dashboards/cachewatch.yaml"] = dump_yaml(build_dashboard_provider(), PROVIDER_HEADER)
    files["README.md"] = README
    return files


def write_dashboards(out_dir: str | Path) -> list[Path]:
    """Write every generated file under ``out_dir`` (created if needed); return their paths."""
    root = Path(out_dir)
    written: list[Path] = []
    for relative, text in build_files().items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m cachewatch.dashboards [--out DIR]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m cachewatch.dashboards", description="Write the Grafana dashboards and alert rules."
    )
    parser.add_argument("--out", default="dashboards", help="output folder (default: ./dashboards)")
    args = parser.parse_args(argv)
    for path in write_dashboards(args.out):
        print(path)
    return 0
