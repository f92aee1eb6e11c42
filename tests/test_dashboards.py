"""The generated Grafana dashboards and Prometheus rules: catalogue names, structure, drift, promtool.

There is no offline Grafana dashboard validator to use (``@grafana/schema`` ships
TypeScript types, not a JSON schema), so the invariants Grafana relies on are checked
here: uid, title, schemaVersion, templating, unique panel ids, gridPos inside 24
columns without overlaps, targets with refId/expr/datasource. ``promtool`` checks the
rule file, runs its unit tests and checks the example Prometheus configuration.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import cachewatch.sinks._catalogue as catalogue_module
from cachewatch.dashboards import (
    build_alert_rules,
    build_alert_tests,
    build_dashboards,
    build_files,
    write_dashboards,
)
from cachewatch.dashboards._yaml import dump_yaml
from cachewatch.sinks._catalogue import CATALOGUE, MetricSpec

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "dashboards"
UNITS = {"reqps", "short", "percentunit", "none", "s"}  # money: "none", the $currency in the title
TEMPLATE_VARIABLES = ["datasource", "provider", "model", "workspace", "currency"]
BY_NAME = {spec.name: spec for spec in CATALOGUE}


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _all_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, template variable and rule."""
    exprs = []
    for name, board in build_dashboards().items():
        exprs += [
            (f"{name}: {panel['title']}", target["expr"])
            for panel in _panels(board)
            for target in panel.get("targets", [])
        ]
        exprs += [
            (f"{name}: variable {var['name']}", var["query"])
            for var in board["templating"]["list"]
            if var["type"] == "query"
        ]
    exprs += [
        (f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in build_alert_rules()["groups"]
        for rule in group["rules"]
    ]
    return exprs


def _catalogue_name(found: str) -> str:
    """Exposition name -> catalogue name: ``_bucket``/``_sum``/``_count`` of histograms stripped."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = found.removesuffix(suffix)
        if base != found and base in BY_NAME and BY_NAME[base].kind == "histogram":
            return base
    return found


def test_every_metric_referenced_exists_in_the_catalogue() -> None:
    used = set()
    for where, expr in _all_expressions():
        for found in re.findall(r"\bcachewatch_[a-z0-9_]+", expr):
            name = _catalogue_name(found)
            assert name in BY_NAME, f"{where}: {found} is not in the metric catalogue"
            used.add(name)
    # Every catalogue metric is on a dashboard.
    assert used == set(BY_NAME), f"metrics on no panel: {set(BY_NAME) - used}"


def test_every_label_matcher_and_grouping_exists_on_its_metric() -> None:
    for where, expr in _all_expressions():
        for found, body in re.findall(r"\b(cachewatch_[a-z0-9_]+)\{([^}]*)\}", expr):
            spec = BY_NAME[_catalogue_name(found)]
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body):
                assert label in spec.labels, f"{where}: {found} has no label {label}"
        # sum by (...) (rate(metric...)): the grouping labels must be on that metric.
        for by, name in re.findall(r"by \(([^)]*)\) \((?:rate|increase)\((cachewatch_[a-z0-9_]+)", expr):
            spec = BY_NAME[_catalogue_name(name)]
            for label in (x.strip() for x in by.split(",")):
                assert label == "le" or label in spec.labels, f"{where}: {name} has no label {label}"


def test_a_renamed_metric_fails_at_generation_time(monkeypatch: pytest.MonkeyPatch) -> None:
    by_name = dict(catalogue_module._BY_NAME)
    by_name.pop("cachewatch_cost_total")
    monkeypatch.setattr(catalogue_module, "_BY_NAME", by_name)
    with pytest.raises(KeyError, match="cachewatch_cost_total"):
        build_dashboards()
    with pytest.raises(KeyError):
        build_alert_rules()


def test_a_removed_label_fails_at_generation_time(monkeypatch: pytest.MonkeyPatch) -> None:
    by_name = dict(catalogue_module._BY_NAME)
    spec = by_name["cachewatch_tokens_total"]
    by_name[spec.name] = MetricSpec(
        spec.name, spec.kind, ("provider", "api", "model", "workspace"), spec.help
    )
    monkeypatch.setattr(catalogue_module, "_BY_NAME", by_name)
    with pytest.raises(KeyError, match="type"):
        build_dashboards()


def test_committed_dashboards_match_a_fresh_generation(tmp_path: Path) -> None:
    written = write_dashboards(tmp_path)
    fresh = {p.relative_to(tmp_path).as_posix(): p.read_text(encoding="utf-8") for p in written}
    committed = {
        p.relative_to(COMMITTED).as_posix(): p.read_text(encoding="utf-8")
        for p in COMMITTED.rglob("*")
        if p.is_file()
    }
    assert sorted(committed) == sorted(fresh), "dashboards/ has missing or extra files"
    stale = [name for name in fresh if committed[name] != fresh[name]]
    assert not stale, f"dashboards/ is stale ({stale}): run python scripts/generate_dashboards.py"
    assert fresh == build_files()


def test_dashboard_json_structure() -> None:
    boards = build_dashboards()
    assert {"cachewatch-overview.json", "cachewatch-cost-caching.json"} <= set(boards)
    uids = set()
    for file_name, board in boards.items():
        assert json.loads(json.dumps(board)) == board
        assert board["uid"] == file_name.removesuffix(".json")
        assert len(board["uid"]) <= 40
        uids.add(board["uid"])
        assert board["title"]
        assert board["schemaVersion"] >= 39
        variables = board["templating"]["list"]
        assert [v["name"] for v in variables] == TEMPLATE_VARIABLES
        ds = variables[0]
        assert ds["type"] == "datasource"
        assert ds["query"] == "prometheus"
        for var in variables[1:]:
            assert var["type"] == "query"
            assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert var["query"].startswith("label_values(")
            if var["name"] != "currency":
                assert var["multi"]
                assert var["includeAll"]
                assert var["allValue"] == ".*"

        panels = _panels(board)
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{file_name}: duplicate panel ids"
        occupied: set[tuple[int, int]] = set()
        for panel in panels:
            where = f"{file_name}: {panel['title']}"
            grid = panel["gridPos"]
            assert 0 <= grid["x"] < grid["x"] + grid["w"] <= 24, where
            assert 0 <= grid["y"] < grid["y"] + grid["h"], where
            cells = {
                (x, y)
                for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not cells & occupied, f"{where}: overlaps another panel"
            occupied |= cells
            if panel["type"] == "row":
                continue
            assert panel["type"] in {"timeseries", "stat", "table", "bargauge"}, where
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert panel["description"], where
            assert panel["fieldConfig"]["defaults"]["unit"] in UNITS, where
            targets = panel["targets"]
            assert targets, where
            refs = [t["refId"] for t in targets]
            assert len(refs) == len(set(refs)), where
            for target in targets:
                assert target["expr"].strip(), where
                assert target["datasource"] == panel["datasource"], where
                expr = target["expr"]
                # No hard-coded windows: Grafana picks them ($__rate_interval, $__range).
                windows = re.findall(r"\[([^\]]+)\]", expr)
                assert windows, where
                assert all(w in ("$__rate_interval", "$__range") for w in windows), where
                if panel["type"] == "timeseries":
                    assert "$__rate_interval" in expr, where
                    assert not target["instant"], where
            for override in panel["fieldConfig"]["overrides"]:
                assert override["matcher"]["options"].removeprefix("Value #") in refs, where
    assert len(uids) == len(boards)


def test_panels_cover_spec_section_9() -> None:
    # A money panel's title names the currency its variable selects (units take no variables).
    titles = {
        p["title"].removesuffix(" ($currency)")
        for board in build_dashboards().values()
        for p in _panels(board)
    }
    for wanted in (
        "Requests by outcome",
        "Error ratio by workspace",
        "Tokens by type",
        "Cache hit ratio by workspace",
        "Savings, write premium and net savings per hour",
        "Net savings per hour by workspace",
        "Net savings per hour by model",
        "Cache misses by reason",
        "Request duration p50 / p95",
        "Time to first token p50 / p95",
        "Breakpoints by action",
        "Internal errors by stage",
        "Per workspace (range)",
        "Per model (range)",
        "Requests without usage",
    ):
        assert wanted in titles


def test_hit_ratio_is_reads_over_the_whole_prompt() -> None:
    board = build_dashboards()["cachewatch-overview.json"]
    panel = next(p for p in _panels(board) if p["title"] == "Cache hit ratio by workspace")
    numerator, denominator = panel["targets"][0]["expr"].split("\n/\n")
    assert 'type="cache_read"' in numerator
    assert 'type=~"input|cache_read|cache_write_5m|cache_write_1h"' in denominator


def test_wasted_writes_panel_and_alert_exist() -> None:
    titles = {p["title"] for board in build_dashboards().values() for p in _panels(board)}
    assert "Wasted cache writes" in titles
    alerts = {r.get("alert") for r in build_alert_rules()["groups"][0]["rules"]}
    assert "CachewatchWastedCacheWritesHigh" in alerts


def test_every_alert_has_promtool_cases() -> None:
    alerts = {r["alert"] for r in build_alert_rules()["groups"][0]["rules"] if "alert" in r}
    assert alerts == {
        "CachewatchCacheHitRatioLow",
        "CachewatchWastedCacheWritesHigh",
        "CachewatchCacheWritePremiumHigh",
        "CachewatchInternalErrors",
        "CachewatchCostOverBudget",
        "CachewatchUsageUnreported",
    }
    tested = {t["alertname"] for case in build_alert_tests()["tests"] for t in case["alert_rule_test"]}
    assert tested == alerts


def test_yaml_writer() -> None:
    text = dump_yaml(
        {"a": 1, "b": [{"c": "x: y", "d": []}, "e"], "f": {"g": True, "h": None}, "i": "one\ntwo", "j": 0.5},
        "header",
    )
    assert text == (
        '# header\na: 1\nb:\n  - c: "x: y"\n    d: []\n  - "e"\nf:\n  g: true\n  h: null\n'
        "i: |-\n  one\n  two\nj: 0.5\n"
    )


def test_yaml_writer_spells_special_floats_as_yaml_does() -> None:
    import yaml  # PyYAML: a YAML 1.1 reader, as Prometheus and Grafana read these files

    text = dump_yaml({"up": float("inf"), "down": float("-inf"), "none": float("nan"), "x": 1.5})
    assert text == "up: .inf\ndown: -.inf\nnone: .nan\nx: 1.5\n"
    back = yaml.safe_load(text)
    assert back["up"] == float("inf")
    assert back["down"] == float("-inf")
    assert back["x"] == 1.5
    assert back["none"] != back["none"]  # NaN, a float, not the string "nan"


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("`promtool` is not on PATH: run scripts/test.sh (Debian package `prometheus`)")
    return promtool


def _run(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_promtool_check_rules() -> None:
    out = _run([_promtool(), "check", "rules", "alerts.yml"], COMMITTED)
    assert "SUCCESS" in out


def test_promtool_unit_tests_fire_and_hold_each_alert() -> None:
    out = _run([_promtool(), "test", "rules", "alerts_test.yml"], COMMITTED)
    assert "SUCCESS" in out


def test_promtool_check_example_prometheus_config() -> None:
    out = _run([_promtool(), "check", "config", "prometheus.yml"], COMMITTED)
    assert "SUCCESS" in out


def test_compose_and_provisioning_reference_the_generated_files() -> None:
    files = build_files()
    compose = files["docker-compose.yml"]
    for name in build_dashboards():
        assert f"./{name}:/var/lib/grafana/dashboards/cachewatch/{name}:ro" in compose
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in compose
    assert "./alerts.yml:/etc/prometheus/alerts.yml:ro" in compose
    assert "./provisioning/datasources:/etc/grafana/provisioning/datasources" in compose
    assert (
        'path: "/var/lib/grafana/dashboards/cachewatch"' in files["provisioning/dashboards/cachewatch.yaml"]
    )
    assert 'type: "prometheus"' in files["provisioning/datasources/cachewatch.yaml"]
    assert '"127.0.0.1:9464"' in files["prometheus.yml"]


def test_every_label_in_a_grouping_or_vector_matching_clause_exists() -> None:
    # The test above reads ``by (...) (rate(metric``; a label in any other clause, such as the
    # hit-ratio alert's ``and on (provider, workspace)``, a ``without``, a
    # postfix ``by``, or a template variable's ``label_values``, would otherwise go unchecked:
    # Prometheus matches a label that no series has as the empty value, and still returns data.
    checked = 0
    for where, expr in _all_expressions():
        metrics = {_catalogue_name(m) for m in re.findall(r"\bcachewatch_[a-z0-9_]+", expr)}
        if not metrics:
            continue
        specs = [BY_NAME[m] for m in metrics]
        anywhere = set().union(*(s.labels for s in specs)) | {"le"}
        everywhere = set.intersection(*(set(s.labels) for s in specs))
        for clause, labels in re.findall(
            r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr
        ):
            for label in filter(None, (x.strip() for x in labels.split(","))):
                checked += 1
                # Vector matching needs the label on both sides; grouping on one at least.
                allowed = everywhere if clause in ("on", "ignoring") else anywhere
                assert label in allowed, f"{where}: {clause} ({label}) is not on {sorted(metrics)}"
        for name, label in re.findall(r"label_values\((cachewatch_[a-z0-9_]+)[^,]*,\s*(\w+)\)", expr):
            checked += 1
            assert label in BY_NAME[_catalogue_name(name)].labels, f"{where}: {name} has no label {label}"
    assert checked > 0


def test_money_panels_name_the_selected_currency_not_usd() -> None:
    # Every money panel had the unit currencyUSD while the $currency variable could select
    # CNY: Grafana showed yuan as dollars. Units take no variables; titles do.
    money = (
        "cachewatch_cost_total",
        "cachewatch_cache_savings_total",
        "cachewatch_cache_write_premium_total",
    )
    found = 0
    for board in build_dashboards().values():
        for panel in _panels(board):
            text = json.dumps(panel)
            assert "currencyUSD" not in text, panel["title"]
            exprs = [t["expr"] for t in panel.get("targets", [])]
            ratio = panel.get("fieldConfig", {}).get("defaults", {}).get("unit") == "percentunit"  # a share
            if (
                panel["type"] != "table"
                and not ratio
                and exprs
                and all(any(m in e for m in money) for e in exprs)
            ):
                found += 1
                assert panel["title"].endswith("($currency)"), panel["title"]
                assert 'currency=~"$currency"' in " ".join(exprs) or "$currency" in " ".join(exprs)
    assert found >= 5
