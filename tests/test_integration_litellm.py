"""LiteLLM's SDK through cachewatch, and through ``cachewatch proxy``, against the emulator.

The hooks are LiteLLM's ``client=`` argument:

* ``anthropic/`` models (LiteLLM's own HTTP handler; it ignores ``litellm.client_session``):
  ``client=handler`` where ``handler = HTTPHandler()`` / ``AsyncHTTPHandler()`` had its
  ``.client`` wrapped by :func:`cachewatch.wrap` (LiteLLM's own httpx client, settings kept);
* ``openai/`` models (the openai SDK): ``client=cachewatch.wrap(openai.OpenAI(...))``.

Without a hook, pointing ``api_base`` at the proxy covers both.

Without ``stream_options={"include_usage": True}`` LiteLLM stops reading an Anthropic
stream at ``message_delta`` and closes it without reading ``message_stop``: a stream whose
final usage and stop reason have arrived is complete, so it is recorded ``ok``.
:func:`test_anthropic_stream_read_to_message_delta_is_ok` holds the final event back, so
that no timing can hide a regression.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-map download at import

import litellm
import openai
import pytest
from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler, HTTPHandler
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import cachewatch
from _frameworks import SYSTEM, Ledger, emulated, outcomes, proxied, tokens, total
from cachewatch.emulator import create_app, run_in_thread

CLAUDE = "anthropic/claude-sonnet-4-6"
QWEN = "openai/qwen3.6-plus"
pytestmark = [
    # LiteLLM imports provider modules lazily on its first calls; one of them makes pydantic warn,
    pytest.mark.filterwarnings("ignore:Items? .* the `ReadOnly` qualifier:UserWarning"),
    # and its stream wrapper reads a pydantic attribute the deprecated way.
    pytest.mark.filterwarnings(
        "ignore:Accessing the 'model_(computed_)?fields' attribute on the instance:DeprecationWarning"
    ),
]
USAGE: dict[str, Any] = {"stream_options": {"include_usage": True}}  # usage on the last chunk
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is a cache hit?"}]


@pytest.fixture(scope="module")
def emulator() -> Iterator[tuple[Ledger, str]]:
    with emulated() as served:
        yield served


@pytest.fixture
def ledger(emulator: tuple[Ledger, str]) -> Ledger:
    emulator[0].reset()
    return emulator[0]


def consume(stream: Any) -> list[Any]:
    return list(stream)


async def aconsume(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]


def check(registry: CollectorRegistry, ledger: Ledger, n: int, replies: list[Any]) -> None:
    """``n`` requests, the second on reading the cache; cachewatch counted what was billed."""
    bills = ledger.taken()
    assert len(bills) == n
    assert bills[0].usage["cache_write_5m"] >= 3_000
    assert all(b.usage["cache_read"] >= 3_000 for b in bills[1:])
    assert outcomes(registry) == {"ok": n}  # every stream read to its end
    assert tokens(registry) == total(bills)
    for reply, bill in zip(replies, bills, strict=True):  # what LiteLLM reported, request by request
        usage = reply.usage if not isinstance(reply, list) else reply[-1].usage
        assert usage.completion_tokens == bill.usage["output"]
        assert usage.prompt_tokens_details.cached_tokens == bill.usage["cache_read"]


def test_anthropic_model_sync(emulator: tuple[Ledger, str], ledger: Ledger) -> None:
    registry = CollectorRegistry()
    handler = HTTPHandler()
    cachewatch.wrap(handler.client, registry=registry)
    kwargs: dict[str, Any] = {"api_base": emulator[1], "api_key": "sk-ant-test", "client": handler}
    replies = [
        litellm.completion(model=CLAUDE, messages=MESSAGES, **kwargs),
        litellm.completion(model=CLAUDE, messages=MESSAGES, **kwargs),
        consume(litellm.completion(model=CLAUDE, messages=MESSAGES, stream=True, **USAGE, **kwargs)),
    ]
    check(registry, ledger, 3, replies)
    handler.close()


def test_anthropic_model_async(emulator: tuple[Ledger, str], ledger: Ledger) -> None:
    registry = CollectorRegistry()

    async def run() -> list[Any]:
        handler = AsyncHTTPHandler()  # LiteLLM's aiohttp-based transport, wrapped
        cachewatch.wrap(handler.client, registry=registry)
        kwargs: dict[str, Any] = {"api_base": emulator[1], "api_key": "sk-ant-test", "client": handler}
        replies = [
            await litellm.acompletion(model=CLAUDE, messages=MESSAGES, **kwargs),
            await aconsume(
                await litellm.acompletion(model=CLAUDE, messages=MESSAGES, stream=True, **USAGE, **kwargs)
            ),
        ]
        await handler.close()
        return replies

    check(registry, ledger, 2, asyncio.run(run()))


def test_openai_model_sync_and_async(emulator: tuple[Ledger, str], ledger: Ledger) -> None:
    registry = CollectorRegistry()
    base_url = f"{emulator[1]}/compatible-mode/v1"
    client = cachewatch.wrap(
        openai.OpenAI(api_key="sk-test", base_url=base_url, max_retries=0), registry=registry
    )
    replies = [
        litellm.completion(model=QWEN, messages=MESSAGES, client=client),
        consume(litellm.completion(model=QWEN, messages=MESSAGES, client=client, stream=True, **USAGE)),
    ]

    async def run() -> None:
        aclient = cachewatch.wrap(
            openai.AsyncOpenAI(api_key="sk-test", base_url=base_url, max_retries=0), registry=registry
        )
        replies.append(await litellm.acompletion(model=QWEN, messages=MESSAGES, client=aclient))
        stream = await litellm.acompletion(
            model=QWEN, messages=MESSAGES, client=aclient, stream=True, **USAGE
        )
        replies.append(await aconsume(stream))
        await aclient.close()

    asyncio.run(run())
    check(registry, ledger, 4, replies)
    client.close()


def test_through_the_proxy(emulator: tuple[Ledger, str], ledger: Ledger) -> None:
    """No hook at all: ``api_base`` points at ``cachewatch proxy``, for both providers."""
    for model, path in ((CLAUDE, ""), (QWEN, "/compatible-mode/v1")):
        registry = CollectorRegistry()
        with proxied(emulator[1], registry) as proxy:
            kwargs: dict[str, Any] = {"model": model, "api_base": f"{proxy}{path}", "api_key": "sk-test"}
            replies = [
                litellm.completion(messages=MESSAGES, **kwargs),
                consume(litellm.completion(messages=MESSAGES, stream=True, **USAGE, **kwargs)),
            ]
            check(registry, ledger, 2, replies)


class HoldsMessageStop:
    """Sends ``message_stop`` half a second after the rest, as its own network chunk."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def held_send(message: Message) -> None:
            if message["type"] == "http.response.body" and b"event: message_stop" in message.get("body", b""):
                await asyncio.sleep(0.5)
            await send(message)

        await self.app(scope, receive, held_send)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_anthropic_stream_read_to_message_delta_is_ok(mode: str) -> None:
    registry = CollectorRegistry()
    with run_in_thread(HoldsMessageStop(create_app())) as url:
        kwargs: dict[str, Any] = {
            "model": CLAUDE,
            "messages": MESSAGES,
            "api_base": url,
            "api_key": "sk-ant-test",
        }
        if mode == "sync":
            handler = HTTPHandler()
            cachewatch.wrap(handler.client, registry=registry)
            chunks = consume(litellm.completion(stream=True, client=handler, **kwargs))
            handler.close()
        else:

            async def run() -> list[Any]:
                ahandler = AsyncHTTPHandler()
                cachewatch.wrap(ahandler.client, registry=registry)
                stream = await litellm.acompletion(stream=True, client=ahandler, **kwargs)
                out = await aconsume(stream)
                await ahandler.close()
                return out

            chunks = asyncio.run(run())
    assert chunks[-1].choices[0].finish_reason == "stop"  # LiteLLM got the whole answer ...
    assert outcomes(registry) == {"ok": 1}  # ... so the stream finished ok, not aborted
