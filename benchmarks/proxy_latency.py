"""Latency the ``cachewatch proxy`` adds to a call, on loopback (SPEC 11: added p50 < 1 ms).

Starts the emulator (no delays) and the proxy (``--breakpoints auto``, its default, or
``off``) on 127.0.0.1,
then sends N small JSON Messages requests, interleaved, direct-to-emulator and
through-proxy, each path over its own keep-alive ``httpx.Client``. Prints the p50/p99
latency of each path, the added p50/p99 in ms, and each path's sequential throughput.

    python benchmarks/proxy_latency.py [-n 2000] [--mode process|thread] [--log] [--breakpoints auto|off]

``--mode process`` (default) runs the emulator and the proxy as separate processes,
as in real use: the proxy is ``cachewatch proxy`` itself (the CLI, uvicorn, its JSON
request log writing one line per request to a file, counted at the end: one line
per proxied request, or the run fails), and the CPU time each server process spends
per request is printed too (Linux). ``--mode thread``
serves both in this process with :func:`cachewatch.emulator.run_in_thread` (one
interpreter, so the client, the proxy and the emulator share the GIL and the numbers
are pessimistic); there the library's default logger stays silent unless ``--log``
is given (then every event is formatted into a stdlib handler writing to /dev/null).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson

BODY = orjson.dumps(
    {
        "model": "claude-sonnet-4-6",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
    }
)
HEADERS = {
    "x-api-key": "bench-key",
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
}
EMULATOR_SERVER = """
import sys, uvicorn
from cachewatch.emulator import create_app
uvicorn.run(create_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False, lifespan="off")
"""


#: process mode: name -> pid of the server processes, for their CPU time per request.
SERVER_PIDS: dict[str, int] = {}
#: process mode: the proxy's log lines (``cachewatch.request`` events), counted at exit.
PROXY_LOG_LINES: list[int] = []
#: The proxy's --breakpoints mode (set from the command line).
SETTINGS = {"breakpoints": "auto"}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc), or NaN elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            httpx.get(url, timeout=1)
            return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


@contextlib.contextmanager
def process_servers(log: bool) -> Iterator[tuple[str, str]]:
    # The proxy's per-request log lines go to a file (a pipe would need a reader in this
    # process, competing with the measuring client for its GIL); counted at the end.
    with tempfile.TemporaryFile() as log_file:
        emulator_port, proxy_port = free_port(), free_port()
        emulator = subprocess.Popen([sys.executable, "-c", EMULATOR_SERVER, str(emulator_port)])
        upstream = f"http://127.0.0.1:{emulator_port}"
        proxy = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cachewatch.cli",
                "proxy",
                "--upstream",
                upstream,
                "--listen",
                f"127.0.0.1:{proxy_port}",
                "--breakpoints",
                SETTINGS["breakpoints"],
            ],
            stdout=log_file,
            stderr=subprocess.DEVNULL,
        )
        SERVER_PIDS.update(emulator=emulator.pid, proxy=proxy.pid)
        try:
            wait_until_up(f"{upstream}/healthz")
            wait_until_up(f"http://127.0.0.1:{proxy_port}/metrics")
            yield upstream, f"http://127.0.0.1:{proxy_port}"
        finally:
            for process in (proxy, emulator):
                process.send_signal(signal.SIGINT)
            for process in (proxy, emulator):
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
            log_file.seek(0)
            PROXY_LOG_LINES.append(sum(b'"cachewatch.request"' in line for line in log_file))


@contextlib.contextmanager
def thread_servers(log: bool) -> Iterator[tuple[str, str]]:
    from prometheus_client import CollectorRegistry

    from cachewatch.emulator import create_app, run_in_thread
    from cachewatch.proxy import create_proxy_app

    options: dict[str, Any] = {"breakpoints": SETTINGS["breakpoints"], "registry": CollectorRegistry()}
    if log:
        import logging

        handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
        logging.getLogger("cachewatch").addHandler(handler)
        logging.getLogger("cachewatch").setLevel(logging.INFO)
    with (
        run_in_thread(create_app()) as upstream,
        run_in_thread(create_proxy_app(upstream, **options)) as proxy,
    ):
        yield upstream, proxy


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def measure(direct_url: str, proxy_url: str, n: int, warmup: int) -> dict[str, Any]:
    timings: dict[str, list[float]] = {"direct": [], "proxy": []}
    busy: dict[str, float] = {"direct": 0.0, "proxy": 0.0}
    cpu: dict[str, float] = {}
    with httpx.Client(base_url=direct_url) as direct, httpx.Client(base_url=proxy_url) as proxied:
        clients = {"direct": direct, "proxy": proxied}
        for i in range(warmup + n):
            if i == warmup:
                cpu = {name: cpu_seconds(pid) for name, pid in SERVER_PIDS.items()}
            order = ("direct", "proxy") if i % 2 == 0 else ("proxy", "direct")
            for name in order:
                start = time.perf_counter()
                response = clients[name].post("/v1/messages", content=BODY, headers=HEADERS)
                _ = response.content
                elapsed = time.perf_counter() - start
                if response.status_code != 200:
                    raise RuntimeError(f"{name}: HTTP {response.status_code}: {response.text[:200]}")
                if i >= warmup:
                    timings[name].append(elapsed)
                    busy[name] += elapsed
    cpu = {name: cpu_seconds(pid) - cpu[name] for name, pid in SERVER_PIDS.items()}
    return {"timings": timings, "busy": busy, "cpu": cpu}


def report(result: dict[str, Any], n: int, mode: str) -> None:
    timings = result["timings"]
    stats: dict[str, dict[str, float]] = {}
    for name, values in timings.items():
        ordered = sorted(values)
        stats[name] = {
            "p50": percentile(ordered, 0.50) * 1e3,
            "p90": percentile(ordered, 0.90) * 1e3,
            "p99": percentile(ordered, 0.99) * 1e3,
            "mean": statistics.fmean(values) * 1e3,
            "rps": n / result["busy"][name],
        }
    paired = sorted((p - d) * 1e3 for p, d in zip(timings["proxy"], timings["direct"], strict=True))
    print(
        f"proxy latency, loopback, mode={mode}, breakpoints={SETTINGS['breakpoints']}, "
        f"{n} requests per path (interleaved, keep-alive)"
    )
    print(f"{'path':<8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'req/s':>8}")
    for name in ("direct", "proxy"):
        s = stats[name]
        print(f"{name:<8} {s['p50']:8.3f} {s['p90']:8.3f} {s['p99']:8.3f} {s['mean']:8.3f} {s['rps']:8.0f}")
    added_p50 = stats["proxy"]["p50"] - stats["direct"]["p50"]
    added_p99 = stats["proxy"]["p99"] - stats["direct"]["p99"]
    print(f"added    p50 {added_p50:.3f} ms   p99 {added_p99:.3f} ms   (difference of percentiles)")
    print(
        f"paired   median {percentile(paired, 0.5):.3f} ms   p99 {percentile(paired, 0.99):.3f} ms"
        "   (per-iteration proxy minus direct)"
    )
    for name, seconds in result.get("cpu", {}).items():
        # The emulator serves both paths (2n requests); the proxy serves n.
        per = seconds / (2 * n if name == "emulator" else n) * 1e3
        print(f"cpu      {name}: {per:.3f} ms per request it served")
    verdict = "PASS" if added_p50 < 1.0 else "FAIL"
    print(f"SPEC 11 bar: added p50 < 1 ms -> {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-n", type=int, default=2_000, help="measured requests per path (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured requests per path first")
    parser.add_argument("--mode", choices=("process", "thread"), default="process")
    parser.add_argument(
        "--log", action="store_true", help="thread mode: format every request event into a stdlib handler"
    )
    parser.add_argument("--breakpoints", choices=("auto", "off"), default="auto", help="the proxy's mode")
    args = parser.parse_args()
    SETTINGS["breakpoints"] = args.breakpoints
    servers = process_servers if args.mode == "process" else thread_servers
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    with servers(args.log) as (direct_url, proxy_url):
        result = measure(direct_url, proxy_url, args.n, args.warmup)
    report(result, args.n, args.mode)
    if PROXY_LOG_LINES:
        logged, expected = PROXY_LOG_LINES[0], args.warmup + args.n
        print(f"log      proxy: {logged} cachewatch.request lines for {expected} proxied requests")
        if logged != expected:
            print("the proxy did not log one line per request", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
