"""pydantic-ai agents through cachewatch, against the emulator (README "Frameworks").

The hooks are pydantic-ai's own: ``AnthropicProvider(anthropic_client=cachewatch.wrap(...))``
and ``OpenAIProvider(http_client=httpx2.AsyncClient(transport=AsyncCacheWatchTransport()))``.
(Wrapping ``provider.client`` after the fact does not last: a provider that built its own
HTTP client closes it when ``async with agent:`` exits and builds a fresh, unwrapped one
the next time the agent is entered.)

Each test runs an agent with one tool inside ``async with agent:``, once with
``agent.run()`` (two requests: the tool call, then the answer, which reads the cache the
first one wrote) and once streamed (``event_stream_handler``: every model request is a
stream), then checks cachewatch's counters against what the emulator billed.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterator
from typing import Any

import anthropic
import httpx2
import pytest
from prometheus_client import CollectorRegistry
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import AgentStreamEvent, PartDeltaEvent
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.openai import OpenAIProvider

import cachewatch
from _frameworks import SYSTEM, TOOL_PROMPT, Ledger, emulated, outcomes, tokens, total


@pytest.fixture(scope="module")
def emulator() -> Iterator[tuple[Ledger, str]]:
    with emulated() as served:
        yield served


@pytest.fixture
def ledger(emulator: tuple[Ledger, str]) -> Ledger:
    emulator[0].reset()
    return emulator[0]


def agent_with_tool(model: Any) -> tuple[Agent[None, str], list[str]]:
    agent: Agent[None, str] = Agent(model, instructions=SYSTEM)
    calls: list[str] = []

    @agent.tool_plain
    def lookup(q: str) -> str:
        """Look something up."""
        calls.append(q)
        return f"found {q}"

    return agent, calls


async def run_twice(agent: Agent[None, str]) -> int:
    """A plain run and a streamed run of the tool prompt; returns the stream deltas seen."""
    deltas = 0

    async def on_events(_: RunContext[None], events: AsyncIterable[AgentStreamEvent]) -> None:
        nonlocal deltas
        async for event in events:
            deltas += isinstance(event, PartDeltaEvent)

    async with agent:
        result = await agent.run(TOOL_PROMPT)
        assert result.output
        assert result.usage.requests == 2
        assert result.usage.cache_read_tokens > 0  # the answer read what the tool call wrote
        streamed = await agent.run(TOOL_PROMPT, event_stream_handler=on_events)
        assert streamed.usage.requests == 2
    return deltas


def check(registry: CollectorRegistry, ledger: Ledger, api: str) -> None:
    bills = ledger.taken()
    assert len(bills) == 4
    assert all(b.completed for b in bills)
    assert all(b.usage["cache_read"] > 0 for b in bills[1:])  # turn 2 on: read what turn 1 wrote
    assert tokens(registry, api=api) == total(bills)
    assert outcomes(registry) == {"ok": 4}


async def test_anthropic_model_with_a_tool(emulator: tuple[Ledger, str], ledger: Ledger) -> None:
    registry = CollectorRegistry()
    client = cachewatch.wrap(
        anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=emulator[1], max_retries=0),
        registry=registry,
    )
    model = AnthropicModel("claude-sonnet-4-6", provider=AnthropicProvider(anthropic_client=client))
    agent, calls = agent_with_tool(model)
    deltas = await run_twice(agent)
    assert calls == ["example q", "example q"]
    assert deltas > 0
    check(registry, ledger, "messages")
    await client.close()


async def test_openai_compatible_model_with_a_tool(emulator: tuple[Ledger, str], ledger: Ledger) -> None:
    registry = CollectorRegistry()
    http = httpx2.AsyncClient(transport=cachewatch.AsyncCacheWatchTransport(registry=registry))
    provider = OpenAIProvider(
        base_url=f"{emulator[1]}/compatible-mode/v1", api_key="sk-test", http_client=http
    )
    agent, calls = agent_with_tool(OpenAIChatModel("qwen3.6-plus", provider=provider))
    deltas = await run_twice(agent)
    assert calls == ["example q", "example q"]
    assert deltas > 0
    check(registry, ledger, "chat_completions")
    await http.aclose()
