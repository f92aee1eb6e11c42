"""The ``cachewatch`` command line, run as a real subprocess (SPEC sections 2 and 8).

- ``cachewatch demo`` exits 0 and prints the before/after table; with ``breakpoints=auto``
  the workload reads the cache and saves money.
- ``cachewatch demo --serve`` keeps ``/metrics`` up with traffic on the ``caching-off`` and
  ``caching-auto`` workspaces, and stops cleanly on SIGINT.
- ``cachewatch proxy --help`` / ``cachewatch emulator --help`` work, and a bad
  ``--upstream`` is a clear one-line error, not a traceback.

Timeouts here are generous bounds against hangs, never speed assertions.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

CLI = [sys.executable, "-m", "cachewatch.cli"]


def cli_env() -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
    env.pop("FORCE_COLOR", None)
    return env


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env=cli_env(), check=False
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def table_rows(output: str) -> dict[str, tuple[str, str]]:
    """The summary table's rows: name -> (breakpoints=off, breakpoints=auto) cells."""
    rows: dict[str, tuple[str, str]] = {}
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│|┃]", line)]
        cells = [c for c in cells if c != ""]
        if len(cells) == 3 and not cells[0].startswith("breakpoints"):
            rows.setdefault(cells[0], (cells[1], cells[2]))
    return rows


def number(cell: str) -> float:
    cleaned = cell.replace("$", "").replace(",", "").replace("%", "")
    return float(cleaned)


# -- cachewatch demo ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_output() -> str:
    result = run_cli("demo", "--metrics-port", "0", timeout=120)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def test_demo_prints_the_summary_table(demo_output: str) -> None:
    assert "breakpoints=off" in demo_output
    assert "breakpoints=auto" in demo_output
    rows = table_rows(demo_output)
    for name in (
        "requests",
        "uncached input tokens",
        "cache read tokens",
        "cache write tokens",
        "output tokens",
        "cache hit ratio",
        "cost",
        "cache savings",
        "cache write premium",
    ):
        assert name in rows, f"row {name!r} missing from:\n{demo_output}"
    off_requests, auto_requests = (int(number(c)) for c in rows["requests"])
    assert off_requests == auto_requests > 0
    assert rows["cost"][0].startswith("$")
    assert "/metrics" in demo_output
    for workload in ("support chat", "agent tool loop", "document Q&A", "DashScope chat"):
        assert workload in demo_output


def test_demo_auto_reads_the_cache_and_saves(demo_output: str) -> None:
    """``breakpoints=auto`` must read the cache and save money on the demo workload."""
    rows = table_rows(demo_output)
    off_read, auto_read = (number(c) for c in rows["cache read tokens"])
    off_savings, auto_savings = (number(c) for c in rows["cache savings"])
    off_cost, auto_cost = (number(c) for c in rows["cost"])
    # breakpoints=off sends no markers: only DashScope's implicit cache (always on for the
    # DashScope chat's unmarked requests) reads anything, at 20 % of the input price.
    assert 0 < off_read < auto_read, f"breakpoints=auto read no more than off:\n{demo_output}"
    assert 0 < off_savings < auto_savings
    assert auto_cost < off_cost


def test_demo_shadow_estimate_is_close_to_what_auto_then_costs(demo_output: str) -> None:
    """The run without caching is in shadow mode: its estimate of auto's cost is within 10 %."""
    rows = table_rows(demo_output)
    estimate = number(rows["auto, shadow estimate"][0])
    auto_cost = number(rows["cost"][1])
    assert abs(estimate - auto_cost) <= 0.10 * auto_cost, demo_output
    assert "shadow mode (requests unchanged)" in demo_output


# -- cachewatch demo --serve --------------------------------------------------------------------


@pytest.fixture
def serving_demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*CLI, "demo", "--serve", "--metrics-port", str(port), "--interval", "0.05"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cli_env(),
            # A runner started in the background without job control passes SIGINT on as
            # ignored; give the child Python's default Ctrl-C behaviour back.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            yield process, port, log
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def scrape(port: int) -> str | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    except httpx.TransportError:
        return None
    return response.text if response.status_code == 200 else None


def test_demo_serve_keeps_metrics_up_and_stops_on_sigint(
    serving_demo: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    process, port, log = serving_demo

    def workspaces(text: str) -> set[str]:
        return {
            sample.labels.get("workspace", "")
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "cachewatch_requests_total"
        }

    wanted = {"caching-auto", "caching-off"}
    deadline = time.monotonic() + 60
    text = None
    while time.monotonic() < deadline and process.poll() is None:
        text = scrape(port)
        if text and wanted <= workspaces(text):
            break
        time.sleep(0.2)
    assert process.poll() is None, f"demo --serve exited early:\n{log.read_text()}"
    assert text is not None, "/metrics never came up"
    assert "cachewatch_requests_total{" in text, text
    assert wanted <= workspaces(text), text

    # Traffic keeps flowing: the request counter grows between scrapes.
    def requests() -> float:
        body = scrape(port) or ""
        return sum(
            s.value
            for f in text_string_to_metric_families(body)
            for s in f.samples
            if s.name == "cachewatch_requests_total"
        )

    before = requests()
    deadline = time.monotonic() + 30
    while requests() <= before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert requests() > before, "no new traffic while serving"

    process.send_signal(signal.SIGINT)
    try:
        code = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"demo --serve ignored SIGINT:\n{log.read_text()}")
    output = log.read_text()
    assert code in (0, 130), output
    assert "Traceback" not in output, output


# -- proxy / emulator commands ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["proxy", "emulator", "demo"])
def test_subcommand_help(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: cachewatch" in result.stdout
    if command == "proxy":
        assert "--upstream" in result.stdout
        assert "--listen" in result.stdout
        assert "127.0.0.1:8787" in result.stdout


def test_proxy_rejects_a_bad_upstream_clearly() -> None:
    result = run_cli("proxy", "--upstream", "not-a-url", timeout=30)
    assert result.returncode != 0
    assert "not-a-url" in result.stderr
    assert "upstream" in result.stderr
    assert "Traceback" not in result.stderr, f"a traceback instead of a clear error:\n{result.stderr}"


def test_proxy_never_prints_credentials_given_in_the_upstream_url() -> None:
    # The startup line echoed --upstream whole, and the proxy forwarded without the
    # user:password it named (neither URL built for the upstream keeps them).
    secret = "sk-CANARY-in-upstream"
    process = subprocess.Popen(
        [*CLI, "proxy", "--upstream", f"https://user:{secret}@127.0.0.1:1/apps/anthropic",
         "--listen", f"127.0.0.1:{free_port()}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )  # fmt: skip
    try:
        out, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.terminate()
        out, err = process.communicate(timeout=10)
    assert secret not in out + err
    assert process.returncode == 2, err  # refused: credentials travel in the client's headers
    assert "--upstream" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("tail", ["?key=sk-CANARY-q", "#sk-CANARY-f"])
def test_proxy_never_prints_a_key_given_in_the_upstream_query(tail: str) -> None:
    result = run_cli("proxy", "--upstream", f"https://api.example.com/v1{tail}", timeout=30)
    assert result.returncode == 2
    assert "query or fragment" in result.stderr
    assert "CANARY" not in result.stdout + result.stderr


def test_emulator_rejects_a_hit_rate_outside_0_to_1() -> None:
    result = run_cli("emulator", "--implicit-hit-rate", "1.5", timeout=30)
    assert result.returncode == 2
    assert "--implicit-hit-rate" in result.stderr
    assert "between 0 and 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_proxy_rejects_a_bad_listen_address() -> None:
    result = run_cli("proxy", "--upstream", "http://127.0.0.1:1", "--listen", "nonsense", timeout=30)
    assert result.returncode == 2
    assert "HOST:PORT" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("proxy", "--upstream", "http://127.0.0.1:1", "--listen", "127.0.0.1:99999"),
        ("emulator", "--port", "99999"),
        ("demo", "--metrics-port", "70000"),
        ("demo", "--interval", "-1"),
    ],
    ids=["proxy-listen", "emulator-port", "demo-metrics-port", "demo-interval"],
)
def test_out_of_range_ports_and_intervals_are_refused(args: tuple[str, ...]) -> None:
    # Uvicorn took --port 99999 and listened on another port than the one it announced.
    result = run_cli(*args, timeout=30)
    assert result.returncode == 2
    assert "error: argument" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["proxy", "emulator"])
def test_a_port_in_use_is_named_before_anything_is_announced(command: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = (
            ("proxy", "--upstream", "http://127.0.0.1:1", "--listen", f"127.0.0.1:{port}")
            if command == "proxy"
            else ("emulator", "--port", str(port))
        )
        result = run_cli(*args, timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith(f"cachewatch {command}: cannot listen on 127.0.0.1:{port}: ")
    assert "--listen" in result.stderr if command == "proxy" else "--port" in result.stderr
    assert "http://" not in result.stderr  # no announcement of a server that never started
    assert "Traceback" not in result.stderr


def test_version() -> None:
    result = run_cli("--version", timeout=30)
    assert result.returncode == 0
    assert result.stdout.startswith("cachewatch ")


def test_the_cli_shows_the_library_warnings_on_stderr() -> None:
    """The library's logger is silent until configured; the CLI, an application, shows its warnings."""
    code = (
        "import logging, sys\n"
        "import cachewatch.cli._main as cli\n"
        "def replay(args):\n"
        "    logging.getLogger('cachewatch').warning('a library warning')\n"
        "    return 0\n"
        "cli._replay = replay\n"
        "sys.exit(cli.main(['replay', 'unused.jsonl']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == "a library warning\n"


# -- cachewatch report never prints a password from its URL ---------------------------------------


@pytest.mark.parametrize(("status", "body"), [(401, b"no"), (200, b"<html>not metrics</html>")])
def test_report_never_prints_the_password_of_its_url(status: int, body: bytes) -> None:
    # A /metrics endpoint behind basic auth is read as https://user:password@host/metrics;
    # the error lines echoed that URL (and httpx's message repeats it).
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    secret = "CANARY-metrics-password"
    try:
        result = run_cli(
            "report", "--url", f"http://scraper:{secret}@127.0.0.1:{server.server_address[1]}/metrics"
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 2, result.stderr
    assert secret not in result.stdout + result.stderr
    assert "cachewatch report" in result.stderr
    assert "Traceback" not in result.stderr
