"""``cachewatch.cli._report``: summarise an exposition and print it."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from rich.console import Console

from cachewatch.cli._report import report, summarise


def _exposition() -> str:
    registry = CollectorRegistry()
    req = Counter(
        "cachewatch_requests", "r", ("provider", "api", "model", "workspace", "outcome"), registry=registry
    )
    tok = Counter(
        "cachewatch_tokens", "t", ("provider", "api", "model", "workspace", "type"), registry=registry
    )
    cost = Counter("cachewatch_cost", "c", ("provider", "model", "workspace", "currency"), registry=registry)
    sav = Counter(
        "cachewatch_cache_savings", "s", ("provider", "model", "workspace", "currency"), registry=registry
    )
    prem = Counter(
        "cachewatch_cache_write_premium",
        "p",
        ("provider", "model", "workspace", "currency"),
        registry=registry,
    )
    miss = Counter("cachewatch_cache_misses", "m", ("provider", "model", "reason"), registry=registry)
    waste = Counter(
        "cachewatch_cache_wasted_write_tokens", "w", ("provider", "model", "workspace"), registry=registry
    )
    req.labels("anthropic", "messages", "claude-sonnet-4-6", "team-a", "ok").inc(3)
    req.labels("anthropic", "messages", "claude-sonnet-4-6", "team-b", "ok").inc(1)
    req.labels("dashscope", "chat_completions", "qwen-plus", "team-a", "ok").inc(2)
    for ws, values in {"team-a": (100, 9000, 1000, 0, 50), "team-b": (10, 0, 2000, 0, 5)}.items():
        for t, v in zip(
            ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output"), values, strict=True
        ):
            tok.labels("anthropic", "messages", "claude-sonnet-4-6", ws, t).inc(v)
    tok.labels("dashscope", "chat_completions", "qwen-plus", "team-a", "input").inc(400)
    cost.labels("anthropic", "claude-sonnet-4-6", "team-a", "USD").inc(0.01)
    sav.labels("anthropic", "claude-sonnet-4-6", "team-a", "USD").inc(0.0243)
    prem.labels("anthropic", "claude-sonnet-4-6", "team-a", "USD").inc(0.00075)
    prem.labels("anthropic", "claude-sonnet-4-6", "team-b", "USD").inc(0.0015)
    cost.labels("dashscope", "qwen-plus", "team-a", "CNY").inc(0.5)
    miss.labels("anthropic", "claude-sonnet-4-6", "ttl_expired").inc(2)
    miss.labels("anthropic", "claude-sonnet-4-6", "evicted").inc(1)
    waste.labels("anthropic", "claude-sonnet-4-6", "team-b").inc(2000)
    volatile = Counter(
        "cachewatch_volatile_prefix_tokens",
        "v",
        ("provider", "model", "workspace", "block"),
        registry=registry,
    )
    volatile.labels("anthropic", "claude-sonnet-4-6", "team-a", "system:first_line").inc(6000)
    return generate_latest(registry).decode()


def test_summarise_groups_and_ratios() -> None:
    s = summarise(_exposition())
    a = s["workspaces"]["team-a"]
    assert a["requests"] == 5
    assert a["tokens"]["cache_read"] == 9000
    assert a["tokens"]["input"] == 500
    assert a["hit_ratio"] == pytest.approx(9000 / (500 + 9000 + 1000))
    assert a["cost"] == {"USD": pytest.approx(0.01), "CNY": pytest.approx(0.5)}
    assert a["net_savings"]["USD"] == pytest.approx(0.0243 - 0.00075)
    b = s["workspaces"]["team-b"]
    assert b["wasted_write_tokens"] == 2000
    assert b["net_savings"] == {"USD": pytest.approx(-0.0015)}
    m = s["models"]["claude-sonnet-4-6"]
    assert m["requests"] == 4
    assert m["miss_reasons"] == [("ttl_expired", 2), ("evicted", 1)]
    assert s["total"]["wasted_write_tokens"] == 2000
    # 6,000 tokens over the model's 4 requests; qwen-plus had no volatile block.
    assert m["prefix_advice"] == [{"block": "system:first_line", "tokens": 6000, "tokens_per_request": 1500}]
    assert s["models"]["qwen-plus"]["prefix_advice"] == []


def test_summarise_ignores_other_metrics_and_empty_text() -> None:
    s = summarise("# HELP other_total x\n# TYPE other_total counter\nother_total 5\n")
    assert s["models"] == {}
    assert s["workspaces"] == {}
    assert s["total"]["requests"] == 0


def test_report_prints_tables(capsys: pytest.CaptureFixture[str]) -> None:
    console = Console(width=250, force_terminal=False, color_system=None)
    report(_exposition(), console=console)
    out = capsys.readouterr().out
    assert "Per workspace" in out
    assert "Per model" in out
    assert "team-a" in out
    assert "qwen-plus" in out
    assert "ttl_expired (2)" in out
    assert "90.5%" in out or "85.7%" in out
    advice = out[out.index("Prompt advice") :]
    row = next(line for line in advice.splitlines() if "system:first_line" in line)
    assert "claude-sonnet-4-6" in row
    assert "1,500" in row
    assert "6,000" in row


def test_report_reads_a_metrics_url() -> None:
    from prometheus_client import start_http_server

    text = _exposition()
    registry = CollectorRegistry()

    class Fixed:
        def collect(self):  # type: ignore[no-untyped-def]
            from prometheus_client.parser import text_string_to_metric_families

            yield from text_string_to_metric_families(text)

    registry.register(Fixed())  # type: ignore[arg-type]
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        port = server.server_address[1]
        console = Console(width=250, record=True, color_system=None)
        report(f"http://127.0.0.1:{port}/metrics", console=console)
        assert "claude-sonnet-4-6" in console.export_text()
    finally:
        server.shutdown()
        thread.join(5)


def _run_report(tmp_path: Any, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "metrics.txt"
    path.write_text(_exposition())
    return subprocess.run(
        [sys.executable, "-m", "cachewatch", "report", "--url", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_report_piped_shows_every_column_uncut(tmp_path: Any) -> None:
    result = _run_report(tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "…" not in out
    assert "\x1b[" not in out  # no colour codes in a pipe
    for header in ("cache read", "write premium", "net savings", "wasted write tok", "top miss reasons"):
        assert header in out
    assert "claude-sonnet-4-6" in out
    assert "0.0235 USD" in out  # team-a net savings, whole


def test_report_on_a_narrow_terminal_cuts_no_cell() -> None:
    # A terminal of 100 columns: the tokens and the money are two tables, each printed
    # whole; one wider than the terminal is printed at its own width, never cut to "…".
    console = Console(width=100, record=True, color_system=None, force_terminal=True)
    report(_exposition(), console=console)
    out = console.export_text()
    assert "…" not in out
    assert "0.0235 USD" in out  # team-a net savings, whole
    assert "Per workspace: tokens" in out
    assert "Per model: money and misses" in out


def test_report_json(tmp_path: Any) -> None:
    result = _run_report(tmp_path, "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["workspaces"]["team-a"]["requests"] == 5
    # Counters are floats in an exposition: whole ones print as integers, the rest rounded
    # to 12 significant digits (no 0.0045000000000000005).
    assert type(data["workspaces"]["team-a"]["requests"]) is int
    assert all(len(repr(v)) < 16 for v in data["workspaces"]["team-a"]["cost"].values())
    assert data["models"]["claude-sonnet-4-6"]["miss_reasons"] == [["ttl_expired", 2.0], ["evicted", 1.0]]


# -- shadow mode ------------------------------------------------------------------------------


def _shadow_exposition() -> str:
    """team-shadow ran in shadow mode (sonnet and qwen); team-auto ran auto on sonnet."""
    registry = CollectorRegistry()
    money = ("provider", "model", "workspace", "currency")
    tokens = ("provider", "api", "model", "workspace", "type")
    req = Counter(
        "cachewatch_requests", "r", ("provider", "api", "model", "workspace", "outcome"), registry=registry
    )
    tok = Counter("cachewatch_tokens", "t", tokens, registry=registry)
    cost = Counter("cachewatch_cost", "c", money, registry=registry)
    shadow_cost = Counter("cachewatch_shadow_cost", "sc", money, registry=registry)
    shadow_tok = Counter("cachewatch_shadow_tokens", "st", tokens, registry=registry)
    req.labels("anthropic", "messages", "claude-sonnet-4-6", "team-shadow", "ok").inc(4)
    req.labels("anthropic", "messages", "claude-sonnet-4-6", "team-auto", "ok").inc(4)
    req.labels("dashscope", "messages", "qwen3.6-plus", "team-shadow", "ok").inc(2)
    for ws, real in {"team-shadow": (10_000, 0, 0), "team-auto": (1_000, 8_000, 1_000)}.items():
        for t, v in zip(("input", "cache_read", "cache_write_5m"), real, strict=True):
            tok.labels("anthropic", "messages", "claude-sonnet-4-6", ws, t).inc(v)
    for t, v in zip(("input", "cache_read", "cache_write_5m"), (1_000, 7_000, 2_000), strict=True):
        shadow_tok.labels("anthropic", "messages", "claude-sonnet-4-6", "team-shadow", t).inc(v)
    tok.labels("dashscope", "messages", "qwen3.6-plus", "team-shadow", "input").inc(3_000)
    shadow_tok.labels("dashscope", "messages", "qwen3.6-plus", "team-shadow", "input").inc(3_000)
    cost.labels("anthropic", "claude-sonnet-4-6", "team-shadow", "USD").inc(0.030)
    shadow_cost.labels("anthropic", "claude-sonnet-4-6", "team-shadow", "USD").inc(0.012)
    cost.labels("anthropic", "claude-sonnet-4-6", "team-auto", "USD").inc(0.0075)  # not shadowed
    cost.labels("dashscope", "qwen3.6-plus", "team-shadow", "CNY").inc(0.9)
    shadow_cost.labels("dashscope", "qwen3.6-plus", "team-shadow", "CNY").inc(0.9)
    return generate_latest(registry).decode()


def test_shadow_compares_only_the_series_it_shadowed() -> None:
    s = summarise(_shadow_exposition())
    assert s["workspaces"]["team-auto"]["shadow"] is None
    team = s["workspaces"]["team-shadow"]["shadow"]
    assert team["real_cost"] == {"CNY": pytest.approx(0.9), "USD": pytest.approx(0.030)}
    assert team["shadow_cost"] == {"CNY": pytest.approx(0.9), "USD": pytest.approx(0.012)}
    assert team["projected_saving"] == {"CNY": pytest.approx(0.0), "USD": pytest.approx(0.018)}
    assert team["saving_share"]["USD"] == pytest.approx(0.6)
    assert team["hit_ratio"] == 0.0
    assert team["hit_ratio_auto"] == pytest.approx(7_000 / 13_000)
    # Per model: sonnet's real cost is team-shadow's alone, not team-auto's auto traffic.
    sonnet = s["models"]["claude-sonnet-4-6"]["shadow"]
    assert sonnet["real_cost"] == {"USD": pytest.approx(0.030)}
    assert sonnet["tokens"]["cache_read"] == 7_000
    assert s["total"]["shadow"]["projected_saving"]["USD"] == pytest.approx(0.018)
    assert s["shadow_note"].startswith("Shadow estimate")
    assert summarise(_exposition())["shadow_note"] is None


def test_report_prints_the_shadow_comparison_and_its_note(tmp_path: Any) -> None:
    path = tmp_path / "metrics.txt"
    path.write_text(_shadow_exposition())
    result = subprocess.run(
        [sys.executable, "-m", "cachewatch", "report", "--url", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    table = out[out.index("Shadow mode") :]
    row = next(line for line in table.splitlines() if "team-shadow" in line)
    assert "0.0300 USD" in row
    assert "0.0120 USD" in row
    assert "0.0180 USD" in row
    assert "60.0% USD" in row
    assert "team-auto" not in table.split("Shadow estimate")[0]
    assert "no eviction" in out
    data = json.loads(
        subprocess.run(
            [sys.executable, "-m", "cachewatch", "report", "--url", str(path), "--format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    assert data["workspaces"]["team-shadow"]["shadow"]["projected_saving"]["USD"] == pytest.approx(0.018)
    assert "no eviction" in data["shadow_note"]
    # Every assumption the README names: markers honoured, no eviction, local block sizes,
    # one process's traffic (and which way that last one errs).
    for assumption in ("honours every marker", "local estimate", "only its own traffic", "underestimated"):
        assert assumption in data["shadow_note"], assumption


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_report_into_a_closed_pipe_ends_quietly(tmp_path: Any, fmt: str) -> None:
    # ``cachewatch report | head -0``: the reader is gone before the report is written.
    path = tmp_path / "metrics.txt"
    path.write_text(_exposition())
    proc = subprocess.Popen(
        [sys.executable, "-m", "cachewatch", "report", "--url", str(path), "--format", fmt],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert err == ""


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_report_into_head_ends_with_status_0(tmp_path: Any, fmt: str) -> None:
    # ``cachewatch report | head -1``: the reader takes one line and goes away.
    path = tmp_path / "metrics.txt"
    path.write_text(_exposition() * 1)
    result = subprocess.run(
        f"{sys.executable} -m cachewatch report --url {path} --format {fmt} | head -1; "
        'echo "status ${PIPESTATUS[0]}" >&2',
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stderr == "status 0\n"
    assert len(result.stdout.splitlines()) == 1


@pytest.mark.parametrize(
    "content",
    [
        b"<html><body>Grafana</body></html>\n",  # --url pointed at the wrong page
        b'cachewatch_requests_total{provider="anthropic",model="claude-',  # a scrape cut short
        b"\x7fELF\x02\x01\x01\x00\xd0\xff\xfe binary",  # not text at all
    ],
    ids=["html", "truncated", "binary"],
)
@pytest.mark.parametrize("fmt", ["table", "json"])
def test_report_on_text_that_is_no_exposition_says_so_without_a_traceback(
    tmp_path: Any, content: bytes, fmt: str
) -> None:
    path = tmp_path / "metrics.txt"
    path.write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-m", "cachewatch", "report", "--url", str(path), "--format", fmt],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"cachewatch report: {path}: not a Prometheus text exposition")
    assert result.stdout == ""


def test_summarise_refuses_text_that_is_no_exposition() -> None:
    from cachewatch.cli._report import ExpositionError

    # The parser is lazy: a bad line after good ones must fail too, not report the part before it.
    with pytest.raises(ExpositionError, match="not a Prometheus text exposition"):
        summarise(_exposition() + 'cachewatch_requests_total{provider="x" 1\n')


def test_a_shadow_series_without_its_real_cost_is_not_compared_with_zero() -> None:
    # cachewatch_cost_total of the sonnet series is missing from the text (dropped by a
    # relabelling, a partial scrape): its estimate cannot be compared, and must not show
    # as a real cost of 0 with a negative saving.
    text = "\n".join(
        line
        for line in _shadow_exposition().splitlines()
        if not line.startswith('cachewatch_cost_total{currency="USD",model="claude-sonnet-4-6"')
    )
    s = summarise(text + "\n")
    assert s["shadow_unmatched_series"] == 1
    team = s["workspaces"]["team-shadow"]["shadow"]
    assert team["real_cost"] == {"CNY": pytest.approx(0.9)}
    assert team["shadow_cost"] == {"CNY": pytest.approx(0.9)}
    assert team["projected_saving"] == {"CNY": pytest.approx(0.0)}
    sonnet = s["models"]["claude-sonnet-4-6"]["shadow"]
    assert sonnet["real_cost"] == sonnet["shadow_cost"] == sonnet["projected_saving"] == {}
    assert sonnet["tokens"]["cache_read"] == 7_000  # the tokens are still compared
    assert all(v >= 0 for v in s["total"]["shadow"]["projected_saving"].values())
    assert summarise(_shadow_exposition())["shadow_unmatched_series"] == 0
    console = Console(width=400, record=True, color_system=None)
    report(text + "\n", console=console)
    out = console.export_text()
    assert "-0." not in out
    assert "1 cachewatch_shadow_cost_total series have no cachewatch_cost_total series" in out


def test_shadow_compares_each_process_series_with_its_own_real_cost() -> None:
    # One text with several processes' series (a federation, a scrape of several targets):
    # a canary in shadow mode beside processes already on auto, in the same workspace. The
    # shadowed traffic's real cost is the canary's alone, not the auto processes' too.
    lines = ["# TYPE cachewatch_cost_total counter", "# TYPE cachewatch_shadow_cost_total counter"]
    lines.append("# TYPE cachewatch_tokens_total counter")
    lines.append("# TYPE cachewatch_shadow_tokens_total counter")
    money = 'provider="anthropic",model="claude-sonnet-4-6",workspace="team",currency="USD"'
    tok = 'provider="anthropic",api="messages",model="claude-sonnet-4-6",workspace="team"'
    for instance, cost, real in (
        ("canary:9464", 0.030, (10_000, 0, 0)),
        ("auto-1:9464", 0.0075, (1_000, 8_000, 1_000)),
        ("auto-2:9464", 0.0075, (1_000, 8_000, 1_000)),
    ):
        lines.append(f'cachewatch_cost_total{{{money},instance="{instance}"}} {cost}')
        for t, v in zip(("input", "cache_read", "cache_write_5m"), real, strict=True):
            lines.append(f'cachewatch_tokens_total{{{tok},type="{t}",instance="{instance}"}} {v}')
    lines.append(f'cachewatch_shadow_cost_total{{{money},instance="canary:9464"}} 0.012')
    for t, v in zip(("input", "cache_read", "cache_write_5m"), (1_000, 7_000, 2_000), strict=True):
        lines.append(f'cachewatch_shadow_tokens_total{{{tok},type="{t}",instance="canary:9464"}} {v}')
    s = summarise("\n".join(lines) + "\n")
    team = s["workspaces"]["team"]["shadow"]
    assert team["real_cost"] == {"USD": pytest.approx(0.030)}
    assert team["projected_saving"] == {"USD": pytest.approx(0.018)}
    assert team["hit_ratio"] == 0.0  # the canary's own traffic, sent unchanged
    assert team["hit_ratio_auto"] == pytest.approx(0.7)
    assert s["shadow_unmatched_series"] == 0
    # The main tables still add every process up.
    assert s["workspaces"]["team"]["cost"] == {"USD": pytest.approx(0.045)}
