"""The dashboards' shadow-mode queries, evaluated by Prometheus's own engine (``promtool``).

The cost dashboard compares the real cost of the shadowed traffic with what ``auto`` would
have cost (``_queries.shadowed_cost`` / ``projected_saving``). A Prometheus that scrapes
several processes keeps them apart by their target labels (``instance``, ``job``): a canary
in shadow mode beside processes already on ``auto``, in the same workspace, must be
compared with its own real cost only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cachewatch.dashboards._queries import projected_saving, shadowed_cost

_MONEY = 'provider="anthropic",model="claude-sonnet-4-6",workspace="team",currency="USD"'


def _concrete(expr: str) -> str:
    """A panel query with its template variables and range given values."""
    for variable in ("provider", "model", "workspace", "currency"):
        expr = expr.replace(f'"${variable}"', '".*"')
    return expr.replace("$__range", "10m").replace("$__rate_interval", "10m")


def _series(name: str, instance: str, total: float) -> dict[str, str]:
    """A counter of ``name`` on ``instance`` growing to ``total`` over ten minutes."""
    return {"series": f'{name}{{{_MONEY},instance="{instance}"}}', "values": f"0+{total / 10}x10"}


def test_the_shadow_comparison_counts_only_the_shadowed_processes_real_cost(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("`promtool` is not on PATH (Debian package `prometheus`)")
    inputs = [
        _series("cachewatch_cost_total", "canary:9464", 40.0),  # shadow mode
        _series("cachewatch_shadow_cost_total", "canary:9464", 10.0),
        _series("cachewatch_cost_total", "auto-1:9464", 20.0),  # already on auto
        _series("cachewatch_cost_total", "auto-2:9464", 20.0),
    ]
    # (Whole amounts: Prometheus compares the results exactly.)
    cases = [
        (shadowed_cost(), 40.0),
        (projected_saving(), 30.0),
        (f"{projected_saving()}\n/\n{shadowed_cost()}", 0.75),
    ]
    (tmp_path / "rules.yml").write_text("groups: []\n")
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": inputs,
                "promql_expr_test": [
                    {
                        "expr": _concrete(expr),
                        "eval_time": "10m",
                        "exp_samples": [{"labels": "{}", "value": v}],
                    }
                    for expr, v in cases
                ],
            }
        ],
    }
    (tmp_path / "shadow_test.yml").write_text(json.dumps(tests))  # JSON is YAML
    done = subprocess.run(
        [promtool, "test", "rules", "shadow_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
