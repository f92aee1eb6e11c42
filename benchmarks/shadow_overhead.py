"""What ``breakpoints="shadow"`` (and ``record=FILE``) add per request, against ``"off"``.

    .venv/bin/python benchmarks/shadow_overhead.py [--rounds 9]

For httpx and httpx2, sync and async: three clients on the same ``MockTransport`` (JSON
response with usage), ``breakpoints="off"``, ``"shadow"`` and ``"off"`` with
``record=`` a temporary file, on a 2 KB, a 20 KB and a 1 MB Anthropic request (tools,
a long system prompt, a growing tool-use conversation; the planner benchmark's generator).
The same body is sent again and again, so the shadow's simulated cache is in its steady
state (reads, refreshes). Shadow mode plans the request as ``auto`` would (one parse of
the body, the layout's prefix digests, the planner's decisions), looks its breakpoints up
in the simulated cache and prices the estimate; nothing of it touches the bytes sent.

Interleaved rounds, medians; telemetry to a private registry, the no-op tracer and a
silent logger. Added time = (mode - off) per request.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

import cachewatch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from auto_overhead import HEADERS, _json_handler  # the same JSON upstream
from planner_bench import anthropic_body  # the planner benchmark's request generator

MODES = ("off", "shadow", "record")


class _Silent:
    def info(self, *a: Any, **k: Any) -> None:
        pass


def _clients(family: str, sync: bool, record: str) -> dict[str, Any]:
    mod: Any = importlib.import_module(family)
    inner = mod.MockTransport(_json_handler(family, sync))
    cls = cachewatch.CacheWatchTransport if sync else cachewatch.AsyncCacheWatchTransport
    client_cls = mod.Client if sync else mod.AsyncClient
    out = {}
    for mode in MODES:
        options: dict[str, Any] = {"registry": CollectorRegistry(), "logger": _Silent()}
        if mode == "record":
            options.update(breakpoints="off", record=record)
        else:
            options["breakpoints"] = mode
        out[mode] = client_cls(transport=cls(inner, **options), base_url="https://api.anthropic.com")
    return out


def _interleaved(fns: list[Callable[[], float]], rounds: int) -> list[float]:
    for fn in fns:
        fn()  # warm up
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for k, fn in enumerate(fns):
            samples[k].append(fn())
    return [statistics.median(s) for s in samples]


def bench(family: str, sync: bool, body: bytes, batch: int, rounds: int, record: str) -> list[float]:
    """Seconds per request for each of MODES."""
    clients = _clients(family, sync, record)
    if sync:

        def run(client: Any) -> float:
            t0 = time.perf_counter()
            for _ in range(batch):
                client.post("/v1/messages", content=body, headers=HEADERS).read()
            return (time.perf_counter() - t0) / batch

        return _interleaved([lambda c=clients[m]: run(c) for m in MODES], rounds)

    loop = asyncio.new_event_loop()

    async def arun(client: Any) -> float:
        t0 = time.perf_counter()
        for _ in range(batch):
            r = await client.post("/v1/messages", content=body, headers=HEADERS)
            await r.aread()
        return (time.perf_counter() - t0) / batch

    try:
        return _interleaved([lambda c=clients[m]: loop.run_until_complete(arun(c)) for m in MODES], rounds)
    finally:
        loop.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    sizes = (
        ("2 KB", orjson.dumps(anthropic_body(2_000)), 400),
        ("20 KB", orjson.dumps(anthropic_body(20_000)), 200),
        ("1 MB", orjson.dumps(anthropic_body(1_000_000)), 4),
    )
    print(f"{'per request':<16}{'size':>7}{'off':>12}{'shadow':>12}{'added':>12}{'record':>12}{'added':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        record = str(Path(tmp) / "shape.jsonl")
        for family in ("httpx", "httpx2"):
            for sync in (True, False):
                name = family + (" sync" if sync else " async")
                for label, body, batch in sizes:
                    off, shadow, rec = bench(family, sync, body, batch, args.rounds, record)
                    print(
                        f"{name:<16}{label:>7}{off * 1e6:>10.1f}µs{shadow * 1e6:>10.1f}µs"
                        f"{(shadow - off) * 1e6:>10.1f}µs{rec * 1e6:>10.1f}µs{(rec - off) * 1e6:>10.1f}µs"
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
