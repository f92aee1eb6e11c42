"""How long planning one huge request holds up the rest of an event loop.

    .venv/bin/python benchmarks/loop_stall.py [--messages 400000]

One asyncio loop, as in ``cachewatch proxy``: a coroutine ticks every 10 ms while another
sends one request of ``--messages`` one-word messages (about 13 MB) through
``AsyncCacheWatchTransport`` (``breakpoints="auto"``) over an ``httpx.MockTransport``. It
prints the longest gap between ticks and the request's own time, with the body planned
in a worker thread (the transport's default over 256 KiB) and on the loop (the threshold
set out of reach), three runs each, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx
import orjson
from prometheus_client import CollectorRegistry

import cachewatch
from cachewatch.transport import _transport

REPLY = orjson.dumps(
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 10, "output_tokens": 1},
    }
)


async def one_run(body: bytes) -> tuple[float, float]:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=REPLY, headers={"content-type": "application/json"})

    transport = cachewatch.AsyncCacheWatchTransport(
        httpx.MockTransport(handler), registry=CollectorRegistry()
    )
    async with httpx.AsyncClient(transport=transport) as client:
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        response = await client.post(
            "https://api.anthropic.com/v1/messages",
            content=body,
            headers={"content-type": "application/json", "x-api-key": "k", "anthropic-version": "2023-06-01"},
        )
        took = time.perf_counter() - started
        assert response.status_code == 200
        done.set()
        await tick
    return max(gaps), took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=400_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"w{i}"} for i in range(args.messages)
    ]
    body = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": messages})
    print(f"one request of {args.messages:,} messages ({len(body) / 1e6:.1f} MB), ticks every 10 ms")
    default = _transport._THREAD_BEGIN_BYTES
    results: dict[str, list[tuple[float, float]]] = {"worker thread": [], "on the loop": []}
    for _ in range(args.runs):
        for name, threshold in (("worker thread", default), ("on the loop", 1 << 62)):
            _transport._THREAD_BEGIN_BYTES = threshold
            results[name].append(asyncio.run(one_run(body)))
    _transport._THREAD_BEGIN_BYTES = default
    print(f"{'planned':<15}{'longest tick gap':>18}{'request':>10}")
    for name, runs in results.items():
        gap = statistics.median(g for g, _ in runs)
        took = statistics.median(t for _, t in runs)
        print(f"{name:<15}{gap * 1000:>15.0f} ms{took:>9.2f}s")


if __name__ == "__main__":
    main()
