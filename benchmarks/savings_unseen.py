"""Savings of ``breakpoints="auto"`` on traffic shapes the planner was not tuned on.

``benchmarks/savings.py`` holds the workloads the policy was developed against; this file
holds others, modelled on real applications, to check the promise of SPEC section 11 on
unseen traffic: ``auto`` costs at most 1.01x the best fixed strategy chosen in hindsight,
and at most 1.01x no caching on traffic that is never reused.

    .venv/bin/python benchmarks/savings_unseen.py [--only NAME ...] [--trace] [--seed SUFFIX]
        [--auto-option NAME=VALUE ...]

(``--seed`` draws every workload anew; ``--auto-option`` passes a planner option to
``auto``, for what-if runs.)

It reuses the harness of ``savings.py`` (fresh emulator and :class:`ManualClock` per
(workload, strategy) run, the real anthropic SDK through :func:`cachewatch.wrap`, the
same fixed strategies, cost units and report). Two additions:

* every workload is a *source*: a generator that yields the simulated seconds to wait
  before its next request, then sends it. A standalone workload drives one source; the
  ``everything mixed`` workload merges several on their own timelines into one client
  (one learning planner), as a gateway in front of several applications would see them;
* the DashScope OpenAI-compatible endpoint (``/compatible-mode/v1/chat/completions``) runs
  through the real openai SDK, with the fixed strategies transposed to OpenAI-format
  messages (``litellm``: system + the last ``role: user`` message). There, a request
  without markers uses DashScope's *implicit* cache (the emulator: always a hit, from 256
  tokens); an implicit hit is priced at 0.2 (DashScope bills implicit hits at 20 % of the
  input price, explicit reads at 10 %), and the emulator's implicit cache always hits,
  so ``none`` is the strongest it can be there.

After the report of ``savings.py``, a summary gives per workload ``auto / best fixed``,
``auto / none`` and ``auto``'s excess over the best fixed strategy in wasted writes of
the workload's largest prompt (0.25x its tokens each). Exit code 0: a benchmark.
"""

from __future__ import annotations

import argparse
import base64
import copy
import heapq
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))

import savings as S
from savings import HAIKU, QWEN, SONNET, Run, Workload, _reply, text

import cachewatch
from cachewatch.emulator import ManualClock, create_app, run_in_thread
from cachewatch.emulator._tokens import count_text_tokens

__all__ = ["WORKLOADS", "main"]

#: A source yields the seconds to wait before its next request, then sends it.
Source = Iterator[float]

#: DashScope bills an implicit-cache hit at 20 % of the input price.
IMPLICIT_PRICE = 0.2

_TOOL_SCHEMA = {
    "type": "object",
    "properties": {"query": {"type": "string"}},
    "required": ["query"],
}


def sized(seed: str, tokens: int) -> str:
    """Filler of exactly ``tokens`` emulator tokens (or one less, at a word boundary)."""
    words = text(seed, tokens + 40).split(" ")
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_text_tokens(" ".join(words[:mid])) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def _tool(name: str, seed: str, tokens: int) -> dict[str, Any]:
    return {"name": name, "description": f"{name}: " + text(seed, tokens), "input_schema": _TOOL_SCHEMA}


def _image(seed: str, size: int = 3_000) -> dict[str, Any]:
    """A (fake) base64 PNG block, distinct per seed; the emulator bills 1,600 tokens for it."""
    rng = random.Random(seed)
    data = base64.b64encode(b"\x89PNG\r\n\x1a\n" + rng.randbytes(size)).decode()
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}


def _user(seed: str, tokens: int, prefix: str = "") -> dict[str, Any]:
    return {"role": "user", "content": prefix + text(seed, tokens)}


def drive(run: Run, source: Source) -> None:
    """Run one source on its own: wait what it asks, then let it send."""
    for gap in source:
        if gap > 0:
            run.wait(gap)


def merge(run: Run, sources: list[Source], rng: random.Random, stagger: float = 60.0) -> None:
    """Interleave ``sources`` on one client, each on its own timeline (started 0-``stagger`` s apart)."""
    drive(run, _merged(sources, rng, stagger))


def _interleave(sources: list[Source], starts: list[float]) -> Source:
    """``sources`` on their own timelines, source ``i`` starting at ``starts[i]``, as one source."""
    heap: list[tuple[float, int]] = []
    for i, source in enumerate(sources):
        gap = next(source, None)
        if gap is not None:
            heapq.heappush(heap, (starts[i] + gap, i))
    now = 0.0
    while heap:
        due, i = heapq.heappop(heap)
        yield max(0.0, due - now)
        now = max(now, due)
        gap = next(sources[i], None)  # sends one request
        if gap is not None:
            heapq.heappush(heap, (now + gap, i))


def _merged(sources: list[Source], rng: random.Random, stagger: float = 60.0) -> Source:
    """Sources started 0-``stagger`` s apart (the first at once), interleaved."""
    return _interleave(sources, [rng.uniform(0, stagger) if i else 0.0 for i in range(len(sources))])


def _staggered(sources: list[Source], rng: random.Random, start_gap: tuple[float, float]) -> Source:
    """Sources started one after another, ``start_gap`` seconds apart, interleaved."""
    starts = [0.0]
    for _ in sources[1:]:
        starts.append(starts[-1] + rng.uniform(*start_gap))
    return _interleave(sources, starts)


# -- sources ------------------------------------------------------------------------------


def zipf_tenants_src(
    run: Run,
    rng: random.Random,
    *,
    tenants: int = 24,
    requests: int = 240,
    s: float = 1.1,
    gap: tuple[float, float] = (1, 12),
    tag: str = "zipf",
) -> Source:
    """A gateway: tenants with their own key, tools (0-5) and system prompt (1.2-4k tokens),
    Zipf-popular; each request continues one of the tenant's open chats (60 %) or opens a
    new one (40 % of them 2-6 turns, the rest one-shot)."""
    weights = [1 / (k + 1) ** s for k in range(tenants)]
    setups: list[tuple[list[dict[str, Any]], str]] = []
    for k in range(tenants):
        n_tools = rng.choice((0, 0, 1, 2, 3, 5))
        tools = [_tool(f"t{k}_tool{j}", f"{tag}-{k}-{j}", rng.randint(100, 400)) for j in range(n_tools)]
        system = f"You are the assistant of tenant {k}. " + text(f"{tag}-sys{k}", rng.randint(1_200, 4_000))
        setups.append((tools, system))
    open_chats: dict[int, list[tuple[list[dict[str, Any]], int]]] = {}
    for i in range(requests):
        yield rng.uniform(*gap) if i else 0.0
        k = rng.choices(range(tenants), weights)[0]
        chats = open_chats.setdefault(k, [])
        if chats and rng.random() < 0.6:
            j = rng.randrange(len(chats))
            messages, left = chats[j]
        else:
            left = rng.randint(2, 6) if rng.random() < 0.4 else 1
            messages = []
            chats.append((messages, left))
            j = len(chats) - 1
        messages.append(_user(f"{tag}-{i}", rng.randint(20, 250)))
        tools, system = setups[k]
        kwargs: dict[str, Any] = {"model": SONNET, "system": system, "messages": messages}
        if tools:
            kwargs["tools"] = tools
        reply = run.send(api_key=f"{tag}-tenant-{k}", **kwargs)
        messages.append(_reply(reply))
        if left <= 1:
            chats.pop(j)
        else:
            chats[j] = (messages, left - 1)


def context_edit_src(
    run: Run,
    rng: random.Random,
    *,
    steps: int = 36,
    keep: int = 3,
    clear_every: int = 6,
    compact_at: int = 24,
    tag: str = "ctxedit",
) -> Source:
    """An agent with huge tool results (2-8k tokens) under context editing: every
    ``clear_every`` steps all tool results but the last ``keep`` are replaced by a
    placeholder (mid-conversation), and at ``compact_at`` the history is compacted into a
    summary message. Streamed; 1-8 s between model calls."""
    tools = [_tool(n, f"{tag}-{n}", 300) for n in ("search_orders", "lookup_customer", "open_ticket")]
    system = "You are a data-migration agent; use the tools until done. " + text(f"{tag}-system", 1_200)
    messages: list[dict[str, Any]] = [
        _user(f"{tag}-task", 60, "Migrate the accounts table; please use the tool search_orders. ")
    ]
    for step in range(steps):
        yield rng.uniform(1, 8) if step else 0.0
        if step == compact_at:
            messages = [
                _user(
                    f"{tag}-summary",
                    2_500,
                    "Summary so far (compacted); please use the tool lookup_customer. ",
                )
            ]
        elif step and step % clear_every == 0:
            results = [
                b
                for m in messages
                if m["role"] == "user" and isinstance(m["content"], list)
                for b in m["content"]
                if b.get("type") == "tool_result"
            ]
            for block in results[:-keep]:
                block["content"] = "[tool result cleared]"
        message = run.send(model=SONNET, system=system, tools=tools, messages=messages, stream=True)
        messages.append(_reply(message))
        uses = [b for b in message.content if b.type == "tool_use"]
        if uses:
            messages.append(
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": b.id,
                            "content": text(f"{tag}-r{step}", rng.randint(2_000, 8_000)),
                        }
                        for b in uses
                    ],
                }
            )
        else:
            messages.append({"role": "user", "content": "Next table: please use the tool open_ticket."})


def regenerate_edit_src(
    run: Run, rng: random.Random, *, conversations: int = 6, turns: int = 8, tag: str = "regen"
) -> Source:
    """Chat UI with "regenerate" (20 %: the same request again, the last reply dropped) and
    "edit" (15 %: an earlier user message rewritten, the conversation branches from it);
    10-60 s between actions, 0.5-2 min between conversations."""
    system = "You are a writing assistant. " + text(f"{tag}-system", 2_800)
    for c in range(conversations):
        messages: list[dict[str, Any]] = []
        for t in range(turns):
            yield rng.uniform(30, 120) if (c and not t) else (rng.uniform(10, 60) if t else 0.0)
            r = rng.random()
            if messages and r < 0.2:
                messages.pop()  # regenerate: the last reply is discarded, the request resent
            elif len(messages) >= 4 and r < 0.35:
                k = rng.randrange(0, len(messages) - 1, 2)
                messages = messages[:k]
                messages.append(_user(f"{tag}-{c}-{t}-edit", rng.randint(30, 200), "Edited: "))
            else:
                messages.append(_user(f"{tag}-{c}-{t}", rng.randint(30, 200)))
            reply = run.send(model=SONNET, system=system, messages=messages)
            messages.append(_reply(reply))


def chat_src(
    run: Run,
    rng: random.Random,
    *,
    conversations: int = 1,
    turns: int = 10,
    system: str | list[dict[str, Any]],
    gap: tuple[float, float] = (10, 60),
    between: tuple[float, float] = (30, 120),
    message_tokens: tuple[int, int] = (30, 200),
    model: str | Callable[[int, int], str] = SONNET,
    api_key: str | None = None,
    tag: str = "chat",
) -> Source:
    """Chats in sequence; ``model`` may be a function of (conversation, turn)."""
    for c in range(conversations):
        messages: list[dict[str, Any]] = []
        for t in range(turns):
            yield (rng.uniform(*gap) if t else (rng.uniform(*between) if c else 0.0))
            messages.append(_user(f"{tag}-{c}-{t}", rng.randint(*message_tokens), f"Turn {t}: "))
            m = model(c, t) if callable(model) else model
            reply = run.send(model=m, system=system, messages=messages, api_key=api_key)
            messages.append(_reply(reply))


def cron_src(
    run: Run,
    rng: random.Random,
    *,
    runs: int = 8,
    per_run: int = 4,
    gap_minutes: tuple[float, float] = (55, 65),
    tag: str = "cron",
) -> Source:
    """A scheduled report job every 55-65 minutes (around the 1h TTL): a 6k-token system
    prompt (the knowledge base), then ``per_run`` different questions 5-30 s apart."""
    system = "You write the operations report from this knowledge base. " + text(f"{tag}-kb", 6_000)
    for r in range(runs):
        for q in range(per_run):
            yield (rng.uniform(*gap_minutes) * 60 if r else 0.0) if q == 0 else rng.uniform(5, 30)
            run.send(
                model=SONNET,
                system=system,
                messages=[_user(f"{tag}-{r}-{q}", rng.randint(40, 120), f"Report {r}.{q}: ")],
            )


def stampede_src(
    run: Run, rng: random.Random, *, waves: int = 6, width: int = 12, tag: str = "stampede"
) -> Source:
    """Identical concurrent requests (a dashboard widget many users open at once): 12 copies
    of one request in flight before any response starts; the question changes every 3
    waves; 20-240 s between waves."""
    system = "You summarise the team's status board. " + text(f"{tag}-system", 2_500)
    for wave in range(waves):
        yield rng.uniform(20, 240) if wave else 0.0
        question = _user(f"{tag}-q{wave // 3}", 400, "Summarise today's board: ")
        run.fan_out([{"model": SONNET, "system": system, "messages": [question]} for _ in range(width)])


def batch_min_src(
    run: Run, rng: random.Random, *, items: int = 150, instruction_tokens: int = 950, tag: str = "batchmin"
) -> Source:
    """A classification batch: a shared instruction just under the 1,024 minimum
    (``instruction_tokens``) and tiny items (15-200 tokens), so each prompt sits just
    below or above the minimum and only prefixes that end in an item ever reach it."""
    system = sized(f"{tag}-rubric", instruction_tokens)
    for i in range(items):
        yield rng.uniform(0.2, 2) if i else 0.0
        run.send(model=SONNET, system=system, messages=[_user(f"{tag}-{i}", rng.randint(15, 200), "Item: ")])


def at_minimum_src(
    run: Run,
    rng: random.Random,
    *,
    sizes: tuple[int, ...] = (1_000, 1_020, 1_030, 1_050, 1_100),
    conversations: int = 2,
    turns: int = 5,
    tag: str = "atmin",
) -> Source:
    """Chats whose stable prefix sits exactly around the 1,024 minimum: one app (its own
    key) per size in ``sizes``, each with chats of short turns, interleaved."""
    sources = []
    for k, size in enumerate(sizes):
        sources.append(
            chat_src(
                run,
                random.Random(f"{tag}-{k}"),
                conversations=conversations,
                turns=turns,
                system=sized(f"{tag}-sys{k}", size),
                message_tokens=(20, 60),
                api_key=f"{tag}-app-{k}",
                tag=f"{tag}-{k}",
            )
        )
    yield from _merged(sources, rng)


def volatile_middle_src(
    run: Run, rng: random.Random, *, conversations: int = 6, turns: int = 6, tag: str = "volmid"
) -> Source:
    """A system prompt of three blocks: stable instructions (2.5k), a per-user memory block
    in the MIDDLE (300 tokens, rewritten every 2 turns as the assistant saves memories),
    stable tool guidance (1.2k); two chats open at a time."""
    head = {"type": "text", "text": "You are a personal assistant. " + text(f"{tag}-head", 2_500)}
    tail = {"type": "text", "text": "Tool guidance: " + text(f"{tag}-guide", 1_200)}
    sources = []
    for c in range(conversations):

        def one(c: int = c) -> Source:
            r = random.Random(f"{tag}-{c}")
            messages: list[dict[str, Any]] = []
            for t in range(turns):
                yield r.uniform(10, 60) if t else 0.0
                memory = {"type": "text", "text": "User memory: " + text(f"{tag}-mem{c}-{t // 2}", 300)}
                messages.append(_user(f"{tag}-{c}-{t}", r.randint(30, 150)))
                reply = run.send(model=SONNET, system=[head, memory, tail], messages=messages)
                messages.append(_reply(reply))

        sources.append(one())
    # Two chats at a time: the next starts 1-3 minutes after the previous one started.
    yield from _staggered(sources, rng, (60, 180))


def shuffled_tools_src(run: Run, rng: random.Random, *, tasks: int = 12, tag: str = "shuffle") -> Source:
    """An agent framework that builds the tools list from a set: 8 tools in a random order
    on every request, so no prefix ever recurs (the tools come first). Streamed."""
    names = [f"tool_{n}" for n in ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")]
    tools = [_tool(n, f"{tag}-{n}", 250) for n in names]
    system = "You are a CRM agent. " + text(f"{tag}-system", 1_500)
    for task in range(tasks):
        messages: list[dict[str, Any]] = [
            _user(f"{tag}-t{task}", 50, f"Task {task}: please use the tool {names[task % 8]}. ")
        ]
        for step in range(2):
            yield rng.uniform(2, 12) if (task or step) else 0.0
            order = tools[:]
            rng.shuffle(order)
            message = run.send(model=SONNET, system=system, tools=order, messages=messages, stream=True)
            messages.append(_reply(message))
            uses = [b for b in message.content if b.type == "tool_use"]
            messages.append(
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": b.id, "content": text(f"{tag}-r{task}", 600)}
                        for b in uses
                    ]
                    or "continue",
                }
            )


def image_qa_src(
    run: Run, rng: random.Random, *, conversations: int = 6, turns: int = 5, tag: str = "imgqa"
) -> Source:
    """Screenshot Q&A: the first message carries two images and a question under a short
    system prompt; follow-up questions about them; 10-60 s between turns."""
    system = "You answer questions about the user's screenshots."
    for c in range(conversations):
        messages: list[dict[str, Any]] = []
        for t in range(turns):
            yield rng.uniform(10, 60) if t else (rng.uniform(30, 120) if c else 0.0)
            question = {
                "type": "text",
                "text": f"Question {t}: " + text(f"{tag}-{c}-{t}", rng.randint(20, 80)),
            }
            if t == 0:
                content: Any = [_image(f"{tag}-{c}-a"), _image(f"{tag}-{c}-b"), question]
            else:
                content = [question]
            messages.append({"role": "user", "content": content})
            reply = run.send(model=SONNET, system=system, messages=messages)
            messages.append(_reply(reply))


def captioning_src(run: Run, rng: random.Random, *, images: int = 60, tag: str = "caption") -> Source:
    """An image-captioning job: a short shared instruction (300 tokens) and a different
    image in every request (1,600 tokens billed, about 1,000 estimated), 1-5 s apart.
    Nothing is ever reused: the bar is no caching."""
    system = "Write alt text for the image: one sentence, no speculation. " + text(f"{tag}-system", 300)
    for i in range(images):
        yield rng.uniform(1, 5) if i else 0.0
        content = [_image(f"{tag}-{i}"), {"type": "text", "text": f"Image {i}."}]
        run.send(model=SONNET, system=system, messages=[{"role": "user", "content": content}])


def sliding_window_src(
    run: Run,
    rng: random.Random,
    *,
    conversations: int = 3,
    turns: int = 16,
    window: int = 6,
    tag: str = "window",
) -> Source:
    """A chatbot that sends only the last ``window`` messages of its history (a window
    memory): once the window is full, every turn drops the oldest exchange, so after the
    system prompt no prefix recurs. 10-60 s between turns."""
    system = "You are a cooking assistant. " + text(f"{tag}-system", 2_000)
    for c in range(conversations):
        history: list[dict[str, Any]] = []
        for t in range(turns):
            yield rng.uniform(10, 60) if t else (rng.uniform(30, 120) if c else 0.0)
            history.append(_user(f"{tag}-{c}-{t}", rng.randint(60, 250), f"Turn {t}: "))
            reply = run.send(model=SONNET, system=system, messages=history[-(window - 1) :])
            history.append(_reply(reply))


def screenshot_agent_src(
    run: Run,
    rng: random.Random,
    *,
    steps: int = 20,
    keep_images: int | None = 3,
    model: str = HAIKU,
    tag: str = "cua",
) -> Source:
    """A computer-use loop (Haiku 4.5, minimum 4,096): every step a click (tool_use) and a
    new screenshot (tool_result with an image and a line of text); only the most recent
    ``keep_images`` screenshots are kept, older ones replaced by a text note (the
    reference computer-use loop's image truncation). 2-6 s between steps."""
    tools = [_tool("computer", f"{tag}-computer", 400)]
    system = "You operate a desktop through the computer tool. " + text(f"{tag}-system", 1_500)
    messages: list[dict[str, Any]] = [_user(f"{tag}-task", 80, "Book the meeting room for Friday. ")]
    for step in range(steps):
        yield rng.uniform(2, 6) if step else 0.0
        run.send(model=model, system=system, tools=tools, messages=messages)
        call_id = f"toolu_{tag}{step:04d}"
        messages.append(
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": f"Step {step}: clicking."},
                    {
                        "type": "tool_use",
                        "id": call_id,
                        "name": "computer",
                        "input": {"query": f"click {step}"},
                    },
                ],
            }
        )
        messages.append(
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": call_id,
                        "content": [_image(f"{tag}-shot{step}"), {"type": "text", "text": f"screen {step}"}],
                    }
                ],
            }
        )
        if keep_images is not None:
            shots = [
                m["content"][0]
                for m in messages
                if m["role"] == "user"
                and isinstance(m["content"], list)
                and m["content"][0].get("type") == "tool_result"
            ]
            for block in shots[:-keep_images]:
                block["content"] = [{"type": "text", "text": "[screenshot omitted]"}]


def parallel_fanin_src(
    run: Run, rng: random.Random, *, steps: int = 12, width: int = 12, tag: str = "fanin"
) -> Source:
    """An agent that calls ``width`` tools in parallel at every step: each step adds one
    assistant message of ``width`` tool_use blocks and one user message of ``width``
    tool_result blocks (2 x width positions, past the 20-position lookback). 2-10 s apart."""
    tools = [_tool(f"probe_{k}", f"{tag}-tool{k}", 200) for k in range(4)]
    system = "You are a monitoring agent; check every host. " + text(f"{tag}-system", 1_500)
    messages: list[dict[str, Any]] = [_user(f"{tag}-task", 60, "Check the fleet. ")]
    for step in range(steps):
        yield rng.uniform(2, 10) if step else 0.0
        run.send(model=SONNET, system=system, tools=tools, messages=messages)
        ids = [f"toolu_{tag}{step:03d}{k:03d}" for k in range(width)]
        messages.append(
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": i, "name": f"probe_{k % 4}", "input": {"query": f"host {k}"}}
                    for k, i in enumerate(ids)
                ],
            }
        )
        messages.append(
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": i,
                        "content": text(f"{tag}-{step}-{k}", rng.randint(40, 200)),
                    }
                    for k, i in enumerate(ids)
                ],
            }
        )


def two_turn_src(
    run: Run,
    rng: random.Random,
    *,
    sessions: int = 40,
    model: str = SONNET,
    tag: str = "twoturn",
) -> Source:
    """Short sessions: a pasted document (1.5-3k tokens) and a question under a 1.2k system
    prompt; half the sessions ask one follow-up 20-600 s later (some past the TTL);
    sessions start 10-60 s apart, so they overlap."""
    system = "You are a contract-review assistant. " + text(f"{tag}-system", 1_200)
    pending: list[tuple[float, list[dict[str, Any]], int]] = []  # (due, messages, session)
    now = 0.0
    started = 0
    next_start = 0.0
    while started < sessions or pending:
        pending.sort(key=lambda p: p[0])
        if started < sessions and (not pending or next_start <= pending[0][0]):
            yield next_start - now
            now = next_start
            messages = [_user(f"{tag}-doc{started}", rng.randint(1_500, 3_000), "Please review: ")]
            reply = run.send(model=model, system=system, messages=messages)
            messages.append(_reply(reply))
            if rng.random() < 0.5:
                pending.append((now + rng.uniform(20, 600), messages, started))
            started += 1
            next_start = now + rng.uniform(10, 60)
        else:
            due, messages, s = pending.pop(0)
            yield due - now
            now = due
            messages.append(_user(f"{tag}-f{s}", rng.randint(20, 100), "Follow-up: "))
            run.send(model=model, system=system, messages=messages)


def dashscope_agent_src(run: Run, rng: random.Random, *, tasks: int = 10, tag: str = "dsagent") -> Source:
    """DashScope (Anthropic-compatible, 5m only, no markers on tools): an agent with 4 tools,
    a 1.5k system prompt and 1-3k tool results; a 7-minute break before task 6."""
    tools = [_tool(n, f"{tag}-{n}", 350) for n in ("search_flights", "book_hotel", "get_weather", "convert")]
    system = "You are a travel-booking agent. " + text(f"{tag}-system", 1_500)
    messages: list[dict[str, Any]] = []
    for task in range(tasks):
        yield (420.0 if task == 6 else rng.uniform(15, 60)) if task else 0.0
        messages.append(
            _user(f"{tag}-t{task}", 40, f"Task {task}: please use the tool {tools[task % 4]['name']}. ")
        )
        message = run.send(model=QWEN, system=system, tools=tools, messages=messages)
        messages.append(_reply(message))
        uses = [b for b in message.content if b.type == "tool_use"]
        messages.append(
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": b.id,
                        "content": text(f"{tag}-r{task}", rng.randint(1_000, 3_000)),
                    }
                    for b in uses
                ]
                or "continue",
            }
        )
        yield rng.uniform(2, 10)
        message = run.send(model=QWEN, system=system, tools=tools, messages=messages)
        messages.append(_reply(message))


# -- OpenAI-compatible (DashScope /compatible-mode) ---------------------------------------------


def qwen_chat_src(
    run: Run, rng: random.Random, *, conversations: int = 3, turns: int = 8, tag: str = "qwenchat"
) -> Source:
    """DashScope OpenAI-compatible chat (openai SDK): a 2.5k system message, 10-90 s turns."""
    system = "You are a bilingual shopping assistant. " + text(f"{tag}-system", 2_500)
    for c in range(conversations):
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
        for t in range(turns):
            yield rng.uniform(10, 90) if t else (rng.uniform(30, 120) if c else 0.0)
            messages.append(_user(f"{tag}-{c}-{t}", rng.randint(30, 200)))
            reply = run.send(model=QWEN, messages=messages)
            messages.append({"role": "assistant", "content": reply.choices[0].message.content or ""})


def qwen_two_turn_src(run: Run, rng: random.Random, *, sessions: int = 30, tag: str = "qwen2") -> Source:
    """DashScope OpenAI-compatible short sessions: a 1.5k system message and a 200-1,500
    token question, half with one follow-up 20-200 s later; sessions 5-40 s apart."""
    system = "You are the order-status assistant. " + text(f"{tag}-system", 1_500)
    for s in range(sessions):
        yield rng.uniform(5, 40) if s else 0.0
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": system},
            _user(f"{tag}-{s}", rng.randint(200, 1_500)),
        ]
        reply = run.send(model=QWEN, messages=messages)
        if rng.random() < 0.5:
            messages.append({"role": "assistant", "content": reply.choices[0].message.content or ""})
            messages.append(_user(f"{tag}-{s}-f", rng.randint(20, 100)))
            yield rng.uniform(20, 200)
            run.send(model=QWEN, messages=messages)


# -- workloads ------------------------------------------------------------------------------


def _standalone(make: Callable[..., Source]) -> Callable[..., None]:
    def workload(run: Run, *, seed: str = "unseen", **params: Any) -> None:
        drive(run, make(run, random.Random(seed), **params))

    workload.__doc__ = make.__doc__
    return workload


def everything_mixed(run: Run, *, seed: str = "mixed-unseen") -> None:
    """One client in front of several applications at once: a Zipf tenant gateway (with
    tools), a batch at the minimum, two-turn contract reviews, a screenshot agent and a
    text chat on Haiku 4.5 whose system prompt is just above Haiku's 4,096 minimum, and a
    Sonnet chat whose system prompt is just above 1,024; each on its own timeline."""
    rng = random.Random(seed)
    haiku_system = sized(f"{seed}-haiku-sys", 4_300)
    sonnet_system = sized(f"{seed}-sonnet-sys", 1_150)
    sources = [
        zipf_tenants_src(run, random.Random(f"{seed}-zipf"), requests=120, gap=(2, 20), tag="mixzipf"),
        batch_min_src(run, random.Random(f"{seed}-batch"), items=60, tag="mixbatch"),
        two_turn_src(run, random.Random(f"{seed}-two"), sessions=20, tag="mixtwo"),
        screenshot_agent_src(run, random.Random(f"{seed}-cua"), steps=15, tag="mixcua"),
        chat_src(
            run,
            random.Random(f"{seed}-hchat"),
            conversations=3,
            turns=6,
            system=haiku_system,
            model=HAIKU,
            message_tokens=(20, 80),
            tag="mixhaiku",
        ),
        chat_src(
            run,
            random.Random(f"{seed}-schat"),
            conversations=3,
            turns=6,
            system=sonnet_system,
            message_tokens=(20, 80),
            tag="mixsonnet",
        ),
    ]
    merge(run, sources, rng)


def _escalation(c: int, t: int) -> str:
    return HAIKU if t < 3 else SONNET


def _router(seed: str) -> Callable[[int, int], str]:
    rng = random.Random(seed)
    return lambda c, t: rng.choice((HAIKU, SONNET))


def _chat_workload(**fixed: Any) -> Callable[..., None]:
    def workload(run: Run, *, seed: str = "chat", **params: Any) -> None:
        options = {**fixed, **params}
        if callable(options.get("system")):
            options["system"] = options["system"]()
        if options.get("model") == "router":
            options["model"] = _router(seed)
        drive(run, chat_src(run, random.Random(seed), **options))

    return workload


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("zipf tenants", "anthropic", _standalone(zipf_tenants_src), {"seed": "zipf"}),
        Workload("context-edited agent", "anthropic", _standalone(context_edit_src), {"seed": "ctx"}),
        Workload("regenerate/edit", "anthropic", _standalone(regenerate_edit_src), {"seed": "regen"}),
        Workload(
            "think time 4-6 min",
            "anthropic",
            _chat_workload(
                conversations=2,
                turns=10,
                gap=(240, 360),
                system=lambda: "You are a tutor. " + text("think-system", 3_000),
                tag="think",
            ),
            {"seed": "think"},
        ),
        Workload("hourly cron (55-65m)", "anthropic", _standalone(cron_src), {"seed": "cron"}),
        Workload("identical stampede", "anthropic", _standalone(stampede_src), {"seed": "stampede"}),
        Workload(
            "batch at minimum", "anthropic", _standalone(batch_min_src), {"seed": "batchmin"}, vs_none=1.01
        ),
        Workload("prefix at minimum", "anthropic", _standalone(at_minimum_src), {"seed": "atmin"}),
        Workload("volatile middle", "anthropic", _standalone(volatile_middle_src), {"seed": "volmid"}),
        Workload(
            "shuffled tools", "anthropic", _standalone(shuffled_tools_src), {"seed": "shuffle"}, vs_none=1.01
        ),
        Workload("image Q&A", "anthropic", _standalone(image_qa_src), {"seed": "imgqa"}),
        Workload(
            "image captioning", "anthropic", _standalone(captioning_src), {"seed": "caption"}, vs_none=1.01
        ),
        Workload("sliding-window chat", "anthropic", _standalone(sliding_window_src), {"seed": "window"}),
        Workload("screenshot agent", "anthropic", _standalone(screenshot_agent_src), {"seed": "cua"}),
        Workload(
            "haiku->sonnet",
            "anthropic",
            _chat_workload(
                conversations=6,
                turns=8,
                model=_escalation,
                system=lambda: "You are a support triage assistant. " + text("esc-system", 3_500),
                tag="esc",
            ),
            {"seed": "esc"},
        ),
        Workload(
            "model router",
            "anthropic",
            _chat_workload(
                conversations=5,
                turns=10,
                model="router",
                system=lambda: "You are a coding assistant. " + text("router-system", 4_500),
                tag="router",
            ),
            {"seed": "router"},
        ),
        Workload("two-turn sessions", "anthropic", _standalone(two_turn_src), {"seed": "twoturn"}),
        Workload(
            "150-turn chat",
            "anthropic",
            _chat_workload(
                turns=150,
                gap=(5, 30),
                message_tokens=(20, 80),
                system=lambda: "You are a companion chatbot. " + text("marathon-system", 1_500),
                tag="marathon",
            ),
            {"seed": "marathon"},
        ),
        Workload("parallel tool fan-in", "anthropic", _standalone(parallel_fanin_src), {"seed": "fanin"}),
        Workload("DashScope agent", "dashscope", _standalone(dashscope_agent_src), {"seed": "dsagent"}),
        Workload("Qwen compat chat", "dashscope_openai", _standalone(qwen_chat_src), {"seed": "qwenchat"}),
        Workload("Qwen compat 2-turn", "dashscope_openai", _standalone(qwen_two_turn_src), {"seed": "qwen2"}),
        Workload("everything mixed", "anthropic", everything_mixed, {"seed": "mixed-unseen"}),
    )
}


# -- the OpenAI-compatible harness ------------------------------------------------------------


@dataclass
class QwenBill(S.Bill):
    """A bill with DashScope implicit-cache hits (priced at :data:`IMPLICIT_PRICE`)."""

    implicit: int = 0

    def add(self, other: S.Bill) -> None:
        super().add(other)
        self.implicit += getattr(other, "implicit", 0)

    @property
    def prompt(self) -> int:
        return super().prompt + self.implicit

    @property
    def cost(self) -> float:
        return super().cost + self.implicit * IMPLICIT_PRICE


def _bill_chat(usage: Any) -> QwenBill:
    details = usage.prompt_tokens_details
    cached = (details.cached_tokens or 0) if details is not None else 0
    extra = (details.model_extra or {}) if details is not None else {}
    written = extra.get("cache_creation_input_tokens")
    if written is None:  # no explicit marker applied: DashScope's implicit cache
        return QwenBill(requests=1, input=usage.prompt_tokens - cached, implicit=cached)
    creation = extra.get("cache_creation") or {}
    w1h = creation.get("ephemeral_1h_input_tokens", 0) or 0
    return QwenBill(
        requests=1, input=usage.prompt_tokens - cached - written, read=cached, w5m=written - w1h, w1h=w1h
    )


def _mark_part(message: dict[str, Any]) -> None:
    content = message.get("content")
    if isinstance(content, str):
        if content.strip():
            message["content"] = [{"type": "text", "text": content, "cache_control": {"type": "ephemeral"}}]
    elif isinstance(content, list) and content:
        content[-1]["cache_control"] = {"type": "ephemeral"}


def apply_chat_strategy(strategy: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The fixed strategies on OpenAI-format messages (system = the system message)."""
    out = copy.deepcopy(kwargs)
    if strategy in ("none", "auto"):
        return out
    messages = out["messages"]
    for message in messages:
        if message.get("role") == "system":
            _mark_part(message)
    if strategy == "sys+last" and messages and messages[-1].get("role") != "system":
        _mark_part(messages[-1])
    elif strategy == "litellm":
        for message in reversed(messages):
            if message.get("role") == "user":
                _mark_part(message)
                break
    elif strategy not in ("system", "sys+last"):
        raise ValueError(f"unknown strategy {strategy!r}")
    return out


class ChatRun(Run):
    """:class:`Run` for the openai SDK on the OpenAI-compatible endpoint."""

    def send(self, *, stream: bool = False, api_key: str | None = None, **kwargs: Any) -> Any:
        kwargs.setdefault("max_tokens", 64)
        request = apply_chat_strategy(self.strategy, kwargs)
        index, reply, markers = _call(self, lambda: self.client.chat.completions.create(**request))
        with self._lock:
            self.steps.append(S.Step(index, _bill_chat(reply.usage), markers))
        return reply


def _call(run: Run, send: Callable[[], Any]) -> tuple[int, Any, tuple[str, ...]]:
    """One request of ``run``: its index, what ``send()`` returned, and the markers the
    planner placed on it (under the recorder when ``auto`` runs)."""
    with run._lock:
        index = run._next
        run._next += 1
    if run.recorder is None:
        return index, send(), ()
    with run.recorder.step(index):
        reply = send()
    return index, reply, run.recorder.decisions.get(index, ())


#: Emulator options for the DashScope runs (``savings_review.run_shapes --implicit-hit-rate``).
DASHSCOPE_OPTIONS: dict[str, Any] = {}


def _run_dashscope(
    workload: Workload,
    strategy: str,
    auto_options: dict[str, Any] | None,
    overrides: dict[str, Any],
    make: Callable[[str], Any],
    transport_of: Callable[[Any], Any],
    run_type: type[Run],
) -> S.Result:
    """``savings.run_workload`` against the emulator's DashScope profile: ``make(url)`` is the
    client to wrap, ``transport_of(wrapped)`` its cachewatch transport, ``run_type`` the
    :class:`Run` that sends the workload's requests through it."""
    clock = ManualClock(start=1_000_000.0)
    gate = S.Gate()
    app = create_app(profile="dashscope", clock=clock, before_response=gate, **DASHSCOPE_OPTIONS)
    started = time.perf_counter()
    with run_in_thread(app) as url:
        client = cachewatch.wrap(
            make(url),
            breakpoints="auto" if strategy == "auto" else "off",
            registry=CollectorRegistry(),
            logger=S._Silent(),
            wall_clock=clock,
            **((auto_options or {}) if strategy == "auto" else {}),
        )
        recorder = None
        engine = getattr(transport_of(client), "engine", None)
        if strategy == "auto" and engine is not None and engine.planner is not None:
            recorder = engine.planner = S._Recorder(engine.planner)
        run = run_type(client, clock, strategy, gate, recorder)
        workload.run(run, **{**workload.params, **overrides})
        with suppress(Exception):
            client.close()
    steps = sorted(run.steps, key=lambda s: s.index)
    bill = QwenBill()
    for step in steps:
        bill.add(step.bill)
    result = S.Result(workload.name, strategy, bill, steps, time.perf_counter() - started)
    if recorder is not None:
        result.actions, result.advice = recorder.actions, recorder.advice
    return result


def run_chat_workload(
    workload: Workload, strategy: str, *, auto_options: dict[str, Any] | None = None, **overrides: Any
) -> S.Result:
    """``savings.run_workload`` for the DashScope OpenAI-compatible endpoint."""

    def make(url: str) -> Any:
        return openai.OpenAI(
            api_key=f"bench-{strategy}", base_url=url + "/compatible-mode/v1", max_retries=0, timeout=30.0
        )

    return _run_dashscope(
        workload,
        strategy,
        auto_options,
        overrides,
        make,
        lambda client: getattr(client._client, "_transport", None),
        ChatRun,
    )


class _Obj(dict[str, Any]):
    """A reply of the native API read like the openai SDK's: ``reply.choices[0].message.content``."""

    def __getattr__(self, name: str) -> Any:
        value = self.get(name)
        if isinstance(value, dict):
            return _Obj(value)
        if isinstance(value, list):
            return [_Obj(v) if isinstance(v, dict) else v for v in value]
        return value


def _bill_native(usage: dict[str, Any]) -> QwenBill:
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or 0
    written = details.get("cache_creation_input_tokens")
    if written is None:  # no explicit marker applied: DashScope's implicit cache
        return QwenBill(requests=1, input=usage["input_tokens"] - cached, implicit=cached)
    return QwenBill(requests=1, input=usage["input_tokens"] - cached - written, read=cached, w5m=written)


class NativeRun(Run):
    """:class:`Run` for DashScope's native generation API (``/api/v1/services/aigc/...``).

    Workloads send chat-format keyword arguments (``model``, ``messages``, ``tools``,
    ``tool_choice``, ``max_tokens``, ``enable_thinking``); they go out as
    ``{"model", "input": {"messages"}, "parameters": {...}}`` through an httpx client.
    """

    def send(self, *, stream: bool = False, api_key: str | None = None, **kwargs: Any) -> Any:
        kwargs.setdefault("max_tokens", 64)
        request = apply_chat_strategy(self.strategy, kwargs)
        request.update(request.pop("extra_body", None) or {})
        body = {
            "model": request.pop("model"),
            "input": {"messages": request.pop("messages")},
            "parameters": {"result_format": "message", **request},
        }
        headers = {"Authorization": f"Bearer {api_key or 'bench'}"}
        path = "/api/v1/services/aigc/text-generation/generation"
        index, response, markers = _call(self, lambda: self.client.post(path, json=body, headers=headers))
        response.raise_for_status()
        data = response.json()
        with self._lock:
            self.steps.append(S.Step(index, _bill_native(data["usage"]), markers))
        return _Obj(data["output"])


def run_native_workload(
    workload: Workload, strategy: str, *, auto_options: dict[str, Any] | None = None, **overrides: Any
) -> S.Result:
    """``savings.run_workload`` for DashScope's native generation API (an httpx client)."""
    import httpx

    return _run_dashscope(
        workload,
        strategy,
        auto_options,
        overrides,
        lambda url: httpx.Client(base_url=url, timeout=30.0),
        lambda client: getattr(client, "_transport", None),
        NativeRun,
    )


def _applicable(workload: Workload, strategy: str) -> bool:
    return not (strategy == "top-level" and workload.profile != "anthropic")


def _run(workload: Workload, strategy: str, auto_options: dict[str, Any], seed: str) -> S.Result:
    overrides = {"seed": workload.params.get("seed", "") + seed} if seed else {}
    if workload.profile == "dashscope_openai":
        return run_chat_workload(workload, strategy, auto_options=auto_options, **overrides)
    return S.run_workload(workload, strategy, auto_options=auto_options, **overrides)


# -- report ---------------------------------------------------------------------------------


def summary(all_results: dict[str, dict[str, S.Result]]) -> None:
    """auto / best, auto / none and the excess in wasted writes of the largest prompt."""
    print("Summary: auto against the hindsight-best fixed strategy and against no caching\n")
    head = f"{'workload':<24}{'best':<11}{'auto/best':>10}{'auto/none':>11}{'excess':>9}  verdict"
    print(head)
    print("-" * len(head))
    failed = 0
    for name, results in all_results.items():
        workload = WORKLOADS[name]
        best = S.best_fixed(results)
        auto = results["auto"].bill.cost
        best_cost = results[best].bill.cost
        none_cost = results["none"].bill.cost
        ratio = auto / best_cost if best_cost else 1.0
        vs_none = auto / none_cost if none_cost else 1.0
        largest = max((s.bill.prompt for s in results["auto"].steps), default=1)
        excess = (auto - best_cost) / (0.25 * largest)
        bad = ratio > S.BAR + 1e-9 or (workload.vs_none is not None and vs_none > workload.vs_none + 1e-9)
        failed += bad
        print(
            f"{name:<24}{best:<11}{ratio:>9.3f}x{vs_none:>10.3f}x{excess:>9.2f}  {'FAIL' if bad else 'PASS'}"
            + (" (never reused: bar vs none)" if workload.vs_none is not None else "")
        )
    print(f"\n{failed} of {len(all_results)} workloads break a bar")
    print("(excess: (auto - best fixed) in wasted writes of the largest prompt, 0.25x its tokens each)")
    implicit = {
        name: {s: r.bill.implicit for s, r in results.items() if isinstance(r.bill, QwenBill)}
        for name, results in all_results.items()
    }
    for name, hits in implicit.items():
        if hits:
            cells = ", ".join(f"{s} {n:,}" for s, n in hits.items())
            print(f"{name}: implicit-cache hits (priced {IMPLICIT_PRICE}): {cells}")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="run only workloads whose name contains this")
    parser.add_argument(
        "--trace", action="store_true", help="per-request trace of auto vs the best, for every workload"
    )
    parser.add_argument(
        "--auto-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a Planner option for auto (what-if), e.g. min_margin=-0.25",
    )
    parser.add_argument("--seed", default="", help="a suffix for every workload's seed (other random draws)")
    args = parser.parse_args(argv)
    auto_options = dict(S._option(o) for o in args.auto_option)
    selected = [
        w for w in WORKLOADS.values() if not args.only or any(o.lower() in w.name.lower() for o in args.only)
    ]
    started = time.perf_counter()
    all_results: dict[str, dict[str, S.Result]] = {}
    for workload in selected:
        all_results[workload.name] = {
            strategy: _run(workload, strategy, auto_options, args.seed)
            for strategy in S.STRATEGIES
            if _applicable(workload, strategy)
        }
        print(f"  ran {workload.name} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    print()
    # The report of savings.py looks its workloads up by name (the bar against none).
    S.WORKLOADS.clear()
    S.WORKLOADS.update(WORKLOADS)
    ok = S.report(all_results, trace=args.trace)
    summary(all_results)
    print(f"overall: {'PASS' if ok else 'FAIL'} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
