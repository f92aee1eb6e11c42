"""Planner placements against the emulator, through the real transport and SDK (SPEC section 6).

The emulator implements the providers' caching rules (prefix hashes per breakpoint, the
20-position lookback, per-model minimums). Every request here carries no cache_control of
its own: what is read comes from the markers cachewatch inserted.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from prometheus_client import CollectorRegistry

import cachewatch
from cachewatch.emulator import create_app, run_in_thread

_WORDS = [
    "order",
    "refund",
    "parcel",
    "invoice",
    "policy",
    "region",
    "ticket",
    "agent",
    "clause",
    "quota",
    "usage",
    "alert",
]


def words(seed: str, n: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(_WORDS) for _ in range(n))


class _Silent:
    def info(self, *args: Any, **kwargs: Any) -> None:
        pass


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with run_in_thread(create_app()) as url:
        yield url


def claude(base_url: str, key: str, path: str = "") -> Any:
    client = anthropic.Anthropic(api_key=key, base_url=base_url + path, max_retries=0)
    return cachewatch.wrap(client, registry=CollectorRegistry(), logger=_Silent())


SYSTEM = "You are a careful assistant. " + words("system", 2500)


def test_turn_n_plus_1_reads_what_turn_n_wrote(base_url: str) -> None:
    client = claude(base_url, "planner-chat")
    messages: list[dict[str, Any]] = []
    previous_prompt = 0
    for turn in range(6):
        messages.append({"role": "user", "content": words(f"q{turn}", 80)})
        reply = client.messages.create(
            model="claude-sonnet-4-6", max_tokens=64, system=SYSTEM, messages=messages
        )
        usage = reply.usage
        prompt = usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
        if turn > 0:
            # Everything the previous request sent was written, so this one reads all of it.
            assert usage.cache_read_input_tokens >= previous_prompt, (turn, usage)
        previous_prompt = prompt
        messages.append({"role": "assistant", "content": reply.content[0].text})


def test_agent_tool_loop_reads_across_iterations(base_url: str) -> None:
    client = claude(base_url, "planner-agent")
    tools = [
        {
            "name": "search_orders",
            "description": words("tool", 600),
            "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        }
    ]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Please use the tool search_orders."}]
    reads = []
    for iteration in range(5):
        with client.messages.stream(
            model="claude-sonnet-4-6", max_tokens=64, system=SYSTEM, tools=tools, messages=messages
        ) as stream:
            message = stream.get_final_message()
        reads.append(message.usage.cache_read_input_tokens)
        messages.append(
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]}
        )
        tool_use = next((b for b in message.content if b.type == "tool_use"), None)
        if tool_use is not None:
            result = {
                "type": "tool_result",
                "tool_use_id": tool_use.id,
                "content": words(f"r{iteration}", 400),
            }
            messages.append({"role": "user", "content": [result]})
        else:
            messages.append(
                {"role": "user", "content": f"Step {iteration}: please use the tool search_orders."}
            )
    assert reads[0] == 0
    assert all(r > 0 for r in reads[1:]), reads
    assert reads == sorted(reads), reads  # each iteration reads at least what the last one did


def _prompt_cost(usage: Any) -> float:
    """Prompt cost in input-token units (5m write 1.25, read 0.1)."""
    return (
        usage.input_tokens
        + 1.25 * (usage.cache_creation_input_tokens or 0)
        + 0.1 * (usage.cache_read_input_tokens or 0)
    )


def test_an_agent_that_drops_each_huge_tool_result_at_the_next_step_does_not_write_them(
    base_url: str,
) -> None:
    """Agent steps whose tool result is huge (3-6k tokens) half the time; the app replaces
    each huge result by a short note at the step after it. A write through a huge result
    is never read; one through a small result is read by the next step. Against marking
    the system prompt and, unless it holds a huge result, the last message (hindsight):
    ``auto`` 0.992x on this sample, 0.984x-1.010x on five; 1.022x (1.007x-1.047x) before
    the unsettled statistic was kept apart per size class of what a request adds, when it
    wrote the huge results of steps whose history had just changed."""
    auto = claude(base_url, "planner-hugedrop")
    hindsight = anthropic.Anthropic(api_key="planner-hugedrop-best", base_url=base_url, max_retries=0)
    rng = random.Random("hugedrop")
    tools = [{"name": "query", "description": words("qtool", 400), "input_schema": {"type": "object"}}]
    kwargs: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 16, "tools": tools}
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    costs = {"auto": 0.0, "hindsight": 0.0}
    for task in range(6):
        messages: list[dict[str, Any]] = [{"role": "user", "content": words(f"task{task}", 150)}]
        dropped: list[dict[str, Any]] = []  # the huge result the next step drops
        for step in range(8):
            marked = list(messages)
            if not dropped:
                content = messages[-1]["content"]
                blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
                marked[-1] = {
                    "role": "user",
                    "content": [*blocks[:-1], {**blocks[-1], "cache_control": {"type": "ephemeral"}}],
                }
            usage = hindsight.messages.create(system=system, messages=marked, **kwargs).usage
            costs["hindsight"] += _prompt_cost(usage)
            costs["auto"] += _prompt_cost(
                auto.messages.create(system=SYSTEM, messages=messages, **kwargs).usage
            )
            for block in dropped:
                block["content"] = "[summarised] " + words(f"sum{task}-{step}", 40)
            dropped = []
            uid = f"toolu_{task:02d}{step:02d}"
            call = {"type": "tool_use", "id": uid, "name": "query", "input": {}}
            messages.append({"role": "assistant", "content": [call]})
            huge = rng.random() < 0.5
            size = rng.randint(3_000, 6_000) if huge else rng.randint(100, 400)
            result = {"type": "tool_result", "tool_use_id": uid, "content": words(f"r{task}-{step}", size)}
            if huge:
                dropped = [result]
            messages.append({"role": "user", "content": [result]})
    assert costs["auto"] <= 1.01 * costs["hindsight"], costs


def test_questions_over_one_shared_document(base_url: str) -> None:
    client = claude(base_url, "planner-doc", path="/apps/anthropic")  # the DashScope profile
    document = "Contract. " + words("doc", 3000)
    reads = []
    for q in range(10):
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": document},
                    {"type": "text", "text": f"Question {q}: " + words(f"dq{q}", 30)},
                ],
            }
        ]
        reply = client.messages.create(model="qwen3.6-plus", max_tokens=64, messages=messages)
        reads.append(reply.usage.cache_read_input_tokens)
    assert reads[0] == 0
    # Questions 2..10 read the document written by the first.
    assert all(r >= 3000 for r in reads[1:]), reads


def ask_once(client: Any, system: list[dict[str, str]], seed: str, **options: Any) -> tuple[int, int]:
    """One one-shot request: (tokens read from the cache, the whole prompt)."""
    usage = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=16,
        system=system,
        messages=[{"role": "user", "content": words(seed, 40)}],
        **options,
    ).usage
    return usage.cache_read_input_tokens, (
        usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    )


@pytest.mark.parametrize("tools", [False, True])
def test_the_stable_prefix_before_a_system_block_that_changes_every_time_is_read(
    base_url: str, tools: bool
) -> None:
    # Shared instructions, then a block different on every request (a per-user profile,
    # a timestamp moved after the stable part). The last system block never recurs; once
    # the family's static blocks show which one keeps changing, the static prefix ends
    # before it, and later requests read the instructions. Without it nothing was read.
    client = claude(base_url, f"planner-volatile-{tools}")
    defs = (
        [{"name": "lookup", "description": words("vtool", 300), "input_schema": {"type": "object"}}]
        if tools
        else []
    )
    instructions = "Shared instructions. " + words("instructions", 2500)
    reads, prompts = zip(
        *(
            ask_once(
                client,
                [
                    {"type": "text", "text": instructions},
                    {"type": "text", "text": f"User {i}: " + words(f"profile{i}", 1500)},
                ],
                f"vq{i}",
                **({"tools": defs} if tools else {}),
            )
            for i in range(10)
        ),
        strict=True,
    )
    # The first request goes by the prior (the end of the system prompt, never read again)
    # and marks the instructions too, at no cost (the hedge before the region's last
    # block, until the family's stability is known); the learner then sees the profile
    # change on every request, and the instructions are read from the second request on.
    # A profile is never read: it never recurs.
    assert reads[0] == 0
    assert all(r > 0 for r in reads[1:]), reads
    assert reads[-3] == reads[-2] == reads[-1] > 0, reads
    assert all(r <= p - 1_500 for r, p in zip(reads, prompts, strict=True)), (reads, prompts)


def test_a_system_block_that_takes_turns_between_a_few_values_is_still_read(base_url: str) -> None:
    # Two tenants' prompts after shared instructions, taking turns: the last system block
    # changes at every request, but each value comes back. Both prefixes are candidates,
    # and the recurrence statistics keep writing the whole system prompt of each tenant.
    client = claude(base_url, "planner-tenants")
    instructions = "Shared instructions. " + words("tenants-shared", 1500)
    tenants = ["Tenant A. " + words("tenant-a", 1500), "Tenant B. " + words("tenant-b", 1500)]
    reads, prompts = zip(
        *(
            ask_once(
                client,
                [{"type": "text", "text": instructions}, {"type": "text", "text": tenants[i % 2]}],
                f"tq{i}",
            )
            for i in range(10)
        ),
        strict=True,
    )
    # Once each tenant's prompt has come back (a first sighting is written on the prior
    # only while no other prefix of the family is pending), every request reads its
    # tenant's whole system prompt: all but the question.
    assert all(p - r < 200 for r, p in zip(reads[4:], prompts[4:], strict=True)), (reads, prompts)


def test_dashscope_openai_compatible_chat_reads(base_url: str) -> None:
    client = cachewatch.wrap(
        openai.OpenAI(api_key="planner-ds", base_url=base_url + "/compatible-mode/v1", max_retries=0),
        registry=CollectorRegistry(),
        logger=_Silent(),
    )
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    cached = []
    for turn in range(4):
        messages.append({"role": "user", "content": words(f"o{turn}", 60)})
        reply = client.chat.completions.create(model="qwen-plus", messages=messages)
        cached.append(reply.usage.prompt_tokens_details.cached_tokens)
        messages.append({"role": "assistant", "content": reply.choices[0].message.content})
    assert cached[0] == 0
    assert all(c > 2500 for c in cached[1:]), cached


def test_prefix_below_the_minimum_gets_no_marker(base_url: str) -> None:
    registry = CollectorRegistry()
    client = cachewatch.wrap(
        anthropic.Anthropic(api_key="planner-small", base_url=base_url, max_retries=0),
        registry=registry,
        logger=_Silent(),
        providers={base_url.split("://", 1)[1]: "anthropic"},
    )
    for _ in range(2):
        reply = client.messages.create(
            model="claude-haiku-4-5",  # minimum 4,096 tokens
            max_tokens=32,
            system=words("short", 1500),
            messages=[{"role": "user", "content": "hello"}],
        )
        assert reply.usage.cache_creation_input_tokens == 0
        assert reply.usage.cache_read_input_tokens == 0
    inserted = registry.get_sample_value(
        "cachewatch_breakpoints_total", {"provider": "anthropic", "location": "system", "action": "inserted"}
    )
    assert not inserted
    skipped = sum(
        registry.get_sample_value(
            "cachewatch_breakpoints_total",
            {"provider": "anthropic", "location": loc, "action": "skipped_below_minimum"},
        )
        or 0
        for loc in ("system", "messages", "top_level")
    )
    assert skipped >= 2


def test_a_stream_whose_first_event_has_not_come_is_still_writing() -> None:
    # A streamed response can begin (headers) well before its first event (a relay that
    # flushes its headers at once, a long prefill): the provider's cache entry exists only
    # from the first event on. A sibling planned in between must not believe it readable:
    # marking it to read, it would pay for a write of its own, and the correction after
    # that read failed would forget the entry (and send the next siblings unmarked).
    arrived: list[int] = []
    release = threading.Event()

    async def hold() -> None:  # each response, before its first event (a stream's headers are out)
        arrived.append(1)
        while not release.is_set():
            await asyncio.sleep(0.002)

    with run_in_thread(create_app(before_response=hold)) as url:
        client = claude(url, "planner-stream-start")
        body: dict[str, Any] = {
            "model": "claude-sonnet-4-6",
            "max_tokens": 16,
            "system": SYSTEM,
            "messages": [{"role": "user", "content": words("sq0", 40)}],
        }
        second = {**body, "messages": [{"role": "user", "content": words("sq1", 40)}]}
        done: list[Any] = []
        headers_in = threading.Event()

        def stream() -> None:
            with client.messages.stream(**body) as s:  # entered once the headers are in
                headers_in.set()
                done.append(s.get_final_message())

        writer = threading.Thread(target=stream)
        writer.start()
        assert headers_in.wait(10)
        sibling = threading.Thread(target=lambda: done.append(client.messages.create(**second)))
        sibling.start()
        for _ in range(5_000):  # until the sibling was planned, sent and held too
            if len(arrived) == 2:
                break
            time.sleep(0.002)
        release.set()
        writer.join(10)
        sibling.join(10)
    assert len(done) == 2
    usages = sorted((m.usage for m in done), key=lambda u: u.cache_creation_input_tokens)
    # One write of the shared system prompt: the stream's. The sibling sent it unmarked.
    assert usages[0].cache_creation_input_tokens == 0, usages
    assert usages[1].cache_creation_input_tokens > 0, usages


def _qwen_cost(usage: Any) -> float:
    """Token units on DashScope: input 1, explicit write 1.25, explicit read 0.1, implicit read 0.2."""
    details = usage.prompt_tokens_details
    written = getattr(details, "cache_creation_input_tokens", 0) or 0
    cached = details.cached_tokens or 0
    explicit = getattr(details, "cache_type", None) == "ephemeral"
    read_price = 0.1 if explicit else 0.2
    return usage.prompt_tokens - written - cached + 1.25 * written + read_price * cached


def _qwen_traffic(
    client: Any, tag: str, *, system_words: int, follow: float, queries: int, mark_system: bool = False
) -> float:
    """A RAG app: fresh chunks every query, asked about again with chance ``follow``
    (``mark_system``: the fixed strategy that marks the system prompt, and only it)."""
    rng = random.Random(tag)
    system = words(f"{tag}-system", system_words)
    content: Any = (
        [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}] if mark_system else system
    )
    total = 0.0
    for q in range(queries):
        chunks = " ".join(words(f"{tag}-c{q}-{i}", rng.randint(300, 500)) for i in range(6))
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": content},
            {"role": "user", "content": chunks + " question " + words(f"{tag}-q{q}", 30)},
        ]
        for turn in range(1 + (rng.random() < follow) * rng.randint(1, 2)):
            if turn:
                messages.append({"role": "user", "content": words(f"{tag}-f{q}-{turn}", 30)})
            reply = client.chat.completions.create(model="qwen-plus", messages=messages)
            total += _qwen_cost(reply.usage)
            messages.append({"role": "assistant", "content": reply.choices[0].message.content})
    return total


@pytest.mark.parametrize(
    ("tag", "system_words", "follow", "bar"),
    [
        ("implicit-600-0.3", 600, 0.3, 1.01),
        ("implicit-1500-0.3", 1_500, 0.3, 1.01),
        ("h1.0-1500-0.3", 1_500, 0.3, 1.015),
        ("implicit-2000-0.0", 2_000, 0.0, 0.95),
    ],
    ids=["rag", "rag-long-system", "rag-long-system-b", "batch-job"],
)
def test_on_an_implicit_cache_endpoint_markers_go_only_where_they_beat_it(
    base_url: str, tag: str, system_words: int, follow: float, bar: float
) -> None:
    """DashScope's compatible endpoint reads a repeated prefix of an unmarked request at 0.2x,
    and any marker gives that up for the whole request (research B.6). RAG whose chunks are
    asked about again one time in three pays less unmarked than with its tails written at
    1.25x, whatever its system prompt; a batch job whose system prompt always recurs pays
    less marked (0.1x against 0.2x: 7% of this one's bill). ``auto`` must be within 1% of
    unmarked where that is the better. "rag-long-system-b" is another sample of the
    long-system traffic: its cold start (a first turn marked, then one switch) costs 1.0%
    of its 162 requests, hence a bar of 1.5%; it was 1.024x while a follow-up to a turn
    sent marked went unmarked as if the implicit cache held that turn."""
    registry = CollectorRegistry()
    auto = cachewatch.wrap(
        openai.OpenAI(api_key=f"{tag}-auto", base_url=base_url + "/compatible-mode/v1", max_retries=0),
        registry=registry,
        logger=_Silent(),
    )
    bare = openai.OpenAI(api_key=f"{tag}-none", base_url=base_url + "/compatible-mode/v1", max_retries=0)
    queries = 120
    unmarked = _qwen_traffic(bare, tag, system_words=system_words, follow=follow, queries=queries)
    planned = _qwen_traffic(auto, tag, system_words=system_words, follow=follow, queries=queries)
    skipped = sum(
        sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "cachewatch_breakpoints_total" and sample.labels["action"] == "skipped_implicit"
    )
    assert planned <= bar * unmarked, (planned, unmarked)
    if follow:
        assert skipped > 0


def test_a_best_effort_implicit_cache_is_weighed_by_how_often_it_hits() -> None:
    """DashScope's implicit cache is best effort: "hits not guaranteed" (research B.6). Where
    it finds a repeated prefix three times in ten, RAG with a long system prompt pays less
    with that prompt marked (an explicit read is deterministic) than unmarked; at every
    hit it is the other way round (the test above). The planner learns the rate from the
    bills of unmarked requests that should have read, and marks where that pays."""
    tag = "best-effort"
    with run_in_thread(create_app(implicit_hit_rate=0.3, seed=7)) as url:
        base = url + "/compatible-mode/v1"
        registry = CollectorRegistry()
        auto = cachewatch.wrap(
            openai.OpenAI(api_key=f"{tag}-auto", base_url=base, max_retries=0),
            registry=registry,
            logger=_Silent(),
        )
        costs = {
            name: _qwen_traffic(
                openai.OpenAI(api_key=f"{tag}-{name}", base_url=base, max_retries=0),
                tag,
                system_words=1_500,
                follow=0.3,
                queries=120,
                mark_system=name == "system",
            )
            for name in ("none", "system")
        }
        planned = _qwen_traffic(auto, tag, system_words=1_500, follow=0.3, queries=120)
    assert costs["system"] < costs["none"], costs  # the traffic is one where marking pays
    assert planned <= 1.01 * min(costs.values()), (planned, costs)


def _two_tenants(tag: str) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Two apps behind one key, taking turns: a batch job whose long system prompt always
    recurs, and RAG whose chunks are asked about again one time in three."""
    rng = random.Random(tag)
    batch_system = words(f"{tag}-batch", 2_000)
    rag_system = words(f"{tag}-rag", 1_500)
    for q in range(100):
        yield (
            "batch",
            [
                {"role": "system", "content": batch_system},
                {"role": "user", "content": words(f"{tag}-b{q}", rng.randint(100, 300))},
            ],
        )
        chunks = " ".join(words(f"{tag}-c{q}-{i}", rng.randint(300, 500)) for i in range(6))
        messages = [
            {"role": "system", "content": rag_system},
            {"role": "user", "content": chunks + " question " + words(f"{tag}-q{q}", 30)},
        ]
        yield "rag", messages
        if rng.random() < 0.3:
            yield (
                "rag",
                [
                    *messages,
                    {"role": "assistant", "content": "ok " * 40},
                    {"role": "user", "content": "more"},
                ],
            )


def test_apps_behind_one_key_each_choose_their_cache(base_url: str) -> None:
    """Behind one key (a gateway) every app's requests are one family, but the batch job
    pays less with its system prompt marked and the RAG app unmarked (the test above).
    Each static region keeps its own average of what going unmarked saves, so ``auto``
    comes within 1% of that split: 1.007x-1.008x on six samples of this traffic, where the
    family's average deciding for both gave 1.008x-1.016x (this one 1.016x)."""
    base = base_url + "/compatible-mode/v1"
    auto = cachewatch.wrap(
        openai.OpenAI(api_key="tenants-auto", base_url=base, max_retries=0),
        registry=CollectorRegistry(),
        logger=_Silent(),
    )
    split = openai.OpenAI(api_key="tenants-split", base_url=base, max_retries=0)
    costs = {"auto": 0.0, "split": 0.0}
    for app, messages in _two_tenants("t1"):
        marked = messages
        if app == "batch":
            text = messages[0]["content"]
            marked = [
                {
                    "role": "system",
                    "content": [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}],
                },
                *messages[1:],
            ]
        costs["split"] += _qwen_cost(split.chat.completions.create(model="qwen-plus", messages=marked).usage)
        costs["auto"] += _qwen_cost(auto.chat.completions.create(model="qwen-plus", messages=messages).usage)
    assert costs["auto"] <= 1.01 * costs["split"], costs


@pytest.mark.parametrize("endpoint", ["anthropic", "dashscope-compatible"])
def test_the_second_request_reads_the_system_prompt_before_a_block_that_changed(
    base_url: str, endpoint: str
) -> None:
    """Chats whose system prompt is shared instructions followed by a short block with the
    time and a request id. Before a block is known to keep changing (it must change at three
    comparisons running), the first request also ends a prefix before the static region's
    last block, at no write cost (it writes past it anyway), so the second request already
    reads the instructions. Before, the first reads came at the sixth request on Anthropic
    (reads 0, 0, 0, 0, 0, 5007, ...) and at the third on DashScope's compatible endpoint,
    from its implicit cache at 0.2x (0, 0, 5007, ...)."""
    instructions = "You are the assistant. " + words(f"stamped-{endpoint}", 2500)
    reads: list[int] = []
    if endpoint == "anthropic":
        client = claude(base_url, "planner-stamped")
        for c in range(3):
            messages: list[dict[str, Any]] = []
            for t in range(3):
                messages.append({"role": "user", "content": words(f"st{c}-{t}", 60)})
                system = [
                    {"type": "text", "text": instructions},
                    {"type": "text", "text": f"Now: 17000{c}{t}. Request {c}-{t}."},
                ]
                reply = client.messages.create(
                    model="claude-sonnet-4-6", max_tokens=16, system=system, messages=messages
                )
                reads.append(reply.usage.cache_read_input_tokens)
                messages.append({"role": "assistant", "content": reply.content[0].text})
    else:
        client = cachewatch.wrap(
            openai.OpenAI(
                api_key="planner-stamped-ds", base_url=base_url + "/compatible-mode/v1", max_retries=0
            ),
            registry=CollectorRegistry(),
            logger=_Silent(),
        )
        for c in range(3):
            history: list[dict[str, Any]] = []
            for t in range(3):
                history.append({"role": "user", "content": words(f"sq{c}-{t}", 60)})
                stamp = {"role": "system", "content": f"Now: 17000{c}{t}. Request {c}-{t}."}
                reply = client.chat.completions.create(
                    model="qwen-plus", messages=[{"role": "system", "content": instructions}, stamp, *history]
                )
                details = reply.usage.prompt_tokens_details
                reads.append(details.cached_tokens if details is not None else 0)
                history.append({"role": "assistant", "content": reply.choices[0].message.content or ""})
    assert reads[0] == 0
    assert all(r >= 2500 for r in reads[1:]), reads
