"""``PROMETHEUS_MULTIPROC_DIR`` mode: several worker processes, one aggregated ``/metrics``.

How users run it (e.g. gunicorn/uvicorn workers)::

    export PROMETHEUS_MULTIPROC_DIR=/run/cachewatch-metrics   # empty dir, set before start
    # each worker: http = httpx.Client(transport=cachewatch.CacheWatchTransport())
    # one process: cachewatch.start_metrics_server(port=9464)  # serves the sum of all workers

prometheus_client picks its multiprocess value class when it is first imported, so the
variable must be set before that import: every process here is a fresh subprocess
started with the variable in its environment. Three workers each send K requests
(JSON and SSE, with known usage, over httpx and httpx2, sync and async) through a
``CacheWatchTransport`` backed by a MockTransport; then a fourth process serves
``cachewatch.start_metrics_server(port=0)`` and also renders
``cachewatch.sinks._server.exposition_registry()``. Both expositions must show exactly 3*K
requests and 3*K times each request's tokens.

``cachewatch proxy --workers 2`` is checked the same way: requests land on both worker
processes, and whichever worker answers ``/metrics`` shows all of them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from _helpers import ANTHROPIC_JSON_USAGE, ANTHROPIC_SSE_USAGE, TOKEN_TYPES, anthropic_request
from cachewatch.emulator import create_app, run_in_thread

TESTS_DIR = Path(__file__).resolve().parent
K = 30
WORKERS = (("httpx", "sync"), ("httpx2", "async"), ("httpx", "async"))

WORKER = textwrap.dedent(
    """
    import asyncio, sys
    import cachewatch
    from _helpers import (
        JSON_HEADERS, SSE_HEADERS, anthropic_json, anthropic_request, anthropic_sse, fam, response, split,
    )

    family, mode, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
    module = fam(family)

    def handle(request):
        if b'"stream":true' in request.content:
            return response(module, 200, split(anthropic_sse(), 16), SSE_HEADERS)
        return response(module, 200, split(anthropic_json(), 16), JSON_HEADERS)

    URL = "https://api.anthropic.com/v1/messages"
    H = {"x-api-key": "sk-test"}

    if mode == "sync":
        transport = cachewatch.CacheWatchTransport(module.MockTransport(handle), breakpoints="off")
        with module.Client(transport=transport) as client:
            for i in range(k):
                r = client.post(URL, headers=H, content=anthropic_request(stream=i % 2 == 1))
                assert r.status_code == 200
    else:
        async def main():
            transport = cachewatch.AsyncCacheWatchTransport(module.MockTransport(handle), breakpoints="off")
            async with module.AsyncClient(transport=transport) as client:
                for i in range(k):
                    r = await client.post(URL, headers=H, content=anthropic_request(stream=i % 2 == 1))
                    assert r.status_code == 200
        asyncio.run(main())
    print("worker done")
    """
)

AGGREGATOR = textwrap.dedent(
    """
    import urllib.request
    from prometheus_client import generate_latest
    import cachewatch
    from cachewatch.sinks._server import exposition_registry

    server, thread = cachewatch.start_metrics_server(port=0)
    try:
        port = server.server_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            served = r.read().decode()
    finally:
        server.shutdown()
    rendered = generate_latest(exposition_registry()).decode()
    print(served)
    print("=====SPLIT=====")
    print(rendered)
    """
)


def _run(code: str, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=TESTS_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _samples(exposition: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (dict(s.labels), s.value)
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == name
    ]


def _total(exposition: str, name: str, **labels: str) -> float:
    return sum(v for lab, v in _samples(exposition, name) if all(lab.get(k) == w for k, w in labels.items()))


def test_workers_aggregate_through_multiproc_dir(tmp_path):
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    env = dict(os.environ)
    env.pop("prometheus_multiproc_dir", None)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH", "")) if p)

    for family, mode in WORKERS:
        assert "worker done" in _run(WORKER, env, family, mode, str(K))
    # Each worker left its own value files behind (that is what multiprocess mode aggregates).
    assert len(list(metrics_dir.glob("counter_*.db"))) >= len(WORKERS)

    served, rendered = _run(AGGREGATOR, env).split("=====SPLIT=====")
    n = len(WORKERS) * K
    json_n = len(WORKERS) * (K - K // 2)
    sse_n = len(WORKERS) * (K // 2)
    for exposition in (served, rendered):
        assert _total(exposition, "cachewatch_requests_total") == n
        assert (
            _total(
                exposition,
                "cachewatch_requests_total",
                provider="anthropic",
                api="messages",
                model="claude-sonnet-4-5",
                workspace="default",
                outcome="ok",
            )
            == n
        )
        # One aggregated series, not one per worker.
        assert len(_samples(exposition, "cachewatch_requests_total")) == 1
        for t in TOKEN_TYPES:
            expected = json_n * ANTHROPIC_JSON_USAGE[t] + sse_n * ANTHROPIC_SSE_USAGE[t]
            assert _total(exposition, "cachewatch_tokens_total", type=t) == expected, t
        assert _total(exposition, "cachewatch_request_duration_seconds_count") == n
        assert _total(exposition, "cachewatch_time_to_first_token_seconds_count") == sse_n
        assert _total(exposition, "cachewatch_internal_errors_total") == 0


# -- cachewatch proxy --workers N -------------------------------------------------------------


def _proxy_get(port: int, path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return r.status, r.read()


def _proxy_post(port: int) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/messages",
        data=anthropic_request(model="claude-sonnet-4-6"),
        headers={
            "x-api-key": "sk-workers",
            "anthropic-version": "2023-06-01",
            "content-type": "application/json",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        r.read()
        return int(r.status)


def test_proxy_workers_serve_one_aggregated_metrics_view(tmp_path):
    """``cachewatch proxy --workers 2``: requests land on both processes; any /metrics shows them all.

    With ``--record FILE`` both workers append to the file, and one key, one request have
    one digest there whichever worker served them (``cachewatch replay`` keys its caches
    on them).
    """
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with run_in_thread(create_app()) as upstream:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "cachewatch.cli", "proxy", "--upstream", upstream,
                "--listen", f"127.0.0.1:{port}", "--workers", "2", "--breakpoints", "off",
                "--record", str(tmp_path / "traffic.jsonl"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "proxy.err").open("wb"),
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, (tmp_path / "proxy.err").read_text()
                try:
                    if _proxy_get(port, "/metrics")[0] == 200:
                        break
                except OSError:
                    assert time.monotonic() < deadline, "the proxy did not start"
                    time.sleep(0.1)
            sent = 0
            # Concurrent batches until both workers have recorded requests (bounded).
            with ThreadPoolExecutor(8) as pool:
                for _ in range(30):
                    assert set(pool.map(lambda _: _proxy_post(port), range(16))) == {200}
                    sent += 16
                    if len({p.name.split("_")[1] for p in metrics_dir.glob("counter_*.db")}) >= 2:
                        break
            pids = {p.name.split("_")[1] for p in metrics_dir.glob("counter_*.db")}
            assert len(pids) >= 2, "every request went to one worker"
            # A JSON reply reaches the client before its exchange is recorded (the proxy
            # answers first, then ends the stream): wait, bounded, for the last records.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                exposition = _proxy_get(port, "/metrics")[1].decode()
                if _total(exposition, "cachewatch_requests_total", outcome="ok") >= sent:
                    break
                time.sleep(0.05)
            for _ in range(6):  # new connections: whichever worker answers
                status, body = _proxy_get(port, "/metrics")
                assert status == 200
                exposition = body.decode()
                assert _total(exposition, "cachewatch_requests_total", outcome="ok") == sent
                assert len(_samples(exposition, "cachewatch_requests_total")) == 1
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
    assert "Traceback" not in (tmp_path / "proxy.err").read_text()
    lines = [json.loads(line) for line in (tmp_path / "traffic.jsonl").read_text().splitlines()]
    exchanges = [line for line in lines if "format" not in line]
    assert len(exchanges) == sent
    assert len({x["w"] for x in exchanges}) == 2  # both workers recorded
    assert len({x["scope"] for x in exchanges}) == 1  # one key, one scope
    assert len({json.dumps(x["blocks"]) for x in exchanges}) == 1  # one request, one shape
