"""Every dashboard query, run against a real Prometheus server scraping a real ``cachewatch demo --serve``.

SPEC section 9: each panel's PromQL must return data. Template variables are
substituted the way Grafana would (All = ``.*``; a second pass picks one provider,
model and workspace), ``$__rate_interval`` becomes 30s and ``$__range`` 5m. The
generated alert rules are loaded too, and every rule must evaluate without error.

The demo's run without caching is in shadow mode (workspace ``caching-off``), so the
shadow panels (``cachewatch_shadow_*``, real against shadow cost) have data for that
workspace: in the one-value pass they pick ``caching-off``, as a user looking at a
shadowed workspace would, and every other panel ``caching-auto``.

The ``prometheus`` binary (Debian package ``prometheus``) is required: without it this
test fails and says to run ``scripts/test.sh``, which installs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from cachewatch.dashboards import ZERO_FALLBACK, build_dashboards, write_dashboards

RATE_WINDOW = "30s"
RANGE_WINDOW = "5m"
DEADLINE_S = 90.0

#: Counters with no series while nothing happened. The panels fall back to 0
#: (ZERO_FALLBACK); the run below reports whether real series backed them.
#: - internal errors: a healthy demo has none;
#: - observation caps: the demo stays under them;
#: - cache misses: nothing increments cachewatch_cache_misses_total yet (the miss
#:   diagnosis of SPEC section 7 is not wired to the Prometheus sink).
MAY_BE_ABSENT = {
    "cachewatch_internal_errors_total",
    "cachewatch_cache_misses_total",
    "cachewatch_observation_truncated_total",
}

PASSES: dict[str, dict[str, str]] = {
    "all": {"provider": ".*", "model": ".*", "workspace": ".*", "currency": "USD"},
    "one": {
        "provider": "anthropic",
        "model": "claude-sonnet-4-6",
        "workspace": "caching-auto",
        "currency": "USD",
    },
}
#: The workspace of the one-value pass for the shadow panels: the demo's shadowed run.
SHADOW_WORKSPACE = "caching-off"


def _values(pass_name: str, expr: str) -> dict[str, str]:
    values = PASSES[pass_name]
    if pass_name == "one" and "cachewatch_shadow_" in expr:
        return {**values, "workspace": SHADOW_WORKSPACE}
    return values


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _substitute(expr: str, values: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", RATE_WINDOW).replace("$__range", RANGE_WINDOW)
    for name, value in values.items():
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    body = _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert body["status"] == "success", body
    result = body["data"]["result"]
    return result if isinstance(result, list) else [result]


def _panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title / refId, expr) for every target of every panel."""
    out = []
    for name, board in build_dashboards().items():
        panels = list(board["panels"])
        for panel in list(panels):
            panels.extend(panel.get("panels", []))
        out += [
            (name, f"{panel['title']} [{target['refId']}]", target["expr"])
            for panel in panels
            for target in panel.get("targets", [])
        ]
    return out


def _variable_queries() -> list[tuple[str, str, str]]:
    """(variable, label, series selector) for each label_values() template variable."""
    board = build_dashboards()["cachewatch-overview.json"]
    out = []
    for var in board["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"])
        assert m, var["query"]
        out.append((var["name"], m.group(2), m.group(1)))
    return out


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT if os.name != "nt" else signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def test_every_panel_query_returns_data_on_a_real_prometheus(tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail(
            "the `prometheus` binary is not on PATH: run scripts/test.sh (it installs the Debian "
            "package `prometheus`), or `apt-get install prometheus`"
        )
    cachewatch = Path(sys.executable).with_name("cachewatch")
    demo_cmd = [str(cachewatch)] if cachewatch.exists() else [sys.executable, "-m", "cachewatch.cli"]

    write_dashboards(tmp_path / "dashboards")
    metrics_port, prom_port = _free_port(), _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {tmp_path / 'dashboards' / 'alerts.yml'}\n"
        "scrape_configs:\n  - job_name: cachewatch\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    base = f"http://127.0.0.1:{prom_port}"
    demo = prom = None
    demo_log = (tmp_path / "demo.log").open("wb")
    prom_log = (tmp_path / "prometheus.log").open("wb")
    try:
        demo = subprocess.Popen(
            [*demo_cmd, "demo", "--serve", "--metrics-port", str(metrics_port), "--interval", "0.5"],
            stdout=demo_log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TERM": "dumb", "COLUMNS": "120"},
        )
        prom = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=prom_log,
            stderr=subprocess.STDOUT,
        )
        panel_queries = _panel_queries()
        deadline = time.monotonic() + DEADLINE_S
        empty: list[str] = []
        while True:
            for proc, log in ((demo, "demo.log"), (prom, "prometheus.log")):
                if proc.poll() is not None:
                    pytest.fail(f"{log} process exited early:\n{(tmp_path / log).read_text()[-3000:]}")
            try:
                empty = [
                    f"{pass_name}: {board} / {title}"
                    for pass_name in PASSES
                    for board, title, expr in panel_queries
                    if not _query(base, _substitute(expr, _values(pass_name, expr)))
                ]
            except (urllib.error.URLError, ConnectionError):
                empty = ["prometheus not answering yet"]
            if not empty or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert not empty, "panel queries without data:\n" + "\n".join(empty)
        total = len(panel_queries)
        print(f"\n{total}/{total} panel queries return data (template variables = All)")
        print(f"{total}/{total} panel queries return data (provider/model/workspace = one value each)")

        # Which panels had only their zero fallback to show, because the metric has no series?
        fallback_only = []
        for board, title, expr in panel_queries:
            if ZERO_FALLBACK in expr:
                bare = expr.replace(ZERO_FALLBACK, "")
                if not _query(base, _substitute(bare, PASSES["all"])):
                    names = set(re.findall(r"cachewatch_[a-z0-9_]+", bare))
                    assert names <= MAY_BE_ABSENT, f"{board} / {title}: {names - MAY_BE_ABSENT} has no series"
                    fallback_only.append(f"{board} / {title} ({', '.join(sorted(names))})")
        print(f"{total - len(fallback_only)}/{total} backed by real series; zero fallback only:")
        for line in fallback_only:
            print(f"  {line}")

        # The shadow comparison says something: auto would have cost less than the real traffic.
        from cachewatch.dashboards._queries import projected_saving, shadowed_cost

        saving = _query(base, _substitute(projected_saving(), PASSES["all"]))
        real = _query(base, _substitute(shadowed_cost(), PASSES["all"]))
        assert float(saving[0]["value"][1]) > 0, saving
        assert float(saving[0]["value"][1]) < float(real[0]["value"][1]), (saving, real)
        print(f"projected saving {float(saving[0]['value'][1]):.4f} of {float(real[0]['value'][1]):.4f} USD")

        # Template variables: every label_values() query has values.
        for var, label, selector in _variable_queries():
            values = _substitute(selector, PASSES["all"])
            series = _get(f"{base}/api/v1/series?" + urllib.parse.urlencode({"match[]": values}))["data"]
            found = sorted({s[label] for s in series if label in s})
            assert found, f"template variable {var}: no values for {selector}"
            print(f"variable {var}: {', '.join(found)}")

        # The generated alert rules load and evaluate without error.
        deadline = time.monotonic() + 15
        while True:
            groups = _get(f"{base}/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if rules and all(r.get("lastEvaluation", "").startswith("2") for r in rules):
                break
            assert time.monotonic() < deadline, f"rules not evaluated: {rules}"
            time.sleep(1)
        bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        assert not bad, f"rules that failed to evaluate: {bad}"
        print(f"{len(rules)}/{len(rules)} alert/recording rules evaluate without error")
    finally:
        _stop(demo)
        _stop(prom)
        demo_log.close()
        prom_log.close()
