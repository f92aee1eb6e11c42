"""The ``cachewatch`` command line.

Usage::

    cachewatch demo [--serve] [--metrics-port 9464]
    cachewatch proxy --upstream URL [--listen 127.0.0.1:8787] [--breakpoints auto|off|shadow]
                     [--record FILE] [--include-usage] [--workers N] [--redis URL]
                     [limits and timeouts]
    cachewatch emulator [--port 8790] [--profile auto|anthropic|dashscope] [--implicit-hit-rate 1]
    cachewatch dashboards --out DIR
    cachewatch report [--url http://127.0.0.1:9464/metrics] [--format table|json]
    cachewatch replay FILE [--format table|json] [--prices FILE]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .._extras import MissingExtraError, require

__all__ = ["main"]


#: The proxy's limit and timeout defaults (``cachewatch.proxy``'s dataclasses; kept here so
#: that ``--help`` needs no import of the proxy's dependencies).
UPSTREAM_DEFAULTS: dict[str, float] = {"connect": 10.0, "headers": 600.0, "idle": 300.0}
CLIENT_DEFAULTS: dict[str, Any] = {
    "head_timeout": 30.0,
    "body_timeout": 30.0,
    "request_timeout": 300.0,
    "keep_alive_timeout": 5.0,
    "send_timeout": 30.0,
    "max_head_bytes": 64 * 1024,
    "max_headers": 100,
}


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds (0 turns it off), got {value!r}")
    return seconds


def _interval(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds, 0 or more, got {value!r}")
    return seconds


def _positive_seconds(value: str) -> float:
    seconds = _seconds(value)
    if seconds == 0:
        raise argparse.ArgumentTypeError("expected seconds above 0")
    return seconds


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65_536:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {value!r}")
    return int(value)


def _port_or_any(value: str) -> int:
    if value == "0":
        return 0
    return _port(value)


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    if not 0 < int(port) < 65_536:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535 in HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _parser() -> argparse.ArgumentParser:
    from .._version import __version__

    parser = argparse.ArgumentParser(
        prog="cachewatch",
        description="Prompt-cache breakpoints and exact token/cost observability for LLM APIs.",
    )
    parser.add_argument("--version", action="version", version=f"cachewatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="run a realistic workload on the embedded emulator and show the savings",
        description="Runs a support chat, an agent and document questions through the real anthropic "
        "and openai SDKs against the embedded emulator (no key, no network), once without and once "
        "with cachewatch's breakpoints, and prints what each cost.",
    )
    demo.add_argument(
        "--serve", action="store_true", help="keep traffic flowing and /metrics up until interrupted"
    )
    demo.add_argument(
        "--metrics-port",
        type=_port_or_any,
        default=9464,
        help="port of /metrics on 127.0.0.1; 0 picks a free one (default 9464)",
    )
    demo.add_argument(
        "--interval",
        type=_interval,
        default=2.0,
        help="with --serve: seconds between workload rounds (default 2)",
    )

    proxy = sub.add_parser(
        "proxy",
        help="reverse proxy for non-Python clients (curl, TypeScript SDK, agents)",
        description="Reverse proxy for non-Python clients. Every limit and timeout has a default "
        "(shown in brackets); a timeout of 0 turns it off.",
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
    proxy.add_argument(
        "--breakpoints",
        choices=("auto", "off", "shadow"),
        default="auto",
        help="auto: add cache_control breakpoints; off: only observe; shadow: only observe, and "
        "estimate what auto would have cost (cachewatch_shadow_* metrics) [auto]",
    )
    proxy.add_argument(
        "--record",
        metavar="FILE",
        help="append every request's traffic shape (structure, digests, token counts, timings; no "
        "text, no key) to FILE, for `cachewatch replay FILE`",
    )
    proxy.add_argument("--provider", help="provider label for the upstream (default: from its host)")
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
    proxy.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="processes serving the port; metrics are aggregated through PROMETHEUS_MULTIPROC_DIR "
        "(a temporary directory unless set) [1]",
    )
    proxy.add_argument(
        "--redis",
        metavar="URL",
        help="share the breakpoint planner's learned state and the miss diagnosis with every process "
        "(workers, other proxies, wrapped clients) using this Redis, e.g. redis://127.0.0.1:6379/0; "
        "needs cachewatch[redis]. When Redis is down or slow each process goes on alone and counts "
        "the fault [off: each process learns alone]",
    )
    proxy.add_argument(
        "--redis-timeout",
        type=_positive_seconds,
        default=0.05,
        metavar="SECONDS",
        help="with --redis: longest wait for Redis on a request's path, without retries [%(default)s]",
    )
    limits = proxy.add_argument_group("limits (bytes) and timeouts (seconds; 0 turns a timeout off)")
    upstream_defaults = UPSTREAM_DEFAULTS
    client_defaults = CLIENT_DEFAULTS
    limits.add_argument(
        "--max-body",
        type=_positive_int,
        default=32 * 1024 * 1024,
        help="largest request body, bytes (413) [%(default)s]",
    )
    limits.add_argument(
        "--max-head-bytes",
        type=_positive_int,
        default=client_defaults["max_head_bytes"],
        help="largest request head (request line and headers), bytes (431) [%(default)s]",
    )
    limits.add_argument(
        "--max-headers",
        type=_positive_int,
        default=client_defaults["max_headers"],
        help="most header fields in one request (431) [%(default)s]",
    )
    limits.add_argument(
        "--max-event-bytes",
        type=_positive_int,
        default=8 * 1024 * 1024,
        help="observation cap: one SSE line or event; past it the response is relayed unobserved [%(default)s]",
    )
    limits.add_argument(
        "--max-decoded-bytes",
        type=_positive_int,
        default=128 * 1024 * 1024,
        help="observation cap: content-decoded bytes of one response (compression bombs) [%(default)s]",
    )
    for flag, key, text in (
        ("--upstream-connect-timeout", "connect", "to connect to the upstream (504)"),
        (
            "--upstream-headers-timeout",
            "headers",
            "from sending a request to the upstream's response headers (504)",
        ),
        (
            "--upstream-idle-timeout",
            "idle",
            "longest upstream silence inside a response body (the response is cut)",
        ),
    ):
        limits.add_argument(flag, type=_seconds, default=upstream_defaults[key], help=f"{text} [%(default)s]")
    for flag, key, text in (
        ("--client-head-timeout", "head_timeout", "for a client to send a request head (408)"),
        ("--client-body-timeout", "body_timeout", "longest client silence inside a request body (408)"),
        (
            "--client-request-timeout",
            "request_timeout",
            "for a client to send a whole request, head and body (408)",
        ),
        (
            "--keep-alive-timeout",
            "keep_alive_timeout",
            "an idle connection between requests is closed after it",
        ),
        (
            "--client-send-timeout",
            "send_timeout",
            "longest a client may leave its response unread (the connection is dropped)",
        ),
    ):
        limits.add_argument(flag, type=_seconds, default=client_defaults[key], help=f"{text} [%(default)s]")

    report = sub.add_parser(
        "report", help="per-workspace and per-model cost, savings, hit ratio and miss reasons from /metrics"
    )
    report.add_argument(
        "--url",
        default="http://127.0.0.1:9464/metrics",
        help="a /metrics URL, or a file of exposition text [%(default)s]",
    )
    report.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="tables (default; full width when piped) or one JSON document",
    )

    replay = sub.add_parser(
        "replay",
        help="run a recorded traffic shape through every marker strategy (off, auto, the fixed ones)",
        description="Replays a traffic shape recorded with `cachewatch proxy --record FILE` or "
        "wrap(client, record=FILE) through the emulator's cache model under every strategy, and "
        "prints what each would have been billed.",
    )
    replay.add_argument("file", help="a traffic-shape file (JSON lines)")
    replay.add_argument(
        "--format", choices=("table", "json"), default="table", help="a table, or one JSON document [table]"
    )
    replay.add_argument("--prices", help="price file (TOML, YAML or JSON) merged over the defaults")

    dashboards = sub.add_parser(
        "dashboards",
        help="write the Grafana dashboards, provisioning files and alert rules",
        description="Writes the Grafana dashboards (JSON), their provisioning files and the Prometheus "
        "alert rules into a directory, ready to mount into Grafana and Prometheus.",
    )
    dashboards.add_argument("--out", required=True, help="directory to write into (created if missing)")

    emulator = sub.add_parser(
        "emulator", help="serve the provider emulator (Anthropic, OpenAI-compatible, DashScope)"
    )
    emulator.add_argument("--host", default="127.0.0.1", help="address to bind [%(default)s]")
    emulator.add_argument("--port", type=_port, default=8790, help="port to bind [%(default)s]")
    emulator.add_argument(
        "--profile",
        choices=("auto", "anthropic", "dashscope"),
        default="auto",
        help="which provider's cache rules to apply: auto picks them per request path [%(default)s]",
    )
    emulator.add_argument(
        "--implicit-hit-rate",
        type=_unit_interval,
        default=1.0,
        help="chance that DashScope's best-effort implicit cache finds what it holds (default 1)",
    )
    return parser


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = {
        "demo": _demo,
        "proxy": _proxy,
        "emulator": _emulator,
        "dashboards": _dashboards,
        "report": _report,
        "replay": _replay,
    }[args.command]
    if not logging.getLogger().handlers:
        # The CLI is an application: the warnings the library keeps silent until logging
        # is configured (an unpriced model, a survived fault) go to stderr here.
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return command(args)
    except MissingExtraError as exc:
        message = str(exc)
        if not message.startswith(f"cachewatch {args.command}"):
            message = f"cachewatch {args.command}: {message}"
        print(message, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``cachewatch report | head``): stop quietly, as a Unix
        # tool does, and send the interpreter's last flush nowhere.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0


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
            on_phase=lambda phase: progress.update(
                task, description=f"breakpoints={_demo.MODES.get(phase, phase)}"
            ),
            then=then,
        )
    server.shutdown()
    return 0


def _serve_loop(console: Any, interval: float, one_round: Callable[[str], None]) -> None:
    """Send a workload round on both workspaces every ``interval`` seconds until Ctrl-C.

    Ctrl-C sets a flag checked between rounds instead of raising wherever the main thread
    happens to be: a KeyboardInterrupt raised inside a stream's finalizer is swallowed by
    the interpreter ("Exception ignored in ..."), and the loop would run on. A second
    Ctrl-C interrupts at once.
    """
    stop = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, on_sigint)
    console.print(f"Serving: a workload round every {interval:g}s on both workspaces. Ctrl-C to stop.")
    rounds = 0
    try:
        while not stop.is_set():
            for phase in ("off", "auto"):
                if stop.is_set():
                    break
                one_round(phase)
            rounds += 1
            if rounds % 10 == 0:
                console.print(f"  {rounds} rounds sent")
            stop.wait(interval)
    finally:
        signal.signal(signal.SIGINT, previous)
    console.print(f"Stopped after {rounds} rounds.")


def _misses(misses: dict[str, int]) -> str:
    if not misses:
        return "none"
    return ", ".join(f"{reason} {n}" for reason, n in sorted(misses.items(), key=lambda kv: -kv[1]))


def _money(value: float) -> str:
    return f"${value:,.4f}"


def _print_summary(console: Any, result: Any, metrics_url: str) -> None:
    from rich.table import Table

    from . import _demo

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
        ("auto, shadow estimate", _money(off.shadow_cost) if off.shadowed else "-", "-"),
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
    for name in _demo.WORKLOADS:
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
    for name in _demo.WORKLOADS:
        for (block, kind), tokens in result.workloads[("auto", name)].advice.items():
            where = "last among the tools" if block.startswith("tools.") else "after the stable part"
            console.print(
                f"Prompt advice ({name}): [bold]{block}[/] ({kind}) changes on every request; "
                f"moved {where}, about {tokens:,} more tokens could be cached."
            )
    if off.cost:
        console.print(
            f"With breakpoints=auto the same workload cost {_money(auto.cost)} instead of {_money(off.cost)}: "
            f"[bold green]{1 - auto.cost / off.cost:.1%} less[/]."
        )
    if off.shadowed and auto.cost:
        console.print(
            f"The breakpoints=off run was in shadow mode (requests unchanged): it estimated auto at "
            f"{_money(off.shadow_cost)}; auto then cost {_money(auto.cost)} "
            f"(the estimate was off by {abs(off.shadow_cost / auto.cost - 1):.1%})."
        )
    console.print(f"Metrics: {metrics_url} (workspaces caching-off and caching-auto)")


def _proxy(args: argparse.Namespace) -> int:
    require("cachewatch proxy", "proxy", "uvicorn", "starlette", "httptools", "aiohttp", "httpx_aiohttp")
    import os
    import shutil
    import tempfile

    if args.redis:
        require("cachewatch proxy --redis", "redis", "redis")
    host, port = args.listen
    multiproc_dir: str | None = None
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Set before prometheus_client is first imported (it picks its value class then).
        multiproc_dir = tempfile.mkdtemp(prefix="cachewatch-proxy-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    try:
        return _serve_proxy(args, host, port)
    finally:
        if multiproc_dir is not None:
            shutil.rmtree(multiproc_dir, ignore_errors=True)


def _serve_proxy(args: argparse.Namespace, host: str, port: int) -> int:
    import os

    import orjson
    import uvicorn

    from ..proxy import CONFIG_ENV, ClientLimits, UpstreamTimeouts, app_from_config, server_options
    from ..proxy._config import proxy_config

    limits = ClientLimits(
        head_timeout=args.client_head_timeout,
        body_timeout=args.client_body_timeout,
        request_timeout=args.client_request_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        send_timeout=args.client_send_timeout,
        max_head_bytes=args.max_head_bytes,
        max_headers=args.max_headers,
    )
    config = proxy_config(
        args.upstream,
        allowed_hosts=args.allow_host,
        max_body=args.max_body,
        breakpoints=args.breakpoints,
        provider=args.provider,
        prices=args.prices,
        timeouts=UpstreamTimeouts(
            connect=args.upstream_connect_timeout,
            headers=args.upstream_headers_timeout,
            idle=args.upstream_idle_timeout,
        ),
        limits=limits,
        max_event_bytes=args.max_event_bytes,
        max_decoded_bytes=args.max_decoded_bytes,
        include_usage=args.include_usage,
        record=args.record,
        redis=args.redis,
        redis_timeout=args.redis_timeout,
    )
    try:
        # Built here in every mode, so that a bad --upstream or --prices fails at once
        # (with --workers, each process then builds its own from CACHEWATCH_PROXY_CONFIG).
        app = app_from_config(config)
    except (ValueError, OSError) as exc:
        print(f"cachewatch proxy: {exc}", file=sys.stderr)
        return 2

    unbound = _unbindable(host, port)
    if unbound:
        print(f"cachewatch proxy: cannot listen on {host}:{port}: {unbound}", file=sys.stderr)
        print("Pick another address with --listen HOST:PORT.", file=sys.stderr)
        return 2
    workers = f", {args.workers} workers" if args.workers > 1 else ""
    if args.redis:
        workers += ", learning shared through Redis"  # not the URL: it may hold a password
    print(
        f"cachewatch proxy: http://{host}:{port} -> {args.upstream}  (/metrics on the same port{workers})",
        file=sys.stderr,
    )
    # httptools + uvloop, with the raw request target checked and the client limits
    # enforced; no Date/Server headers of uvicorn's own (see server_options).
    if args.workers > 1:
        os.environ[CONFIG_ENV] = orjson.dumps(config).decode()
        uvicorn.run(
            "cachewatch.proxy:app_from_environment",
            factory=True,
            workers=args.workers,
            host=host,
            port=port,
            **server_options(limits, importable=True),
        )
    else:
        uvicorn.run(app, host=host, port=port, **server_options(limits))
    return 0


def _unbindable(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (in use, no such address), or None.

    Checked before the server is announced: uvicorn would print the announcement, then
    its own bind error. Bound as uvicorn binds (``SO_REUSEADDR``), then released.
    """
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return exc.strerror or str(exc)
    family, kind, proto, _, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _report(args: argparse.Namespace) -> int:
    from ._report import ExpositionError, report

    source = args.url
    if not source.startswith(("http://", "https://")):
        try:
            with open(source, encoding="utf-8") as fh:
                source = fh.read()
        except OSError as exc:
            print(f"cachewatch report: cannot read {args.url}: {exc.strerror}", file=sys.stderr)
            return 2
        except UnicodeDecodeError:
            print(
                f"cachewatch report: {args.url}: not a Prometheus text exposition (not UTF-8)",
                file=sys.stderr,
            )
            return 2
    import httpx

    shown, password = _without_password(args.url)
    try:
        report(source, format=args.format)
    except BrokenPipeError:
        raise  # the reader went away: main() ends quietly
    except ExpositionError as exc:
        print(f"cachewatch report: {shown}: {exc}", file=sys.stderr)
        return 2
    except (OSError, httpx.HTTPError) as exc:
        if isinstance(exc, httpx.HTTPStatusError):
            reason = f"HTTP {exc.response.status_code}"  # httpx's message repeats the URL
        else:
            reason = str(exc).replace(password, "***") if password else str(exc)
        print(f"cachewatch report: cannot fetch {shown}: {reason}", file=sys.stderr)
        return 2
    return 0


def _without_password(url: str) -> tuple[str, str]:
    """``url`` with the password of its ``user:password@`` (basic auth) masked, and that password."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url, ""
    if not password:
        return url, ""
    user, _, host = parts.netloc.rpartition("@")
    name = user.partition(":")[0]
    return parts._replace(netloc=f"{name}:***@{host}").geturl(), password


def _replay(args: argparse.Namespace) -> int:
    from ..accounting._pricing import PriceTable
    from ..simulation._replay import replay
    from ..simulation._shape import ShapeError, read_shapes
    from ._replay import render_json, render_table

    try:
        prices = PriceTable.from_file(args.prices) if args.prices else PriceTable()
        result = replay(read_shapes(args.file), prices=prices)
    except OSError as exc:
        print(f"cachewatch replay: cannot read {exc.filename or args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    except (ShapeError, ValueError) as exc:
        print(f"cachewatch replay: {args.file}: {exc}", file=sys.stderr)
        return 2
    (render_json if args.format == "json" else render_table)(result, sys.stdout)
    return 0


def _dashboards(args: argparse.Namespace) -> int:
    from ..dashboards import write_dashboards

    for path in write_dashboards(args.out):
        print(path)
    return 0


def _emulator(args: argparse.Namespace) -> int:
    require("cachewatch emulator", "emulator", "starlette", "uvicorn")
    from ..emulator import serve

    unbound = _unbindable(args.host, args.port)
    if unbound:
        print(f"cachewatch emulator: cannot listen on {args.host}:{args.port}: {unbound}", file=sys.stderr)
        print("Pick another port with --port (or address with --host).", file=sys.stderr)
        return 2
    print(f"cachewatch emulator on http://{args.host}:{args.port} (profile {args.profile})", file=sys.stderr)
    serve(host=args.host, port=args.port, profile=args.profile, implicit_hit_rate=args.implicit_hit_rate)
    return 0
