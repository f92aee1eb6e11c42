"""The dashscope SDK against the emulator: 1.x through ``cachewatch proxy``, 2.0 through the helper.

* 1.x module API (``dashscope.Generation.call``) sends with ``requests``: no transport can
  see it, so ``dashscope.base_http_api_url`` points at the proxy.
* 2.0 client (``dashscope.Client`` / ``AsyncClient``): :func:`cachewatch.instrument_dashscope`
  gives it an instrumented HTTP client with the SDK's own settings. (The SDK's
  ``http_client=`` argument would drop the API key header and the SDK's timeouts; the
  test shows the helper keeps both.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import dashscope
import httpx
import pytest
from prometheus_client import CollectorRegistry

import cachewatch
from _frameworks import SYSTEM, Ledger, emulated, outcomes, proxied, tokens, total

MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is a cache hit?"}]


@pytest.fixture(scope="module")
def emulator() -> Iterator[tuple[Ledger, str]]:
    with emulated() as served:
        yield served


@pytest.fixture
def ledger(emulator: tuple[Ledger, str]) -> Ledger:
    emulator[0].reset()
    return emulator[0]


def check(registry: CollectorRegistry, ledger: Ledger, n: int) -> None:
    bills = ledger.taken()
    assert len(bills) == n
    assert all(b.completed for b in bills)
    assert bills[0].usage["cache_write_5m"] >= 3_000
    assert all(b.usage["cache_read"] >= 3_000 for b in bills[1:])
    assert all("authorization" in b.headers for b in bills)  # the API key went out
    assert tokens(registry, api="dashscope_generation") == total(bills)
    assert outcomes(registry) == {"ok": n}


def test_generation_call_1x_through_the_proxy(emulator: tuple[Ledger, str], ledger: Ledger) -> None:
    registry = CollectorRegistry()
    saved = dashscope.base_http_api_url
    try:
        with proxied(emulator[1], registry) as proxy:
            dashscope.base_http_api_url = f"{proxy}/api/v1"
            kwargs: dict[str, Any] = {
                "model": "qwen-plus",
                "messages": MESSAGES,
                "api_key": "sk-test",
                "result_format": "message",
            }
            first = dashscope.Generation.call(**kwargs)
            assert first.status_code == 200, first
            last = None
            for last in dashscope.Generation.call(stream=True, incremental_output=True, **kwargs):
                assert last.status_code == 200, last
            assert last is not None
            assert last.usage["prompt_tokens_details"]["cached_tokens"] >= 3_000
            check(registry, ledger, 2)
    finally:
        dashscope.base_http_api_url = saved


def test_client_2x_sync_and_async(emulator: tuple[Ledger, str], ledger: Ledger) -> None:
    registry = CollectorRegistry()
    client = cachewatch.instrument_dashscope(
        dashscope.Client(api_key="sk-test", base_url=emulator[1], max_retries=0), registry=registry
    )
    assert client._transport.http_client.timeout.read == 300.0  # the SDK's timeouts, not httpx's 5 s
    first = client.chat.completions.create(model="qwen-plus", messages=MESSAGES)
    assert first.usage.prompt_tokens_details["cache_creation_input_tokens"] >= 3_000
    chunks = list(client.chat.completions.create(model="qwen-plus", messages=MESSAGES, stream=True))
    assert chunks[-1].usage.prompt_tokens_details["cached_tokens"] >= 3_000

    async def run() -> None:
        aclient = cachewatch.instrument_dashscope(
            dashscope.AsyncClient(api_key="sk-test", base_url=emulator[1], max_retries=0), registry=registry
        )
        await aclient.chat.completions.create(model="qwen-plus", messages=MESSAGES)
        stream = await aclient.chat.completions.create(model="qwen-plus", messages=MESSAGES, stream=True)
        _ = [chunk async for chunk in stream]
        await aclient.aclose()

    asyncio.run(run())
    check(registry, ledger, 4)

    # A client derived with with_options() shares the instrumented HTTP client, and its options.
    derived = client.with_options(max_retries=1)
    derived.chat.completions.create(model="qwen-plus", messages=MESSAGES)
    assert len(ledger.taken()) == 1
    assert outcomes(registry) == {"ok": 5}
    with pytest.raises(ValueError, match="already goes through cachewatch"):
        cachewatch.instrument_dashscope(derived)

    # The client owned its pool: closing it still closes the pool it lent.
    borrowed = client._transport.http_client._transport.transport
    client.close()
    assert borrowed._owner.is_closed


def test_instrumenting_twice_and_other_objects_are_refused(emulator: tuple[Ledger, str]) -> None:
    client = cachewatch.instrument_dashscope(
        dashscope.Client(api_key="sk-test", base_url=emulator[1]), registry=CollectorRegistry()
    )
    with pytest.raises(ValueError, match="already goes through cachewatch"):
        cachewatch.instrument_dashscope(client, registry=CollectorRegistry())
    client.close()
    with pytest.raises(TypeError, match=r"dashscope 2\.0 Client"):
        cachewatch.instrument_dashscope(httpx.Client())
