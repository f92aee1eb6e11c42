"""In-process overhead of cachewatch against a bare client on a MockTransport.

    .venv/bin/python benchmarks/overhead.py [--rounds 15] [--batch 400]

Measures, for httpx and httpx2, sync and async:

- observe-only (``breakpoints="off"``) per JSON request, against the same client with
  the bare MockTransport (whose handler returns a streamed body, like a network transport);
- per SSE chunk, on a 200-chunk Anthropic stream read with ``iter_raw``.

Runs are interleaved (bare, wrapped, bare, wrapped, ...) and each figure is the median
over rounds of the per-request (or per-chunk) mean within a batch. Prints ratios and
added microseconds. Telemetry goes to a private registry, a no-op tracer and a silent
logger, as in a production process where the sinks are cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

import cachewatch

RESPONSE = orjson.dumps(
    {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": [{"type": "text", "text": "Hello " * 40}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 12,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 3000,
            "output_tokens": 41,
        },
    }
)
REQUEST = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 256,
    "system": "You are helpful. " * 50,
    "messages": [{"role": "user", "content": "Hello there " * 20}],
}


def sse_chunks(n: int = 200) -> list[bytes]:
    start = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_b","type":"message",'
        b'"role":"assistant","model":"claude-sonnet-4-6","content":[],"usage":{"input_tokens":12,'
        b'"cache_read_input_tokens":3000,"cache_creation_input_tokens":0,"output_tokens":1}}}\n\n'
    )
    delta = (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"word "}}\n\n'
    )
    end = (
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"output_tokens":198}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    return [start] + [delta] * (n - 2) + [end]


class _Silent:
    def info(self, *a: Any, **k: Any) -> None:
        pass


def _clients(family: str, sync: bool, handler: Callable[[Any], Any]) -> tuple[Any, Any]:
    mod: Any = importlib.import_module(family)
    inner = mod.MockTransport(handler)
    cls = cachewatch.CacheWatchTransport if sync else cachewatch.AsyncCacheWatchTransport
    wrapped = cls(inner, breakpoints="off", registry=CollectorRegistry(), logger=_Silent())
    client_cls = mod.Client if sync else mod.AsyncClient
    base = "https://api.anthropic.com"
    return client_cls(transport=inner, base_url=base), client_cls(transport=wrapped, base_url=base)


def _median_interleaved(
    run_a: Callable[[], float], run_b: Callable[[], float], rounds: int
) -> tuple[float, float]:
    a, b = [], []
    run_a(), run_b()  # warm up
    for _ in range(rounds):
        a.append(run_a())
        b.append(run_b())
    return statistics.median(a), statistics.median(b)


def bench_json(family: str, sync: bool, rounds: int, batch: int) -> tuple[float, float]:
    mod: Any = importlib.import_module(family)

    def handler(request: Any) -> Any:
        # A streamed body, as every network transport returns: with ``content=bytes`` the
        # MockTransport response would be pre-read and the bare client would skip the
        # body-reading path that real traffic always takes.
        if sync:
            content: Any = iter((RESPONSE,))
        else:

            async def agen() -> Any:
                yield RESPONSE

            content = agen()
        return mod.Response(200, headers={"content-type": "application/json"}, content=content)

    bare, wrapped = _clients(family, sync, handler)
    body = orjson.dumps(REQUEST)
    headers = {"content-type": "application/json"}

    if sync:

        def run(client: Any) -> float:
            t0 = time.perf_counter()
            for _ in range(batch):
                client.post("/v1/messages", content=body, headers=headers).read()
            return (time.perf_counter() - t0) / batch

        return _median_interleaved(lambda: run(bare), lambda: run(wrapped), rounds)

    loop = asyncio.new_event_loop()

    async def arun(client: Any) -> float:
        t0 = time.perf_counter()
        for _ in range(batch):
            r = await client.post("/v1/messages", content=body, headers=headers)
            await r.aread()
        return (time.perf_counter() - t0) / batch

    try:
        return _median_interleaved(
            lambda: loop.run_until_complete(arun(bare)),
            lambda: loop.run_until_complete(arun(wrapped)),
            rounds,
        )
    finally:
        loop.close()


def bench_sse(family: str, sync: bool, rounds: int, batch: int) -> tuple[float, float, int]:
    mod: Any = importlib.import_module(family)
    chunks = sse_chunks()

    def handler(request: Any) -> Any:
        if sync:
            content: Any = iter(chunks)
        else:

            async def agen() -> Any:
                for c in chunks:
                    yield c

            content = agen()
        return mod.Response(200, headers={"content-type": "text/event-stream"}, content=content)

    bare, wrapped = _clients(family, sync, handler)
    body = orjson.dumps({**REQUEST, "stream": True})
    n = max(1, batch // 20)

    if sync:

        def run(client: Any) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                with client.stream("POST", "/v1/messages", content=body) as r:
                    for _c in r.iter_raw():
                        pass
            return (time.perf_counter() - t0) / n

        a, b = _median_interleaved(lambda: run(bare), lambda: run(wrapped), rounds)
        return a, b, len(chunks)

    loop = asyncio.new_event_loop()

    async def arun(client: Any) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            async with client.stream("POST", "/v1/messages", content=body) as r:
                async for _c in r.aiter_raw():
                    pass
        return (time.perf_counter() - t0) / n

    try:
        a, b = _median_interleaved(
            lambda: loop.run_until_complete(arun(bare)),
            lambda: loop.run_until_complete(arun(wrapped)),
            rounds,
        )
    finally:
        loop.close()
    return a, b, len(chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=400)
    args = parser.parse_args()
    print(f"{'case':<34} {'bare':>10} {'cachewatch':>12} {'ratio':>7} {'added':>10}")
    for family in ("httpx", "httpx2"):
        for sync in (True, False):
            mode = "sync" if sync else "async"
            bare, wrapped = bench_json(family, sync, args.rounds, args.batch)
            print(
                f"{family + ' ' + mode + ' JSON observe-only':<34} {bare * 1e6:>8.1f}µs {wrapped * 1e6:>10.1f}µs "
                f"{wrapped / bare:>6.2f}x {(wrapped - bare) * 1e6:>8.1f}µs"
            )
            bare_s, wrapped_s, n = bench_sse(family, sync, args.rounds, args.batch)
            print(
                f"{family + ' ' + mode + f' SSE ({n} chunks), per chunk':<34} {bare_s / n * 1e6:>8.2f}µs "
                f"{wrapped_s / n * 1e6:>10.2f}µs {wrapped_s / bare_s:>6.2f}x {(wrapped_s - bare_s) / n * 1e6:>8.2f}µs"
            )


if __name__ == "__main__":
    main()
