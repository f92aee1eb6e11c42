"""Thread- and asyncio-safety (SPEC section 10): exact counters, one telemetry finish per request, flat memory.

Many threads share one sync transport (and one client); many asyncio tasks read
interleaved streams through one async transport. Each request's kind is known in
advance (JSON, streamed SSE read chunk by chunk, SSE read whole, SSE abandoned after
its first chunk, OpenAI JSON), so every counter total is known exactly. The memory
check is not timed: it compares ``tracemalloc`` sizes after N and after 11*N requests.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import tracemalloc
from collections import Counter
from types import ModuleType
from typing import Any

import orjson
import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

import cachewatch
from _helpers import (
    ANTHROPIC_JSON_USAGE,
    ANTHROPIC_SSE_USAGE,
    ANTHROPIC_URL,
    FAMILIES,
    JSON_HEADERS,
    OPENAI_URL,
    SSE_HEADERS,
    TOKEN_TYPES,
    anthropic_json,
    anthropic_request,
    anthropic_sse,
    fam,
    make_telemetry,
    metric_sum,
    response,
    split,
)

OPENAI_JSON = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4.1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 60},
        },
    }
)
OPENAI_USAGE = {"input": 40, "cache_read": 60, "cache_write_5m": 0, "cache_write_1h": 0, "output": 7}
NO_USAGE = dict.fromkeys(TOKEN_TYPES, 0)

SSE_CHUNKS = split(anthropic_sse(), 7)  # the first chunk ("event: ") carries no usage
JSON_CHUNKS = split(anthropic_json(), 50)

#: kind: (url, request body, outcome, usage)
KINDS: dict[str, tuple[str, bytes, str, dict[str, int]]] = {
    "json": (ANTHROPIC_URL, anthropic_request(), "ok", ANTHROPIC_JSON_USAGE),
    "sse_stream": (ANTHROPIC_URL, anthropic_request(stream=True), "ok", ANTHROPIC_SSE_USAGE),
    "sse_read": (ANTHROPIC_URL, anthropic_request(stream=True), "ok", ANTHROPIC_SSE_USAGE),
    "sse_abort": (ANTHROPIC_URL, anthropic_request(stream=True), "aborted", NO_USAGE),
    "openai_json": (OPENAI_URL, b'{"model":"gpt-4.1","messages":[]}', "ok", OPENAI_USAGE),
}
KIND_ORDER = tuple(KINDS)


def kind_of(i: int) -> str:
    return KIND_ORDER[i % len(KIND_ORDER)]


def handler_for(family: ModuleType, *, yield_control: bool = False):
    def handle(request: Any) -> Any:
        if request.url.path.endswith("/chat/completions"):
            return response(family, 200, split(OPENAI_JSON, 64), JSON_HEADERS, yield_control=yield_control)
        if b'"stream":true' in request.content:
            return response(family, 200, SSE_CHUNKS, SSE_HEADERS, yield_control=yield_control)
        return response(family, 200, JSON_CHUNKS, JSON_HEADERS, yield_control=yield_control)

    return handle


def do_sync(client: Any, kind: str) -> None:
    url, body, _, _ = KINDS[kind]
    if kind in ("json", "openai_json", "sse_read"):
        r = client.post(url, content=body)
        assert r.status_code == 200
        assert r.content == (
            OPENAI_JSON
            if kind == "openai_json"
            else b"".join(SSE_CHUNKS if kind == "sse_read" else JSON_CHUNKS)
        )
        return
    with client.stream("POST", url, content=body) as r:
        got = []
        for chunk in r.iter_raw():
            got.append(chunk)
            if kind == "sse_abort":
                break
    assert got == (SSE_CHUNKS[:1] if kind == "sse_abort" else SSE_CHUNKS)


async def do_async(client: Any, kind: str) -> None:
    url, body, _, _ = KINDS[kind]
    if kind in ("json", "openai_json", "sse_read"):
        r = await client.post(url, content=body)
        assert r.status_code == 200
        assert r.content == (
            OPENAI_JSON
            if kind == "openai_json"
            else b"".join(SSE_CHUNKS if kind == "sse_read" else JSON_CHUNKS)
        )
        return
    async with client.stream("POST", url, content=body) as r:
        got = []
        async for chunk in r.aiter_raw():
            got.append(chunk)
            if kind == "sse_abort":
                break
    assert got == (SSE_CHUNKS[:1] if kind == "sse_abort" else SSE_CHUNKS)


def expected_totals(kinds: list[str]) -> tuple[Counter[str], dict[str, int]]:
    outcomes: Counter[str] = Counter()
    tokens = dict.fromkeys(TOKEN_TYPES, 0)
    for kind in kinds:
        _, _, outcome, usage = KINDS[kind]
        outcomes[outcome] += 1
        for t in TOKEN_TYPES:
            tokens[t] += usage[t]
    return outcomes, tokens


def check_totals(tel: Any, kinds: list[str]) -> None:
    outcomes, tokens = expected_totals(kinds)
    assert tel.requests() == len(kinds)
    for outcome, n in outcomes.items():
        assert tel.requests(outcome=outcome) == n, outcome
    assert tel.tokens() == tokens
    assert tel.requests(api="chat_completions") == kinds.count("openai_json")
    assert tel.value("cachewatch_request_duration_seconds_count") == len(kinds)
    # Streams that delivered a first chunk get a time-to-first-token observation.
    n_streams = sum(k.startswith("sse") for k in kinds)
    assert tel.value("cachewatch_time_to_first_token_seconds_count") == n_streams
    # Each request's telemetry finished exactly once: one span, one log event.
    spans = tel.spans()
    assert len(spans) == len(kinds)
    assert len({s.context.span_id for s in spans}) == len(kinds)
    events = tel.events()
    assert len(events) == len(kinds)
    assert Counter(e["outcome"] for e in events) == outcomes
    assert tel.faults() == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_threads_share_one_sync_transport_with_exact_counters(family):
    threads_n, per_thread = 16, 50
    module = fam(family)
    tel = make_telemetry()
    transport = cachewatch.CacheWatchTransport(module.MockTransport(handler_for(module)), **tel.kwargs)
    client = module.Client(transport=transport)
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []
    kinds = [kind_of(t * per_thread + i) for t in range(threads_n) for i in range(per_thread)]

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                do_sync(client, kind_of(t * per_thread + i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    client.close()
    assert errors == []
    check_totals(tel, kinds)


@pytest.mark.parametrize("family", FAMILIES)
async def test_concurrent_async_streams_share_one_transport_with_exact_counters(family):
    n = 200
    module = fam(family)
    tel = make_telemetry()
    inner = module.MockTransport(handler_for(module, yield_control=True))
    transport = cachewatch.AsyncCacheWatchTransport(inner, **tel.kwargs)
    kinds = [kind_of(i) for i in range(n)]
    start = asyncio.Event()

    async def one(client: Any, kind: str) -> None:
        await start.wait()
        await do_async(client, kind)

    async with module.AsyncClient(transport=transport) as client:
        tasks = [asyncio.ensure_future(one(client, k)) for k in kinds]
        await asyncio.sleep(0)
        start.set()
        await asyncio.gather(*tasks)
    check_totals(tel, kinds)


@pytest.mark.parametrize("family", FAMILIES)
async def test_async_streams_really_interleave(family):
    """Guard for the test above: with 200 tasks, streams are open at the same time."""
    module = fam(family)
    open_now = 0
    peak = 0

    class Counting(module.AsyncBaseTransport):
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def handle_async_request(self, request: Any) -> Any:
            nonlocal open_now, peak
            open_now += 1
            peak = max(peak, open_now)
            r = await self.inner.handle_async_request(request)
            return r

    def closed() -> None:
        nonlocal open_now
        open_now -= 1

    tel = make_telemetry()
    inner = Counting(module.MockTransport(handler_for(module, yield_control=True)))
    transport = cachewatch.AsyncCacheWatchTransport(inner, **tel.kwargs)
    async with module.AsyncClient(transport=transport) as client:

        async def one() -> None:
            await do_async(client, "sse_stream")
            closed()

        await asyncio.gather(*(one() for _ in range(50)))
    assert peak > 10
    assert tel.requests(outcome="ok") == 50


# -- memory ------------------------------------------------------------------------------------

WARMUP = 100
GROWTH_LIMIT = 100_000  # bytes; a 100-byte-per-request leak over 1,000 requests would exceed it


def _quiet_kwargs() -> dict[str, Any]:
    # A tracer provider with no processor and a logger that keeps nothing: the only memory
    # that can grow is cachewatch's (and httpx's) own.
    return {
        "registry": CollectorRegistry(),
        "tracer_provider": TracerProvider(),
        "logger": structlog.wrap_logger(structlog.testing.ReturnLogger(), processors=[]),
    }


def _measure(run: Any) -> tuple[int, int]:
    tracemalloc.start()
    try:
        run(WARMUP)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        run(10 * WARMUP)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return before, after


@pytest.mark.parametrize("family", FAMILIES)
def test_memory_stays_flat_sync(family):
    module = fam(family)
    kwargs = _quiet_kwargs()
    transport = cachewatch.CacheWatchTransport(module.MockTransport(handler_for(module)), **kwargs)
    client = module.Client(transport=transport)
    done = 0

    def run(n: int) -> None:
        nonlocal done
        for i in range(n):
            do_sync(client, kind_of(done + i))
        done += n

    before, after = _measure(run)
    client.close()
    assert metric_sum(kwargs["registry"], "cachewatch_requests_total") == 11 * WARMUP
    assert after - before < GROWTH_LIMIT, f"memory grew by {after - before} bytes over {10 * WARMUP} requests"


@pytest.mark.parametrize("family", FAMILIES)
def test_memory_stays_flat_async(family):
    module = fam(family)
    kwargs = _quiet_kwargs()
    transport = cachewatch.AsyncCacheWatchTransport(module.MockTransport(handler_for(module)), **kwargs)

    async def batch(n: int, offset: int) -> None:
        async with module.AsyncClient(transport=transport) as client:
            for start in range(0, n, 20):
                await asyncio.gather(
                    *(do_async(client, kind_of(offset + start + j)) for j in range(min(20, n - start)))
                )

    done = 0
    loop = asyncio.new_event_loop()

    def run(n: int) -> None:
        nonlocal done
        loop.run_until_complete(batch(n, done))
        done += n

    try:
        before, after = _measure(run)
    finally:
        loop.close()
    assert metric_sum(kwargs["registry"], "cachewatch_requests_total") == 11 * WARMUP
    assert after - before < GROWTH_LIMIT, f"memory grew by {after - before} bytes over {10 * WARMUP} requests"
