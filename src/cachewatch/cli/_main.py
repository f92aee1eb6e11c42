"""The ``cachewatch`` command line.

Usage::

    cachewatch demo [--serve] [--metrics-port 9464]
    cachewatch proxy --upstream URL [--listen 127.0.0.1:8787] [--include-usage]
    cachewatch emulator [--port 8790] [--profile auto|anthropic|dashscope]
    cachewatch dashboards --out DIR
    cachewatch report [--url http://127.0.0.1:9464/metrics] [--format table|json]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from .._extras import MissingExtraError, require

__all__ = ["main"]


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cachewatch",
        description="Prompt-cache breakpoints and exact token/cost observability for LLM APIs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="run a realistic workload on the embedded emulator and show the savings"
    )
    demo.add_argument(
        "--serve", action="store_true", help="keep traffic flowing and /metrics up until interrupted"
    )
    demo.add_argument(
        "--metrics-port", type=int, default=9464, help="port of /metrics on 127.0.0.1 (default 9464)"
    )
    demo.add_argument(
        "--interval",
        type=float,
        default=2.0,
        help="with --serve: seconds between workload rounds (default 2)",
    )

    proxy = sub.add_parser(
        "proxy", help="reverse proxy for non-Python clients (curl, TypeScript SDK, agents)"
    )
    proxy.add_argument(
        "--upstream", required=True, help="base URL to forward to, e.g. https://api.anthropic.com"
    )
    proxy.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 8787),
        help="HOST:PORT to bind (default 127.0.0.1:8787)",
    )
    proxy.add_argument("--breakpoints", choices=("auto", "off"), default="auto")
    proxy.add_argument("--provider", help="provider label for the upstream (default: from its host)")
    proxy.add_argument("--max-body", type=int, default=32 * 1024 * 1024, help="largest request body in bytes")
    proxy.add_argument(
        "--allow-host", action="append", default=[], help="extra Host header value to accept (repeatable)"
    )
    proxy.add_argument("--prices", help="price file (TOML, YAML or JSON) merged over the defaults")
    proxy.add_argument(
        "--include-usage",
        action="store_true",
        help="ask OpenAI-compatible streams for usage (stream_options.include_usage) and hide the "
        "extra chunk from the client, as wrap(include_usage=True) does",
    )

    report = sub.add_parser(
        "report", help="per-workspace and per-model cost, savings, hit ratio and miss reasons from /metrics"
    )
    report.add_argument(
        "--url", default="http://127.0.0.1:9464/metrics", help="a /metrics URL, or a file of exposition text"
    )
    report.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="tables (default; full width when piped) or one JSON document",
    )

    dashboards = sub.add_parser(
        "dashboards", help="write the Grafana dashboards, provisioning files and alert rules"
    )
    dashboards.add_argument("--out", required=True, help="directory to write into (created if missing)")

    emulator = sub.add_parser(
        "emulator", help="serve the provider emulator (Anthropic, OpenAI-compatible, DashScope)"
    )
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8790)
    emulator.add_argument("--profile", choices=("auto", "anthropic", "dashscope"), default="auto")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = {
        "demo": _demo,
        "proxy": _proxy,
        "emulator": _emulator,
        "dashboards": _dashboards,
        "report": _report,
    }[args.command]
    try:
        return command(args)
    except MissingExtraError as exc:
        print(f"cachewatch {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _demo(args: argparse.Namespace) -> int:
    require("cachewatch demo", "demo", "anthropic", "openai", "httpx2", "rich", "starlette", "uvicorn")
    from prometheus_client import REGISTRY
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from ..sinks._server import start_metrics_server
    from . import _demo

    console = Console()
    try:
        server, _thread = start_metrics_server(port=args.metrics_port)
    except OSError as exc:
        console.print(f"[red]cannot serve /metrics on 127.0.0.1:{args.metrics_port}: {exc.strerror}[/]")
        console.print("Pick another port with --metrics-port.")
        return 2
    metrics_url = f"http://127.0.0.1:{server.server_port}/metrics"
    console.print(f"cachewatch demo: emulator in-process, /metrics at [bold]{metrics_url}[/]")
    total = sum(_demo.WORKLOAD_REQUESTS.values()) * len(_demo.PHASES)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console, transient=True
    ) as progress:
        task = progress.add_task("requests", total=total)

        def then(result: _demo.DemoResult, one_round: Callable[[str], None]) -> None:
            progress.stop()
            _print_summary(console, result, metrics_url)
            if args.serve:
                _serve_loop(console, args.interval, one_round)

        _demo.run_demo(
            registry=REGISTRY,
            tick=lambda: progress.advance(task),
            on_phase=lambda phase: progress.update(task, description=f"breakpoints={phase}"),
            then=then,
        )
    server.shutdown()
    return 0


def _serve_loop(console: Any, interval: float, one_round: Callable[[str], None]) -> None:
    console.print(f"Serving: a workload round every {interval:g}s on both workspaces. Ctrl-C to stop.")
    rounds = 0
    while True:
        for phase in ("off", "auto"):
            one_round(phase)
        rounds += 1
        if rounds % 10 == 0:
            console.print(f"  {rounds} rounds sent")
        time.sleep(interval)


def _misses(misses: dict[str, int]) -> str:
    if not misses:
        return "none"
    return ", ".join(f"{reason} {n}" for reason, n in sorted(misses.items(), key=lambda kv: -kv[1]))


def _money(value: float) -> str:
    return f"${value:,.4f}"


def _print_summary(console: Any, result: Any, metrics_url: str) -> None:
    from rich.table import Table

    if result is None:
        return
    off, auto = result.phases["off"], result.phases["auto"]
    table = Table(title=f"cachewatch demo: {off.requests + auto.requests} requests in {result.seconds:.1f}s")
    table.add_column("")
    table.add_column("breakpoints=off", justify="right")
    table.add_column("breakpoints=auto", justify="right")
    rows: list[tuple[str, str, str]] = [
        ("requests", f"{off.requests}", f"{auto.requests}"),
        ("uncached input tokens", f"{off.input:,}", f"{auto.input:,}"),
        ("cache read tokens", f"{off.cache_read:,}", f"{auto.cache_read:,}"),
        ("cache write tokens", f"{off.cache_write:,}", f"{auto.cache_write:,}"),
        ("output tokens", f"{off.output:,}", f"{auto.output:,}"),
        ("cache hit ratio", f"{off.hit_ratio:.1%}", f"{auto.hit_ratio:.1%}"),
        ("cost", _money(off.cost), _money(auto.cost)),
        ("cache savings", _money(off.savings), _money(auto.savings)),
        ("cache write premium", _money(off.write_premium), _money(auto.write_premium)),
        ("cache misses (reason)", _misses(off.misses), _misses(auto.misses)),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)

    per = Table(title="breakpoints=auto by workload")
    for col in ("workload", "requests", "hit ratio", "cost off", "cost auto", "saved"):
        per.add_column(col, justify="right" if col != "workload" else "left")
    for name in ("support chat", "agent tool loop", "document Q&A", "DashScope chat"):
        w_off, w_auto = result.workloads[("off", name)], result.workloads[("auto", name)]
        saved = 1 - w_auto.cost / w_off.cost if w_off.cost else 0.0
        per.add_row(
            name,
            str(w_auto.requests),
            f"{w_auto.hit_ratio:.1%}",
            _money(w_off.cost),
            _money(w_auto.cost),
            f"{saved:.1%}",
        )
    console.print(per)
    if off.cost:
        console.print(
            f"With breakpoints=auto the same workload cost {_money(auto.cost)} instead of {_money(off.cost)}: "
            f"[bold green]{1 - auto.cost / off.cost:.1%} less[/]."
        )
    console.print(f"Metrics: {metrics_url} (workspaces caching-off and caching-auto)")


def _proxy(args: argparse.Namespace) -> int:
    require("cachewatch proxy", "proxy", "uvicorn", "starlette", "httptools", "aiohttp", "httpx_aiohttp")
    from urllib.parse import urlsplit

    import uvicorn

    from ..proxy._proxy import create_proxy_app, server_options

    host, port = args.listen
    # One JSON line per proxied request on stdout: the proxy is an application, so it
    # configures the library's stdlib logger (the event carries no credentials).
    _log_json_lines(sys.stdout)
    options: dict[str, Any] = {"breakpoints": args.breakpoints}
    if args.provider:
        options["providers"] = {urlsplit(args.upstream).hostname or "": args.provider}
    if args.prices:
        options["prices"] = args.prices
    if args.include_usage:
        options["include_usage"] = True
    try:
        app = create_proxy_app(
            args.upstream, allowed_hosts=args.allow_host, max_body=args.max_body, **options
        )
    except (ValueError, OSError) as exc:
        print(f"cachewatch proxy: {exc}", file=sys.stderr)
        return 2

    print(
        f"cachewatch proxy: http://{host}:{port} -> {args.upstream}  (/metrics on the same port)",
        file=sys.stderr,
    )
    # httptools + uvloop, with the raw request target still checked (absolute-URI
    # requests are refused); no Date/Server headers of uvicorn's own (see server_options).
    uvicorn.run(app, host=host, port=port, **server_options())
    return 0


class _JsonLines(logging.Formatter):
    """One JSON object per record: the ``cachewatch.request`` fields, or the message."""

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
        }
        fields = getattr(record, "cachewatch", None)
        if isinstance(fields, dict):
            line["event"] = "cachewatch.request"
            line.update(fields)
        else:
            line["event"] = record.getMessage()
        return orjson.dumps(line, default=str).decode()


def _log_json_lines(stream: Any) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_JsonLines())
    log = logging.getLogger("cachewatch")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def _report(args: argparse.Namespace) -> int:
    from ._report import report

    source = args.url
    if not source.startswith(("http://", "https://")):
        try:
            with open(source, encoding="utf-8") as fh:
                source = fh.read()
        except OSError as exc:
            print(f"cachewatch report: cannot read {args.url}: {exc.strerror}", file=sys.stderr)
            return 2
    import httpx

    try:
        report(source, format=args.format)
    except (OSError, httpx.HTTPError) as exc:
        print(f"cachewatch report: cannot fetch {args.url}: {exc}", file=sys.stderr)
        return 2
    return 0


def _dashboards(args: argparse.Namespace) -> int:
    from ..dashboards import write_dashboards

    for path in write_dashboards(args.out):
        print(path)
    return 0


def _emulator(args: argparse.Namespace) -> int:
    require("cachewatch emulator", "emulator", "starlette", "uvicorn")
    from ..emulator import serve

    print(f"cachewatch emulator on http://{args.host}:{args.port} (profile {args.profile})", file=sys.stderr)
    serve(host=args.host, port=args.port, profile=args.profile)
    return 0
