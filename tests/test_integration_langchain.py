"""LangChain's ChatAnthropic and ChatOpenAI through ``cachewatch.instrument_langchain()``.

``ChatAnthropic`` takes no HTTP client, and both models share one cached httpx client
per base URL between instances, so the helper gives the instrumented model its own
client over the shared connection pool. The tests drive the real models against the
emulator (sync and async, invoke and stream; the second call reads the cache) and check
cachewatch's counters against what the emulator billed, and that a sibling model with
the same base URL is neither instrumented by it nor instrumented with its options.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import BaseMessage
from langchain_openai import ChatOpenAI
from prometheus_client import CollectorRegistry

import cachewatch
from _frameworks import SYSTEM, Ledger, emulated, outcomes, tokens, total

PROMPT = [("system", SYSTEM), ("human", "What is a cache hit?")]


@pytest.fixture(scope="module")
def emulator() -> Iterator[tuple[Ledger, str]]:
    with emulated() as served:
        yield served


@pytest.fixture
def ledger(emulator: tuple[Ledger, str]) -> Ledger:
    emulator[0].reset()
    return emulator[0]


def claude(base_url: str) -> ChatAnthropic:
    return ChatAnthropic(
        model_name="claude-sonnet-4-6", base_url=base_url, api_key="sk-ant-test", max_retries=0
    )  # type: ignore[call-arg]


def qwen(base_url: str, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model="qwen3.6-plus",
        base_url=f"{base_url}/compatible-mode/v1",
        api_key="sk-test",
        max_retries=0,
        **options,
    )


def drive(llm: Any) -> list[BaseMessage]:
    """invoke, stream, ainvoke, astream: four requests, all of the same prompt.

    The async calls share one event loop: LangChain's cached async httpx client (and so
    the pool an instrumented model borrows) keeps connections bound to the loop that
    opened them.
    """
    replies: list[BaseMessage] = [llm.invoke(PROMPT)]
    chunks = list(llm.stream(PROMPT))
    replies.append(sum(chunks[1:], chunks[0]))

    async def run_async() -> None:
        replies.append(await llm.ainvoke(PROMPT))
        achunks = [c async for c in llm.astream(PROMPT)]
        replies.append(sum(achunks[1:], achunks[0]))

    asyncio.run(run_async())
    return replies


@pytest.mark.parametrize(
    "make", [claude, lambda url: qwen(url, stream_usage=True)], ids=["ChatAnthropic", "ChatOpenAI"]
)
def test_chat_model_sync_async_and_streams(emulator: tuple[Ledger, str], ledger: Ledger, make: Any) -> None:
    registry, sibling_registry = CollectorRegistry(), CollectorRegistry()
    llm = cachewatch.instrument_langchain(make(emulator[1]), registry=registry)
    sibling = make(emulator[1])  # same base URL: the same cached httpx client underneath

    replies = drive(llm)
    bills = ledger.taken()
    assert len(bills) == 4
    assert all(b.completed for b in bills)
    assert bills[0].usage["cache_write_5m"] >= 3_000
    assert all(b.usage["cache_read"] >= 3_000 for b in bills[1:])
    assert tokens(registry) == total(bills)
    assert outcomes(registry) == {"ok": 4}
    for reply, bill in zip(replies, bills, strict=True):  # what the model reported, request by request
        usage = reply.usage_metadata
        assert usage is not None
        assert usage["output_tokens"] == bill.usage["output"]
        assert usage["input_token_details"].get("cache_read") == bill.usage["cache_read"]

    # The sibling shares the cached client but is not instrumented by llm ...
    sibling.invoke(PROMPT)
    assert len(ledger.taken()) == 1
    assert outcomes(registry) == {"ok": 4}
    # ... and instrumenting it gives it its own options (here: its own registry).
    cachewatch.instrument_langchain(sibling, registry=sibling_registry)
    sibling.invoke(PROMPT)
    assert total(ledger.taken()) == tokens(sibling_registry)
    assert outcomes(sibling_registry) == {"ok": 1}
    assert outcomes(registry) == {"ok": 4}


def test_chat_openai_with_its_own_http_clients(emulator: tuple[Ledger, str], ledger: Ledger) -> None:
    """A ChatOpenAI given http_client= / http_async_client= is instrumented over those clients."""
    import httpx2

    sync_http, async_http = httpx2.Client(), httpx2.AsyncClient()
    registry = CollectorRegistry()
    llm = cachewatch.instrument_langchain(
        qwen(emulator[1], http_client=sync_http, http_async_client=async_http, stream_usage=True),
        registry=registry,
    )
    llm.invoke(PROMPT)

    async def run_async() -> None:
        await llm.ainvoke(PROMPT)
        await async_http.aclose()

    asyncio.run(run_async())
    assert tokens(registry) == total(ledger.taken())
    assert outcomes(registry) == {"ok": 2}
    assert not sync_http.is_closed  # the user's clients are lent, not taken over
    sync_http.close()


@pytest.mark.parametrize("make", [claude, qwen], ids=["ChatAnthropic", "ChatOpenAI"])
def test_instrumenting_twice_is_refused(emulator: tuple[Ledger, str], make: Any) -> None:
    llm = cachewatch.instrument_langchain(make(emulator[1]), registry=CollectorRegistry())
    with pytest.raises(ValueError, match="already goes through cachewatch"):
        cachewatch.instrument_langchain(llm, registry=CollectorRegistry())


def test_a_shared_client_wrapped_in_place_is_refused_not_double_wrapped(
    emulator: tuple[Ledger, str], ledger: Ledger
) -> None:
    """``wrap(llm._client)`` instruments the cached client of every sibling: detected, and said."""
    import langchain_anthropic._client_utils as cache

    registry = CollectorRegistry()
    first = claude(emulator[1])
    try:
        cachewatch.wrap(first._client, registry=registry)
        second = claude(emulator[1])
        before = second.__dict__.get("_client")
        with pytest.raises(ValueError, match=r"shares\) a client wrapped by cachewatch.wrap"):
            cachewatch.instrument_langchain(second, registry=CollectorRegistry())
        assert second.__dict__.get("_client") is before or before is None  # left as it was
        second.invoke(PROMPT)  # counted once, by the in-place wrap
        assert outcomes(registry) == {"ok": 1}
        assert tokens(registry) == total(ledger.taken())
    finally:
        # The in-place wrap changed langchain's process-wide cached (sync) client: drop it.
        first._client._client.close()
        cache._get_default_httpx_client.cache_clear()


def test_other_objects_are_refused() -> None:
    with pytest.raises(TypeError, match=r"expects a langchain_anthropic\.ChatAnthropic"):
        cachewatch.instrument_langchain(object())
