"""Red-team shapes: everyday traffic the other savings benchmarks do not hold, one line each.

    .venv/bin/python benchmarks/savings_redteam.py [--only NAME ...] [--trace] [--learned] [--seed S]

(about 11 minutes for all; ``--seed a``, or ``SEEDSUF=a``, draws every shape anew). Each shape is a short
trace run through the harness of ``savings.py`` (the real SDK against the emulator, under
every fixed strategy; the OpenAI-compatible DashScope shapes through
``savings_unseen.py``'s chat runner) and printed as ``auto`` against the best fixed
strategy chosen in hindsight and against no caching, with the bar of SPEC section 11
(1.01x). They were written to break the policy: extended thinking switched per turn,
``tool_choice`` per step, huge tool results dropped from the history, pasted documents,
concurrent copies of one request, think times around the TTL, models whose minimum is
2,048 or 4,096, nightly re-runs, a live section of the system prompt, the 20-block
lookback, byte-for-byte queue workers, a timestamped second system message on DashScope,
files attached as their own block before the question, a reminder block after huge tool
results, big results kept or dropped (and a deploy that switches), agent graphs whose nodes
are lanes (thinking, tool_choice, model); and everyday shapes that found nothing to fix: a
buffer-window memory that sends only the last messages, few-shot examples drawn per
request, a per-session header block before shared instructions, a coding agent (tools, a
reminder block, compaction, a side model); and system prompts of two blocks: a timestamp
first after six tools, a per-chat document after shared instructions, a timestamped second
block on DashScope's native and Anthropic-compatible endpoints.
Shapes over the bar are kept: they are what the policy does not yet learn (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import savings_unseen as U
from savings import HAIKU, QWEN, SONNET, Run, Workload, _reply, text
from savings_probes import code, schema_tool
from savings_review import run_shapes

#: Appended to every shape's seed (``SEEDSUF=a``): other draws of the same shapes.
SUF = os.environ.get("SEEDSUF", "")
OPUS45 = "claude-opus-4-5"  # minimum 4,096
OPUS47 = "claude-opus-4-7"  # minimum 2,048

THINK = {"type": "enabled", "budget_tokens": 2_048}


def _tr(uid: str, content: Any) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": uid, "content": content}


def thinking_chats(
    mode: str, *, seed: str = "think", convs: int = 12, blocks: int = 1
) -> Callable[..., None]:
    """Chats where extended thinking is on at some turns: ``toggle`` (the user flips a
    "think harder" switch, 40 % of turns), ``budget`` (always on, budget picked per turn
    from the question's difficulty), ``sticky`` (off, then on for the rest once turned on)."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed + mode)
        system = "You are a math tutor. " + text(f"{seed}-system", 2_500)
        for c in range(convs):
            messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-{c}", 200)}]
            on = False
            for t in range(rng.randint(2, 7)):
                extra: dict[str, Any] = {}
                if mode == "toggle":
                    on = rng.random() < 0.4
                elif mode == "sticky":
                    on = on or rng.random() < 0.3
                elif mode == "budget":
                    on = True
                if on:
                    budget = rng.choice((1_024, 4_096, 8_192)) if mode == "budget" else 2_048
                    extra = {"thinking": {"type": "enabled", "budget_tokens": budget}, "max_tokens": 16_000}
                reply = run.send(model=SONNET, system=system, messages=messages, **extra)
                if blocks == 1:
                    follow: Any = text(f"{seed}-{c}-{t}", rng.randint(20, 200))
                else:
                    follow = [
                        {"type": "text", "text": text(f"{seed}-{c}-{t}-{b}", rng.randint(20, 120))}
                        for b in range(blocks)
                    ]
                messages += [_reply(reply), {"role": "user", "content": follow}]
                run.wait(rng.uniform(5, 60))
            run.wait(rng.uniform(10, 200))

    return workload


def thinking_agent(run: Run, *, seed: str = "thinkagent") -> None:
    """An agent with thinking on: every assistant turn is a thinking block (signed) and a
    tool_use; the tool results come back; 6 tools, 1.2k system; 8 tasks of 3-7 steps."""
    rng = random.Random(SUF + seed)
    tools = [schema_tool(f"t{i}", f"{seed}-t{i}", 15) for i in range(6)]
    system = "You are an SRE agent. " + text(f"{seed}-system", 1_200)
    for c in range(8):
        messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-c{c}", 120)}]
        steps = rng.randint(3, 7)
        for s in range(steps):
            run.send(
                model=SONNET, system=system, tools=tools, messages=messages, thinking=THINK, max_tokens=8_000
            )
            uid = f"toolu_{seed}{c:02d}{s:02d}"
            messages.append(
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "thinking",
                            "thinking": text(f"{seed}-th{c}-{s}", rng.randint(100, 600)),
                            "signature": "sig" + uid,
                        },
                        {"type": "tool_use", "id": uid, "name": f"t{s % 6}", "input": {"q": f"x{s}"}},
                    ],
                }
            )
            messages.append(
                {"role": "user", "content": [_tr(uid, text(f"{seed}-r{c}-{s}", rng.randint(200, 1_500)))]}
            )
            run.wait(rng.uniform(2, 15))
        run.wait(rng.uniform(30, 300))


def forced_first_tool(mode: str, *, seed: str = "forced") -> Callable[..., None]:
    """Agent runs whose first step forces a tool (``first``: tool_choice {"type": "tool"}
    then auto; ``any``: {"type": "any"} then nothing) or whose last step forbids tools
    (``last``: tool_choice none for the final answer)."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed + mode)
        tools = [schema_tool(f"t{i}", f"{seed}-t{i}", 20) for i in range(6)]
        system = "You are a research agent. " + text(f"{seed}-system", 1_500)
        for c in range(10):
            messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-c{c}", 150)}]
            steps = rng.randint(3, 7)
            for s in range(steps):
                extra: dict[str, Any] = {}
                if mode == "first" and s == 0:
                    extra["tool_choice"] = {"type": "tool", "name": "t0"}
                elif mode == "first":
                    extra["tool_choice"] = {"type": "auto"}
                elif mode == "any" and s == 0:
                    extra["tool_choice"] = {"type": "any"}
                elif mode == "last" and s == steps - 1:
                    extra["tool_choice"] = {"type": "none"}
                elif mode == "random":
                    extra["tool_choice"] = {"type": rng.choice(("auto", "any"))}
                run.send(model=SONNET, system=system, tools=tools, messages=messages, **extra)
                uid = f"toolu_{seed}{c:02d}{s:02d}"
                messages.append(
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "tool_use", "id": uid, "name": f"t{s % 6}", "input": {"q": f"y{s}"}}
                        ],
                    }
                )
                messages.append(
                    {"role": "user", "content": [_tr(uid, text(f"{seed}-r{c}-{s}", rng.randint(300, 1_500)))]}
                )
                run.wait(rng.uniform(2, 12))
            run.wait(rng.uniform(30, 240))

    return workload


def router_triage(run: Run, *, seed: str = "triage", system_tokens: int = 5_000, full: bool = False) -> None:
    """One system prompt, two models: every user turn is first classified by Haiku 4.5
    (system + that message only), then answered by Sonnet (system + the whole chat)."""
    rng = random.Random(SUF + seed)
    system = "You are the support assistant of Example Corp. " + text(f"{seed}-system", system_tokens)
    for c in range(10):
        messages: list[dict[str, Any]] = []
        for t in range(rng.randint(2, 6)):
            q = {"role": "user", "content": text(f"{seed}-{c}-{t}", rng.randint(30, 200))}
            run.send(model=HAIKU, system=system, messages=[*messages, q] if full else [q], max_tokens=5)
            run.wait(rng.uniform(0.5, 2))
            messages.append(q)
            reply = run.send(model=SONNET, system=system, messages=messages)
            messages.append(_reply(reply))
            run.wait(rng.uniform(10, 60))
        run.wait(rng.uniform(20, 200))


def huge_result_dropped(run: Run, *, seed: str = "hugedrop", tasks: int = 6, p_big: float = 0.5) -> None:
    """Agent steps where a tool returns 10-20k tokens (a file, a query dump); the next step
    reads it, then the app replaces it by a 50-token note for the steps after that."""
    rng = random.Random(SUF + seed)
    tools = [schema_tool(f"t{i}", f"{seed}-t{i}", 20) for i in range(4)]
    system = "You are a data analyst agent. " + text(f"{seed}-system", 1_500)
    for c in range(tasks):
        messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-c{c}", 150)}]
        pending: list[dict[str, Any]] = []
        for s in range(rng.randint(4, 8)):
            run.send(model=SONNET, system=system, tools=tools, messages=messages)
            # drop the huge result of the previous step
            for b in pending:
                b["content"] = "[result summarised: " + text(f"{seed}-sum{c}-{s}", 50) + "]"
            pending.clear()
            uid = f"toolu_{seed}{c:02d}{s:02d}"
            messages.append(
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": uid, "name": f"t{s % 4}", "input": {"q": f"z{s}"}}
                    ],
                }
            )
            big = rng.random() < p_big
            block = _tr(
                uid, text(f"{seed}-r{c}-{s}", rng.randint(10_000, 20_000) if big else rng.randint(200, 800))
            )
            if big:
                pending.append(block)
            messages.append({"role": "user", "content": [block]})
            run.wait(rng.uniform(3, 20))
        run.wait(rng.uniform(30, 300))


def small_system_big_min(model: str, content: str, *, seed: str = "bigmin") -> Callable[..., None]:
    """Chats on a model with a 2,048/4,096 minimum and a 1,500-token system prompt: the
    prompt reaches the minimum only after a few turns; prose or code follow-ups."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed + model + content)
        system = "You are a pair programmer. " + text(f"{seed}-system", 1_500)
        for c in range(10):
            messages: list[dict[str, Any]] = []
            for t in range(rng.randint(3, 9)):
                n = rng.randint(100, 600)
                body = code(f"{seed}-{c}-{t}", n // 25) if content == "code" else text(f"{seed}-{c}-{t}", n)
                messages.append({"role": "user", "content": body})
                reply = run.send(model=model, system=system, messages=messages)
                messages.append(_reply(reply))
                run.wait(rng.uniform(10, 60))
            run.wait(rng.uniform(20, 200))

    return workload


def concurrent_think_time(
    *,
    users: int = 25,
    gap: tuple[float, float] = (300, 480),
    seed: str = "slowusers",
    system_tokens: int = 3_000,
) -> Callable[..., None]:
    """Many users of one chat app at once: each a chat of 3-6 turns with 5-8 minutes of
    think time between turns; users start 0-20 minutes in."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        system = "You are the assistant of a travel app. " + text(f"{seed}-system", system_tokens)

        def user(u: int) -> U.Source:
            r = random.Random(SUF + f"{seed}-{u}")
            messages: list[dict[str, Any]] = []
            for t in range(r.randint(3, 6)):
                yield r.uniform(*gap) if t else 0.0
                messages.append({"role": "user", "content": text(f"{seed}-{u}-{t}", r.randint(30, 300))})
                reply = run.send(model=SONNET, system=system, messages=messages)
                messages.append(_reply(reply))

        starts = [rng.uniform(0, 1_200) for _ in range(users)]
        U.drive(run, U._interleave([user(u) for u in range(users)], starts))

    return workload


def nightly_rerun(
    *, runs: int = 4, gap_min: float = 50, items: int = 30, seed: str = "rerun"
) -> Callable[..., None]:
    """A batch job re-running the same prompts (shared instructions + the same 30 documents)
    every ``gap_min`` minutes (an eval suite re-run on each deploy, a report regenerated)."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        system = "Extract the fields as JSON. " + text(f"{seed}-system", 2_000)
        docs = [text(f"{seed}-doc{i}", rng.randint(1_500, 4_000)) for i in range(items)]
        for r in range(runs):
            if r:
                run.wait(gap_min * 60 + rng.uniform(-120, 120))
            for i in range(items):
                run.send(model=SONNET, system=system, messages=[{"role": "user", "content": docs[i]}])
                run.wait(rng.uniform(2, 10))

    return workload


def edited_system(*, every: float = 1_200, seed: str = "livesys") -> Callable[..., None]:
    """A chat product whose system prompt ends with a live section (status, prices)
    regenerated every 20 minutes; chats of 2-8 turns, two or three at a time."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        base = "You are the shop assistant. " + text(f"{seed}-system", 2_500)
        t0 = run.clock()

        def chat(c: int) -> U.Source:
            r = random.Random(SUF + f"{seed}-{c}")
            messages: list[dict[str, Any]] = []
            for t in range(r.randint(2, 8)):
                yield r.uniform(10, 90) if t else 0.0
                epoch = int((run.clock() - t0) // every)
                system = base + "\nLive status: " + text(f"{seed}-live{epoch}", 300)
                messages.append({"role": "user", "content": text(f"{seed}-{c}-{t}", r.randint(30, 200))})
                reply = run.send(model=SONNET, system=system, messages=messages)
                messages.append(_reply(reply))

        starts = sorted(rng.uniform(0, 3_600) for _ in range(30))
        U.drive(run, U._interleave([chat(c) for c in range(30)], starts))

    return workload


def rag_chat(mode: str, *, seed: str = "ragchat") -> Callable[..., None]:
    """Chats where each user turn is sent with retrieved chunks (1.5-2.5k tokens); in the
    history only the question is kept (``strip``), or the chunks stay (``keep``); or a
    <system-reminder> block (todo state) is appended to the last user message only
    (``reminder``)."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed + mode)
        system = "Answer from the retrieved context. " + text(f"{seed}-system", 2_000)
        for c in range(10):
            history: list[dict[str, Any]] = []
            for t in range(rng.randint(2, 7)):
                q = text(f"{seed}-{c}-{t}", rng.randint(20, 150))
                if mode == "reminder":
                    extra = (
                        "<system-reminder>"
                        + text(f"{seed}-rem{c}-{t}", rng.randint(100, 400))
                        + "</system-reminder>"
                    )
                else:
                    extra = "Context:\n" + text(f"{seed}-chunks{c}-{t}", rng.randint(1_500, 2_500))
                if mode == "reminder":
                    last = {
                        "role": "user",
                        "content": [{"type": "text", "text": q}, {"type": "text", "text": extra}],
                    }
                else:
                    last = {
                        "role": "user",
                        "content": [{"type": "text", "text": extra}, {"type": "text", "text": q}],
                    }
                reply = run.send(model=SONNET, system=system, messages=[*history, last])
                history += [last if mode == "keep" else {"role": "user", "content": q}, _reply(reply)]
                run.wait(rng.uniform(5, 60))
            run.wait(rng.uniform(10, 200))

    return workload


def many_blocks_turn(*, blocks: int = 24, seed: str = "manyblk") -> Callable[..., None]:
    """Chats whose every user turn is sent as many small content blocks (an IDE sending
    each open file's snippet as its own block): ``blocks`` blocks of 80-200 tokens per turn."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        system = "You are a coding assistant. " + text(f"{seed}-system", 1_500)
        for c in range(8):
            messages: list[dict[str, Any]] = []
            for t in range(rng.randint(3, 7)):
                content = [
                    {"type": "text", "text": code(f"{seed}-{c}-{t}-{b}", rng.randint(2, 6))}
                    for b in range(blocks)
                ]
                content.append({"type": "text", "text": text(f"{seed}-q{c}-{t}", 60)})
                messages.append({"role": "user", "content": content})
                reply = run.send(model=SONNET, system=system, messages=messages)
                messages.append(_reply(reply))
                run.wait(rng.uniform(10, 60))
            run.wait(rng.uniform(20, 200))

    return workload


def self_consistency(parallel: bool, *, seed: str = "sc", k: int = 5) -> Callable[..., None]:
    """An eval harness that samples each question ``k`` times (self-consistency): the same
    request sent k times, in a row or all at once; 40 questions with a 1k few-shot system."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        system = "Solve step by step. " + text(f"{seed}-system", 1_000)
        for i in range(40):
            req = {
                "model": SONNET,
                "system": system,
                "messages": [{"role": "user", "content": text(f"{seed}-{i}", rng.randint(200, 1_500))}],
            }
            if parallel:
                run.fan_out([dict(req) for _ in range(k)])
            else:
                for _ in range(k):
                    run.send(**req)
                    run.wait(rng.uniform(1, 4))
            run.wait(rng.uniform(1, 5))

    return workload


def byok_chats(*, users: int = 20, seed: str = "byok") -> Callable[..., None]:
    """A bring-your-own-key chat app: one system prompt, every user with their own key (a
    cache and a family each), chats of 2-6 turns 10-60 s apart, users interleaved."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        system = "You are a writing assistant. " + text(f"{seed}-system", 2_500)

        def user(u: int) -> U.Source:
            r = random.Random(SUF + f"{seed}-{u}")
            for c in range(r.randint(1, 3)):
                messages: list[dict[str, Any]] = []
                for t in range(r.randint(2, 6)):
                    yield r.uniform(10, 60) if t else (r.uniform(60, 400) if c else 0.0)
                    messages.append(
                        {"role": "user", "content": text(f"{seed}-{u}-{c}-{t}", r.randint(30, 200))}
                    )
                    reply = run.send(
                        model=SONNET, system=system, messages=messages, api_key=f"{seed}-key-{u}"
                    )
                    messages.append(_reply(reply))

        starts = [rng.uniform(0, 1_800) for _ in range(users)]
        U.drive(run, U._interleave([user(u) for u in range(users)], starts))

    return workload


def qwen_agent(*, seed: str = "qwenagent") -> Callable[..., None]:
    """DashScope OpenAI-compatible agent: 5 function tools, a 1.5k system message, tool calls
    and role=tool results of 300-2,000 tokens; 8 tasks of 2-6 steps."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        tools = [
            {
                "type": "function",
                "function": {
                    "name": f"f{i}",
                    "description": text(f"{seed}-f{i}", 150),
                    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                },
            }
            for i in range(5)
        ]
        system = "You are an order agent. " + text(f"{seed}-system", 1_500)
        for c in range(8):
            messages: list[dict[str, Any]] = [
                {"role": "system", "content": system},
                U._user(f"{seed}-c{c}", 100),
            ]
            for s in range(rng.randint(2, 6)):
                run.send(model=QWEN, messages=messages, tools=tools)
                cid = f"call_{c}_{s}"
                messages.append(
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [
                            {
                                "id": cid,
                                "type": "function",
                                "function": {"name": f"f{s % 5}", "arguments": json.dumps({"q": f"w{s}"})},
                            }
                        ],
                    }
                )
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": cid,
                        "content": text(f"{seed}-r{c}-{s}", rng.randint(300, 2_000)),
                    }
                )
                run.wait(rng.uniform(2, 15))
            run.wait(rng.uniform(30, 300))

    return workload


def dashscope_slow_chats(*, seed: str = "dsslow") -> Callable[..., None]:
    """DashScope Anthropic endpoint: chats with 3-7 minutes between turns, several at once."""
    return concurrent_think_time(users=15, gap=(180, 420), seed=seed)


def fixed_opener(
    *, users: int = 16, seed: str = "opener", gap: tuple[float, float] = (10, 60)
) -> Callable[..., None]:
    """A support widget: every conversation opens with the same canned user message and
    the same canned assistant greeting, then the user's questions; 16 users interleaved."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        system = "You are the support bot of Example Corp. " + text(f"{seed}-system", 2_500)
        opener = [
            {"role": "user", "content": "Start the session."},
            {
                "role": "assistant",
                "content": "Hello! I am the Example Corp assistant. How can I help you today?",
            },
        ]

        def user(u: int) -> U.Source:
            r = random.Random(SUF + f"{seed}-{u}")
            messages: list[dict[str, Any]] = [dict(m) for m in opener]
            for t in range(r.randint(2, 7)):
                yield r.uniform(*gap) if t else 0.0
                messages.append({"role": "user", "content": text(f"{seed}-{u}-{t}", r.randint(30, 200))})
                reply = run.send(model=SONNET, system=system, messages=messages)
                messages.append(_reply(reply))

        starts = [rng.uniform(0, 900) for _ in range(users)]
        U.drive(run, U._interleave([user(u) for u in range(users)], starts))

    return workload


def queue_workers(
    *, workers: int = 4, tasks: int = 24, seed: str = "queue", stream: bool = False
) -> Callable[..., None]:
    """Agents pulling work from a queue: every task opens with the same instruction ("take
    the next ticket"), the first step calls get_ticket, whose result is the ticket; then
    2-5 steps; several workers interleaved."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        tools = [schema_tool(f"t{i}", f"{seed}-t{i}", 20) for i in range(5)]
        system = "You are a ticket triage agent. " + text(f"{seed}-system", 1_500)

        def worker(w: int) -> U.Source:
            r = random.Random(SUF + f"{seed}-{w}")
            for k in range(tasks // workers):
                messages: list[dict[str, Any]] = [
                    {"role": "user", "content": "Take the next ticket from the queue and resolve it."}
                ]
                for s in range(r.randint(3, 6)):
                    yield r.uniform(2, 12) if (s or k) else 0.0
                    run.send(model=SONNET, system=system, tools=tools, messages=messages, stream=stream)
                    uid = f"toolu_{seed}{w:02d}{k:02d}{s:02d}"
                    name = "t0" if s == 0 else f"t{1 + s % 4}"
                    messages.append(
                        {
                            "role": "assistant",
                            "content": [
                                {
                                    "type": "tool_use",
                                    "id": "toolu_first" if s == 0 else uid,
                                    "name": name,
                                    "input": {"q": "next" if s == 0 else f"v{s}"},
                                }
                            ],
                        }
                    )
                    messages.append(
                        {
                            "role": "user",
                            "content": [
                                _tr(
                                    "toolu_first" if s == 0 else uid,
                                    text(f"{seed}-r{w}-{k}-{s}", r.randint(200, 1_200)),
                                )
                            ],
                        }
                    )

        starts = [rng.uniform(0, 30) for _ in range(workers)]
        U.drive(run, U._interleave([worker(w) for w in range(workers)], starts))

    return workload


def paste_or_chat(*, sessions: int = 40, p_paste: float = 0.5, seed: str = "paste") -> Callable[..., None]:
    """A chat UI: some sessions paste a long document (6-15k tokens) and ask for a summary,
    once; the others are short-question chats of 3-6 turns; sessions interleaved."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        system = "You are a helpful assistant. " + text(f"{seed}-system", 2_000)

        def session(k: int) -> U.Source:
            r = random.Random(SUF + f"{seed}-{k}")
            if r.random() < p_paste:
                yield 0.0
                body = "Summarise this:\n" + text(f"{seed}-doc{k}", r.randint(6_000, 15_000))
                run.send(model=SONNET, system=system, messages=[{"role": "user", "content": body}])
                return
            messages: list[dict[str, Any]] = []
            for t in range(r.randint(3, 6)):
                yield r.uniform(10, 60) if t else 0.0
                messages.append({"role": "user", "content": text(f"{seed}-{k}-{t}", r.randint(30, 200))})
                reply = run.send(model=SONNET, system=system, messages=messages)
                messages.append(_reply(reply))

        starts = [rng.uniform(0, 1_800) for _ in range(sessions)]
        U.drive(run, U._interleave([session(k) for k in range(sessions)], starts))

    return workload


def parallel_drafts(*, seed: str = "drafts", k: int = 3) -> Callable[..., None]:
    """A writing app that shows ``k`` alternative drafts: every turn is sent ``k`` times at
    once (the same request); the user picks the first and goes on; chats of 2-6 turns."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        system = "You are a copywriter. " + text(f"{seed}-system", 2_000)
        for c in range(10):
            messages: list[dict[str, Any]] = []
            for t in range(rng.randint(2, 6)):
                messages.append({"role": "user", "content": text(f"{seed}-{c}-{t}", rng.randint(50, 400))})
                req = {"model": SONNET, "system": system, "messages": list(messages)}
                replies = run.fan_out([dict(req) for _ in range(k)])
                messages.append(_reply(replies[0]))
                run.wait(rng.uniform(10, 60))
            run.wait(rng.uniform(20, 200))

    return workload


def image_chat(
    model: str, *, seed: str = "imgchat", system_tokens: int = 1_500, images: int = 2
) -> Callable[..., None]:
    """Chats whose first message carries ``images`` photos and a question, then follow-ups."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed + model)
        system = "You describe and discuss the user's photos. " + text(f"{seed}-system", system_tokens)
        for c in range(10):
            messages: list[dict[str, Any]] = []
            for t in range(rng.randint(2, 6)):
                q = {"type": "text", "text": text(f"{seed}-{c}-{t}", rng.randint(20, 120))}
                content: Any = [*(U._image(f"{seed}-{c}-{i}") for i in range(images)), q] if t == 0 else [q]
                messages.append({"role": "user", "content": content})
                reply = run.send(model=model, system=system, messages=messages)
                messages.append(_reply(reply))
                run.wait(rng.uniform(10, 60))
            run.wait(rng.uniform(20, 200))

    return workload


def qwen_stamped(*, seed: str = "qwenstamp", chats: int = 8, fmt: str = "chat") -> Callable[..., None]:
    """DashScope chats whose system is two messages (``fmt="anthropic"``: two system
    blocks): stable instructions (2.5k) and a second one with the current time and a
    request id (changes every request)."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        system = "You are the assistant. " + text(f"{seed}-system", 2_500)
        for c in range(chats):
            history: list[dict[str, Any]] = []
            for t in range(rng.randint(2, 6)):
                history.append(U._user(f"{seed}-{c}-{t}", rng.randint(30, 200)))
                now = f"Now: {run.clock():.0f}. Request {c}-{t}."
                if fmt == "anthropic":
                    blocks = [{"type": "text", "text": system}, {"type": "text", "text": now}]
                    history.append(_reply(run.send(model=QWEN, system=blocks, messages=history)))
                else:
                    stamp = {"role": "system", "content": now}
                    reply = run.send(
                        model=QWEN, messages=[{"role": "system", "content": system}, stamp, *history]
                    )
                    history.append({"role": "assistant", "content": reply.choices[0].message.content or ""})
                run.wait(rng.uniform(5, 60))
            run.wait(rng.uniform(20, 200))

    return workload


def stamped_top_agent(*, seed: str = "stamptop", tasks: int = 8) -> Callable[..., None]:
    """Agent loops (3-7 steps, 2-20 s apart) with six tools and a system prompt of two
    blocks: the first holds the time and a request id (changes every request), the second
    2.5k tokens of instructions. Nothing after the tools is ever the same twice."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        tools = [schema_tool(f"t{i}", f"{seed}-t{i}", 14) for i in range(6)]
        instructions = "You are an operations agent. " + text(f"{seed}-system", 2_500)
        for c in range(tasks):
            messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-{c}", 150)}]
            for s in range(rng.randint(3, 7)):
                system = [
                    {"type": "text", "text": f"Now: {run.clock():.0f}. Request {c}-{s}."},
                    {"type": "text", "text": instructions},
                ]
                run.send(model=SONNET, system=system, tools=tools, messages=messages)
                uid = f"toolu_{seed}{c:02d}{s:02d}"
                messages.append(
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": uid, "name": "t0", "input": {}}],
                    }
                )
                messages.append(
                    {"role": "user", "content": [_tr(uid, text(f"{seed}-r{c}-{s}", rng.randint(80, 600)))]}
                )
                run.wait(rng.uniform(2, 20))
            run.wait(rng.uniform(30, 400))

    return workload


def document_in_system(
    *, seed: str = "docsys", chats: int = 10, open_at_once: int = 3
) -> Callable[..., None]:
    """Chats about a document that the app puts in the system prompt after shared
    instructions (2k): each chat its own document (2-5k), three chats open at once, turns
    interleaved 10-60 s apart. The second block changes from one request to the next, but
    each value comes back for the rest of its chat."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        instructions = "Answer questions about the attached document. " + text(f"{seed}-system", 2_000)
        pending = list(range(chats))
        live: list[tuple[int, str, list[dict[str, Any]], int]] = []
        while pending or live:
            while pending and len(live) < open_at_once:
                c = pending.pop(0)
                doc = f"Document {c}. " + text(f"{seed}-doc{c}", rng.randint(2_000, 5_000))
                live.append((c, doc, [], rng.randint(2, 6)))
            k = rng.randrange(len(live))
            c, doc, messages, left = live[k]
            messages.append(
                {"role": "user", "content": text(f"{seed}-{c}-{len(messages)}", rng.randint(20, 150))}
            )
            system = [{"type": "text", "text": instructions}, {"type": "text", "text": doc}]
            messages.append(_reply(run.send(model=SONNET, system=system, messages=messages)))
            if left <= 1:
                live.pop(k)
            else:
                live[k] = (c, doc, messages, left - 1)
            run.wait(rng.uniform(10, 60))

    return workload


def side_summariser(*, seed: str = "sidesum", every: int = 3) -> Callable[..., None]:
    """Chats on Sonnet; every ``every`` turns the app also asks the same model, under
    another system prompt, to update the conversation's memory from the same messages."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        system = "You are a coach. " + text(f"{seed}-system", 2_500)
        memsys = "Extract durable facts about the user as JSON. " + text(f"{seed}-memsys", 1_200)
        for c in range(10):
            messages: list[dict[str, Any]] = []
            for t in range(rng.randint(3, 9)):
                messages.append({"role": "user", "content": text(f"{seed}-{c}-{t}", rng.randint(30, 250))})
                reply = run.send(model=SONNET, system=system, messages=messages)
                messages.append(_reply(reply))
                if t % every == every - 1:
                    run.wait(rng.uniform(0.5, 2))
                    run.send(
                        model=SONNET,
                        system=memsys,
                        messages=[*messages, {"role": "user", "content": "Update the memory."}],
                    )
                run.wait(rng.uniform(10, 60))
            run.wait(rng.uniform(20, 200))

    return workload


def compacting_chat(*, seed: str = "compactchat", every: int = 8) -> Callable[..., None]:
    """Long chats (10-30 turns) that, every ``every`` turns, replace the history by one
    summary message (1-2k tokens) followed by the last exchange."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        system = "You are a study buddy. " + text(f"{seed}-system", 2_500)
        for c in range(5):
            messages: list[dict[str, Any]] = []
            for t in range(rng.randint(10, 30)):
                if t and t % every == 0:
                    summary = {
                        "role": "user",
                        "content": "Summary of our conversation so far: "
                        + text(f"{seed}-sum{c}-{t}", rng.randint(1_000, 2_000)),
                    }
                    messages = [summary, {"role": "assistant", "content": "Thanks, noted."}, *messages[-2:]]
                messages.append({"role": "user", "content": text(f"{seed}-{c}-{t}", rng.randint(30, 250))})
                reply = run.send(model=SONNET, system=system, messages=messages)
                messages.append(_reply(reply))
                run.wait(rng.uniform(10, 60))
            run.wait(rng.uniform(20, 200))

    return workload


def code_oneshots_and_chat(
    *,
    seed: str = "minpoison",
    sys_a: int = 990,
    sys_b: int = 1_300,
    reviews_n: int = 60,
    review_gap: tuple[float, float] = (5, 40),
    chats_n: int = 12,
) -> Callable[..., None]:
    """One process, one model (Sonnet, minimum 1,024): a code-review job whose prose
    instructions sit just under the minimum (``sys_a`` tokens) with 1.5-3k tokens of code per
    request, next to a support chat whose system prompt is ``sys_b`` tokens, short turns."""

    def workload(run: Run) -> None:
        system_a = U.sized(f"{seed}-a", sys_a)
        system_b = "You are the support bot. " + text(f"{seed}-b", sys_b)

        def reviews() -> U.Source:
            r = random.Random(SUF + f"{seed}-rev")
            for i in range(reviews_n):
                yield r.uniform(*review_gap) if i else 0.0
                run.send(
                    model=SONNET,
                    system=system_a,
                    messages=[{"role": "user", "content": code(f"{seed}-code{i}", r.randint(60, 120))}],
                )

        def chats() -> U.Source:
            r = random.Random(SUF + f"{seed}-chat")
            for c in range(chats_n):
                messages: list[dict[str, Any]] = []
                for t in range(r.randint(3, 6)):
                    yield r.uniform(10, 60) if t else r.uniform(20, 120)
                    messages.append({"role": "user", "content": text(f"{seed}-{c}-{t}", r.randint(30, 100))})
                    reply = run.send(model=SONNET, system=system_b, messages=messages)
                    messages.append(_reply(reply))

        U.drive(run, U._interleave([reviews(), chats()], [0.0, 0.0]))

    return workload


def attach_or_chat(
    *,
    sessions: int = 40,
    p_attach: float = 0.5,
    p_discuss: float = 0.0,
    as_block: bool = True,
    doc: tuple[int, int] = (6_000, 15_000),
    seed: str = "attach",
) -> Callable[..., None]:
    """A chat UI with file upload: some sessions attach a document (a contract, a report,
    ``doc`` tokens) and ask about it; the app sends the file as its own content block and the
    question as the next one (``as_block``; else one string, the file pasted above the
    question). With chance ``p_discuss`` the user goes on for 2-5 short follow-ups about it,
    else leaves after the answer. The other sessions are short-question chats of 3-6 turns;
    sessions interleaved, 10-60 s think time."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        system = "You are a helpful assistant. " + text(f"{seed}-system", 2_000)

        def session(k: int) -> U.Source:
            r = random.Random(SUF + f"{seed}-{k}")
            messages: list[dict[str, Any]] = []
            if r.random() < p_attach:
                body = text(f"{seed}-doc{k}", r.randint(*doc))
                q = text(f"{seed}-q{k}", r.randint(20, 80))
                first: Any = (
                    [{"type": "text", "text": body}, {"type": "text", "text": q}]
                    if as_block
                    else body + "\n\n" + q
                )
                turns = 1 + (r.randint(2, 5) if r.random() < p_discuss else 0)
                for t in range(turns):
                    yield r.uniform(10, 60) if t else 0.0
                    content = first if t == 0 else text(f"{seed}-{k}-{t}", r.randint(20, 150))
                    messages.append({"role": "user", "content": content})
                    reply = run.send(model=SONNET, system=system, messages=messages)
                    messages.append(_reply(reply))
                return
            for t in range(r.randint(3, 6)):
                yield r.uniform(10, 60) if t else 0.0
                messages.append({"role": "user", "content": text(f"{seed}-{k}-{t}", r.randint(30, 200))})
                reply = run.send(model=SONNET, system=system, messages=messages)
                messages.append(_reply(reply))

        starts = [rng.uniform(0, 1_800) for _ in range(sessions)]
        U.drive(run, U._interleave([session(k) for k in range(sessions)], starts))

    return workload


def code_paste_mid_chat(
    *, sessions: int = 30, p_paste: float = 0.4, seed: str = "codepaste"
) -> Callable[..., None]:
    """A coding-assistant chat: every session is 3-8 short turns; in ``p_paste`` of them the
    user pastes a whole source file (80-300 lines, 3-11k tokens) with a question at a random
    turn, then keeps asking about it (or moves on) for the remaining turns."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        system = "You are a senior engineer helping with code. " + text(f"{seed}-system", 1_800)

        def session(k: int) -> U.Source:
            r = random.Random(SUF + f"{seed}-{k}")
            turns = r.randint(3, 8)
            paste_at = r.randrange(turns - 1) if r.random() < p_paste else -1
            messages: list[dict[str, Any]] = []
            for t in range(turns):
                yield r.uniform(15, 90) if t else 0.0
                q = text(f"{seed}-{k}-{t}", r.randint(20, 200))
                if t == paste_at:
                    q = "Here is my file:\n```\n" + code(f"{seed}-f{k}", r.randint(80, 300)) + "\n```\n" + q
                messages.append({"role": "user", "content": q})
                reply = run.send(model=SONNET, system=system, messages=messages)
                messages.append(_reply(reply))

        starts = [rng.uniform(0, 2_400) for _ in range(sessions)]
        U.drive(run, U._interleave([session(k) for k in range(sessions)], starts))

    return workload


def big_results_kept(
    *,
    tasks: int = 12,
    p_big: float = 0.4,
    drop: Callable[[int, int], bool] = lambda task, tasks: False,
    parallel: bool = False,
    reminder: bool = False,
    seed: str = "bigkept",
) -> Callable[..., None]:
    """A coding/data agent whose tools return 3-20k tokens (a file read, a query result, a
    log) with chance ``p_big``, else 200-800; the results stay in the history and later steps
    read them. ``drop(task, tasks)``: in that task the app instead replaces a big result by a
    50-token note after the step that read it (a context-management setting, turned on or off
    by a deploy part-way). ``parallel``: the model calls 2-3 tools at once and the results come
    back as one user message of several tool_result blocks, the big one anywhere among them.
    ``reminder``: the harness appends a short text block after the results (a
    <system-reminder> with the todo list and the time, 60-200 tokens), as coding agents do."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        tools = [schema_tool(f"t{i}", f"{seed}-t{i}", 20) for i in range(5)]
        system = "You are a coding agent working in a repository. " + text(f"{seed}-system", 1_800)
        for c in range(tasks):
            dropping = drop(c, tasks)
            messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-c{c}", 150)}]
            pending: list[dict[str, Any]] = []
            for s in range(rng.randint(4, 9)):
                run.send(model=SONNET, system=system, tools=tools, messages=messages)
                for b in pending:
                    b["content"] = "[result summarised: " + text(f"{seed}-sum{c}-{s}", 50) + "]"
                pending.clear()
                calls = rng.randint(2, 3) if parallel else 1
                big_at = rng.randrange(calls) if rng.random() < p_big else -1
                uses, results = [], []
                for j in range(calls):
                    uid = f"toolu_{seed}{c:02d}{s:02d}{j}"
                    uses.append(
                        {"type": "tool_use", "id": uid, "name": f"t{(s + j) % 5}", "input": {"q": f"k{s}{j}"}}
                    )
                    n = rng.randint(3_000, 20_000) if j == big_at else rng.randint(200, 800)
                    block = _tr(uid, text(f"{seed}-r{c}-{s}-{j}", n))
                    if j == big_at and dropping:
                        pending.append(block)
                    results.append(block)
                messages.append({"role": "assistant", "content": uses})
                if reminder:
                    note = text(f"{seed}-rem{c}-{s}", rng.randint(60, 200))
                    results.append(
                        {"type": "text", "text": "<system-reminder>" + note + "</system-reminder>"}
                    )
                messages.append({"role": "user", "content": results})
                run.wait(rng.uniform(3, 20))
            run.wait(rng.uniform(30, 300))

    return workload


def inline_edit_or_chat(
    *, sessions: int = 50, p_edit: float = 0.5, edit: tuple[int, int] = (1_200, 2_000), seed: str = "inline"
) -> Callable[..., None]:
    """An IDE assistant with one system prompt for two features: an inline edit (the selected
    code, ``edit`` tokens, and an instruction; one request, the edit is applied and nothing
    follows) and a side-panel chat of 3-6 short turns; both interleaved over 40 minutes."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        system = "You are a coding assistant inside an IDE. " + text(f"{seed}-system", 2_000)

        def session(k: int) -> U.Source:
            r = random.Random(SUF + f"{seed}-{k}")
            messages: list[dict[str, Any]] = []
            if r.random() < p_edit:
                yield 0.0
                body = (
                    code(f"{seed}-sel{k}", r.randint(*edit) // 37)
                    + "\n\nInstruction: "
                    + text(f"{seed}-i{k}", r.randint(10, 40))
                )
                run.send(model=SONNET, system=system, messages=[{"role": "user", "content": body}])
                return
            for t in range(r.randint(3, 6)):
                yield r.uniform(10, 60) if t else 0.0
                messages.append({"role": "user", "content": text(f"{seed}-{k}-{t}", r.randint(30, 200))})
                reply = run.send(model=SONNET, system=system, messages=messages)
                messages.append(_reply(reply))

        starts = [rng.uniform(0, 2_400) for _ in range(sessions)]
        U.drive(run, U._interleave([session(k) for k in range(sessions)], starts))

    return workload


def escalating_thinker(*, tasks: int = 10, seed: str = "escalate") -> Callable[..., None]:
    """An agent that escalates: most steps go to Sonnet without thinking; a step after a
    failed tool call goes to Opus 4.7 with thinking on, and a planning step (every 4th) to
    Sonnet with thinking; the first step forces the ``plan`` tool. Results 300-3,000 tokens,
    kept in the history; 5-10 steps per task."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        tools = [schema_tool(n, f"{seed}-{n}", 15) for n in ("plan", "read", "edit", "run", "search")]
        system = "You are a software engineering agent. " + text(f"{seed}-system", 2_000)
        for c in range(tasks):
            messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-c{c}", 200)}]
            failed = False
            for s in range(rng.randint(5, 10)):
                extra: dict[str, Any] = {}
                model = SONNET
                if s == 0:
                    extra["tool_choice"] = {"type": "tool", "name": "plan"}
                elif failed:
                    model = OPUS47
                    extra = {"thinking": THINK, "max_tokens": 8_000}
                elif s % 4 == 0:
                    extra = {"thinking": THINK, "max_tokens": 8_000}
                run.send(model=model, system=system, tools=tools, messages=messages, **extra)
                uid = f"toolu_{seed}{c:02d}{s:02d}"
                content: list[dict[str, Any]] = []
                if "thinking" in extra:
                    content.append(
                        {
                            "type": "thinking",
                            "thinking": text(f"{seed}-th{c}-{s}", rng.randint(100, 500)),
                            "signature": "sig" + uid,
                        }
                    )
                name = "plan" if s == 0 else rng.choice(("read", "edit", "run", "search"))
                content.append({"type": "tool_use", "id": uid, "name": name, "input": {"q": f"e{s}"}})
                messages.append({"role": "assistant", "content": content})
                failed = name == "run" and rng.random() < 0.5
                messages.append(
                    {"role": "user", "content": [_tr(uid, text(f"{seed}-r{c}-{s}", rng.randint(300, 3_000)))]}
                )
                run.wait(rng.uniform(3, 20))
            run.wait(rng.uniform(30, 300))

    return workload


def forced_record_step(*, tasks: int = 10, seed: str = "recordstep") -> Callable[..., None]:
    """A research agent that, after every tool step, forces a ``record_finding`` call
    (tool_choice {"type": "tool"}) to log structured notes, then goes back to tool_choice
    auto: the two settings take turns. Search/fetch results are 500-12,000 tokens and stay in
    the history; 3-6 fetch steps (so 6-12 requests) per task."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        tools = [schema_tool(n, f"{seed}-{n}", 15) for n in ("search", "fetch", "record_finding")]
        system = "You are a research agent. " + text(f"{seed}-system", 1_500)
        for c in range(tasks):
            messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-c{c}", 150)}]
            for s in range(2 * rng.randint(3, 6)):
                record = s % 2 == 1
                choice = {"type": "tool", "name": "record_finding"} if record else {"type": "auto"}
                run.send(model=SONNET, system=system, tools=tools, messages=messages, tool_choice=choice)
                uid = f"toolu_{seed}{c:02d}{s:02d}"
                name = "record_finding" if record else rng.choice(("search", "fetch"))
                messages.append(
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": uid, "name": name, "input": {"q": f"f{s}"}}],
                    }
                )
                n = rng.randint(20, 60) if record else rng.randint(500, 12_000)
                messages.append({"role": "user", "content": [_tr(uid, text(f"{seed}-r{c}-{s}", n))]})
                run.wait(rng.uniform(2, 6) if record else rng.uniform(3, 20))
            run.wait(rng.uniform(30, 300))

    return workload


#: Nodes of ``graph_agent``: (name, model, thinking, tool_choice, result tokens).
_NODES: dict[str, tuple[str, str, bool, dict[str, Any] | None, tuple[int, int]]] = {
    "plan": ("write_plan", SONNET, True, None, (50, 150)),
    "act": ("run_tool", SONNET, False, {"type": "any"}, (500, 5_000)),
    "grade": ("grade", SONNET, False, {"type": "tool", "name": "grade"}, (30, 80)),
    "reflect": ("note", OPUS47, True, None, (30, 120)),
    "search": ("search", SONNET, False, None, (300, 2_000)),
}


def graph_agent(cycle: tuple[str, ...], *, tasks: int = 10, seed: str = "graph") -> Callable[..., None]:
    """An agent graph (LangGraph-style nodes over one shared message history, one system
    prompt and tool set): a ``plan`` node (Sonnet, thinking), then ``cycle`` repeated 2-4
    times: ``act`` (tool_choice any), ``grade`` (tool_choice forced to the grader tool),
    ``reflect`` (Opus 4.7, thinking), ``search`` (tool_choice auto); every node answers with
    a tool call whose result joins the history. Each node is its own lane of the cache."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        tools = [schema_tool(n[0], f"{seed}-{n[0]}", 15) for n in _NODES.values()]
        system = "You are an autonomous analyst. " + text(f"{seed}-system", 2_000)
        for c in range(tasks):
            messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-c{c}", 200)}]
            for s, node in enumerate(("plan",) + cycle * rng.randint(2, 4)):
                tool, model, think, choice, size = _NODES[node]
                extra: dict[str, Any] = {}
                if think:
                    extra = {"thinking": THINK, "max_tokens": 8_000}
                if choice is not None:
                    extra["tool_choice"] = choice
                run.send(model=model, system=system, tools=tools, messages=messages, **extra)
                uid = f"toolu_{seed}{c:02d}{s:02d}"
                content: list[dict[str, Any]] = []
                if think:
                    content.append(
                        {
                            "type": "thinking",
                            "thinking": text(f"{seed}-th{c}-{s}", rng.randint(100, 400)),
                            "signature": "sig" + uid,
                        }
                    )
                content.append({"type": "tool_use", "id": uid, "name": tool, "input": {"q": f"g{s}"}})
                messages.append({"role": "assistant", "content": content})
                messages.append(
                    {"role": "user", "content": [_tr(uid, text(f"{seed}-r{c}-{s}", rng.randint(*size)))]}
                )
                run.wait(rng.uniform(2, 12))
            run.wait(rng.uniform(30, 300))

    return workload


# -- Qwen on DashScope: everyday applications, on the native API (``dashscope_native``), the
# OpenAI-compatible mode (``dashscope_openai``) and the Anthropic-compatible endpoint
# (``dashscope``). ``fmt`` is "chat" (OpenAI-format messages, system as a message) or
# "anthropic" (``system=`` and Messages content).


def _qsend(
    run: Run, fmt: str, system: str | None, messages: list[dict[str, Any]], **kw: Any
) -> dict[str, Any]:
    """Send one Qwen request in ``fmt``; returns the assistant message to append."""
    if fmt == "anthropic":
        extra = kw.pop("extra_body", None) or {}
        if extra.get("enable_thinking"):
            kw["thinking"] = THINK
        if system is not None:
            kw["system"] = system
        return _reply(run.send(model=QWEN, messages=messages, **kw))
    head = [{"role": "system", "content": system}] if system is not None else []
    reply = run.send(model=QWEN, messages=[*head, *messages], **kw)
    message = reply.choices[0].message
    out: dict[str, Any] = {"role": "assistant", "content": message.content or ""}
    return out


def qwen_support_bot(fmt: str, *, users: int = 24, seed: str = "qsupport") -> Callable[..., None]:
    """A customer-service bot on Qwen: a 4k system prompt holding the knowledge base (policies,
    FAQ), users chatting 1-6 short turns 10-90 s apart, 24 users over 40 minutes interleaved."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        system = "You are the customer service agent of Example Mall. Knowledge base:\n" + text(
            f"{seed}-kb", 4_000
        )

        def user(u: int) -> U.Source:
            r = random.Random(SUF + f"{seed}-{u}")
            messages: list[dict[str, Any]] = []
            for t in range(r.randint(1, 6)):
                yield r.uniform(10, 90) if t else 0.0
                messages.append({"role": "user", "content": text(f"{seed}-{u}-{t}", r.randint(15, 120))})
                messages.append(_qsend(run, fmt, system, messages))

        starts = [rng.uniform(0, 2_400) for _ in range(users)]
        U.drive(run, U._interleave([user(u) for u in range(users)], starts))

    return workload


def qwen_rag(
    fmt: str, *, queries: int = 60, p_follow: float = 0.3, seed: str = "qrag"
) -> Callable[..., None]:
    """A RAG app on Qwen: a 600-token system prompt, the retrieved chunks (4-8 of 300-600 tokens,
    different every query) pasted in the user message ahead of the question; a query every
    5-120 s, and with ``p_follow`` one or two follow-ups on the same chunks 20-90 s later."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        system = "Answer only from the context. Cite chunk ids. " + text(f"{seed}-system", 600)
        for q in range(queries):
            chunks = "\n\n".join(
                f"[chunk {q}.{i}] " + text(f"{seed}-c{q}-{i}", rng.randint(300, 600))
                for i in range(rng.randint(4, 8))
            )
            messages: list[dict[str, Any]] = [
                {"role": "user", "content": f"Context:\n{chunks}\n\nQuestion: " + text(f"{seed}-q{q}", 40)}
            ]
            messages.append(_qsend(run, fmt, system, messages))
            if rng.random() < p_follow:
                for f in range(rng.randint(1, 2)):
                    run.wait(rng.uniform(20, 90))
                    messages.append({"role": "user", "content": text(f"{seed}-f{q}-{f}", 30)})
                    messages.append(_qsend(run, fmt, system, messages))
            run.wait(rng.uniform(5, 120))

    return workload


def qwen_code_paste(fmt: str, *, sessions: int = 14, seed: str = "qcode") -> Callable[..., None]:
    """A coding assistant on Qwen (an IDE plug-in): a 1.2k system prompt, each session opens with
    a pasted source file (1.5-6k tokens) and a request, then 0-5 follow-ups 15-120 s apart; new
    sessions 1-10 minutes apart."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        system = "You are a senior Python reviewer. Answer with diffs. " + text(f"{seed}-system", 1_200)
        for s in range(sessions):
            body = code(f"{seed}-file{s}", rng.randint(1_500, 6_000))
            messages: list[dict[str, Any]] = [
                {
                    "role": "user",
                    "content": f"```python\n{body}\n```\nRefactor this: " + text(f"{seed}-a{s}", 40),
                }
            ]
            messages.append(_qsend(run, fmt, system, messages))
            for t in range(rng.randint(0, 5)):
                run.wait(rng.uniform(15, 120))
                messages.append({"role": "user", "content": text(f"{seed}-{s}-{t}", rng.randint(20, 150))})
                messages.append(_qsend(run, fmt, system, messages))
            run.wait(rng.uniform(60, 600))

    return workload


def qwen_classify(
    fmt: str, *, items: int = 150, system_tokens: int = 2_000, seed: str = "qclass"
) -> Callable[..., None]:
    """A batch job classifying tickets with Qwen: one labelling prompt (``system_tokens``, the
    label set and rules), 150 one-shot items of 30-300 tokens sent one by one 0.5-4 s apart."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        system = "Classify the ticket into one label. Labels and rules:\n" + text(
            f"{seed}-labels", system_tokens
        )
        for i in range(items):
            item = {"role": "user", "content": "Ticket: " + text(f"{seed}-{i}", rng.randint(30, 300))}
            _qsend(run, fmt, system, [item], max_tokens=8)
            run.wait(rng.uniform(0.5, 4))

    return workload


def qwen_tool_agent(fmt: str, *, tasks: int = 10, seed: str = "qtools") -> Callable[..., None]:
    """An operations agent on Qwen with 8 function tools (2.4k of definitions), a 1k system
    prompt, 2-8 steps per task with tool results of 100-3,000 tokens, 3-20 s per step, tasks
    0.5-5 minutes apart (OpenAI-format tools and role=tool messages; on the native API in
    ``parameters``)."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        tools = [
            {
                "type": "function",
                "function": {
                    "name": f"ops_{i}",
                    "description": text(f"{seed}-tool{i}", 300),
                    "parameters": {"type": "object", "properties": {"arg": {"type": "string"}}},
                },
            }
            for i in range(8)
        ]
        system = "You operate the fleet. Use the tools. " + text(f"{seed}-system", 1_000)
        for c in range(tasks):
            messages: list[dict[str, Any]] = [
                {"role": "system", "content": system},
                {"role": "user", "content": f"Task {c}: " + text(f"{seed}-task{c}", 80)},
            ]
            for s in range(rng.randint(2, 8)):
                run.send(model=QWEN, messages=messages, tools=tools)
                cid = f"call_{c}_{s}"
                messages.append(
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [
                            {
                                "id": cid,
                                "type": "function",
                                "function": {
                                    "name": f"ops_{(c + s) % 8}",
                                    "arguments": json.dumps({"arg": f"a{s}"}),
                                },
                            }
                        ],
                    }
                )
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": cid,
                        "content": text(f"{seed}-r{c}-{s}", rng.randint(100, 3_000)),
                    }
                )
                run.wait(rng.uniform(3, 20))
            run.send(model=QWEN, messages=messages, tools=tools)
            run.wait(rng.uniform(30, 300))

    return workload


def qwen_thinking_chat(
    fmt: str, *, chats: int = 16, p_think: float = 0.4, seed: str = "qthink"
) -> Callable[..., None]:
    """A Qwen3 assistant with a "deep think" button: a 2.5k system prompt, chats of 2-8 turns
    20-120 s apart, each turn sent with ``enable_thinking`` on with ``p_think`` (as
    ``extra_body``/``parameters``; ``thinking`` on the Anthropic-compatible endpoint)."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        system = "You are a helpful study assistant. " + text(f"{seed}-system", 2_500)
        for c in range(chats):
            messages: list[dict[str, Any]] = []
            for t in range(rng.randint(2, 8)):
                if t:
                    run.wait(rng.uniform(20, 120))
                messages.append({"role": "user", "content": text(f"{seed}-{c}-{t}", rng.randint(20, 200))})
                think = rng.random() < p_think
                kw: dict[str, Any] = {"extra_body": {"enable_thinking": think}}
                if think and fmt == "anthropic":
                    kw["max_tokens"] = 4_096
                messages.append(_qsend(run, fmt, system, messages, **kw))
            run.wait(rng.uniform(30, 400))

    return workload


def qwen_gateway(fmt: str, *, requests: int = 240, seed: str = "qgw") -> Callable[..., None]:
    """A multi-tenant gateway in front of Qwen: 8 tenant apps, each its own key and system prompt
    (600-5,000 tokens), traffic Zipf-like over tenants (the top one half of it, the tail a few
    requests an hour), each request a one-shot or a turn of a short chat, 2-30 s apart."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        tenants = 8
        systems = [
            f"Tenant {k} app. " + text(f"{seed}-sys{k}", rng.randint(600, 5_000)) for k in range(tenants)
        ]
        weights = [1 / (k + 1) ** 1.3 for k in range(tenants)]
        chats: dict[int, list[dict[str, Any]]] = {}
        for i in range(requests):
            k = rng.choices(range(tenants), weights)[0]
            if k in chats and rng.random() < 0.6:
                messages = chats[k]
            else:
                messages = chats[k] = []
            messages.append({"role": "user", "content": text(f"{seed}-{i}", rng.randint(20, 300))})
            messages.append(_qsend(run, fmt, systems[k], messages, api_key=f"{seed}-tenant-{k}"))
            if len(messages) > 10:
                chats.pop(k)
            run.wait(rng.uniform(2, 30))

    return workload


def sliding_window(
    fmt: str, *, model: str = SONNET, window: int = 6, chats: int = 6, seed: str = "slide"
) -> Callable[..., None]:
    """Chats of 10-25 turns whose app sends the system prompt (2.5k) and only the last
    ``window`` messages (a buffer-window memory): once the window is full, every request's
    history starts one exchange later than the one before, and no turn's prefix comes back."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        system = "You are a friendly tutor. " + text(f"{seed}-system", 2_500)
        for c in range(chats):
            history: list[dict[str, Any]] = []
            for t in range(rng.randint(10, 25)):
                history.append({"role": "user", "content": text(f"{seed}-{c}-{t}", rng.randint(50, 300))})
                sent = history[-window:]
                if sent[0]["role"] != "user":
                    sent = sent[1:]
                if fmt == "anthropic":
                    history.append(_reply(run.send(model=model, system=system, messages=sent)))
                else:
                    reply = run.send(model=model, messages=[{"role": "system", "content": system}, *sent])
                    history.append({"role": "assistant", "content": reply.choices[0].message.content or ""})
                run.wait(rng.uniform(10, 60))
            run.wait(rng.uniform(20, 200))

    return workload


def fewshot_rotating(
    fmt: str, *, model: str = SONNET, n: int = 120, pool: int = 20, k: int = 5, seed: str = "fewshot"
) -> Callable[..., None]:
    """One-shot classification: a stable 1.5k instruction system prompt, then ``k`` examples
    drawn from a pool of ``pool`` (in a random order) and the ticket, in the user message."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        system = "Classify the ticket. " + text(f"{seed}-system", 1_500)
        examples = [text(f"{seed}-ex{i}", rng.randint(150, 400)) for i in range(pool)]
        for i in range(n):
            shots = "\n\n".join(f"Example: {e}" for e in rng.sample(examples, k))
            user = {
                "role": "user",
                "content": shots + "\n\nTicket: " + text(f"{seed}-q{i}", rng.randint(50, 300)),
            }
            if fmt == "anthropic":
                run.send(model=model, system=system, messages=[user])
            else:
                run.send(model=model, messages=[{"role": "system", "content": system}, user])
            run.wait(rng.uniform(1, 20))

    return workload


def session_header(*, chats: int = 10, seed: str = "sesshead") -> Callable[..., None]:
    """A system prompt of two blocks: a per-session header (user id, plan, locale: 60 tokens)
    before 3k of shared instructions; chats of 3-8 turns, one session after another."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        shared = "Policies. " + text(f"{seed}-system", 3_000)
        for c in range(chats):
            system = [
                {"type": "text", "text": "Session " + text(f"{seed}-h{c}", 60)},
                {"type": "text", "text": shared},
            ]
            messages: list[dict[str, Any]] = []
            for t in range(rng.randint(3, 8)):
                messages.append({"role": "user", "content": text(f"{seed}-{c}-{t}", rng.randint(30, 200))})
                messages.append(_reply(run.send(model=SONNET, system=system, messages=messages)))
                run.wait(rng.uniform(10, 60))
            run.wait(rng.uniform(20, 200))

    return workload


def coding_agent(
    *, sessions: int = 2, devs: int = 1, side: bool = True, seed: str = "ccode"
) -> Callable[..., None]:
    """A coding agent as a CLI drives it: 15 tools, a system of two blocks (a short identity
    line, then 4k of instructions), a first user message that opens with a reminder block
    (date, repository status: per session), 2-3 user prompts per session, each an agent loop
    of 6-15 steps (a tool call, a result of 100-1,500 tokens, 1-4 s apart), compaction past
    30k tokens (the history replaced by a 3k summary) and, per user prompt, a side request
    to Haiku under its own small system prompt. ``devs`` developers interleaved."""

    def workload(run: Run) -> None:
        rng = random.Random(SUF + seed)
        tools = [schema_tool(f"tool{i}", f"{seed}-t{i}", 400) for i in range(15)]
        system = [
            {"type": "text", "text": "You are a coding agent."},
            {"type": "text", "text": text(f"{seed}-system", 4_000)},
        ]
        side_system = "Say whether the message starts a new topic. " + text(f"{seed}-side", 300)

        def session(k: int) -> U.Source:
            r = random.Random(SUF + f"{seed}-{k}")
            reminder = "<system-reminder>" + text(f"{seed}-rem{k}", 300) + "</system-reminder>"
            messages: list[dict[str, Any]] = []
            size = 0
            for p in range(r.randint(2, 3)):
                ask = text(f"{seed}-{k}-p{p}", r.randint(20, 200))
                first = [{"type": "text", "text": reminder}, {"type": "text", "text": ask}]
                messages.append({"role": "user", "content": ask if messages else first})
                if side:
                    run.send(model=HAIKU, system=side_system, messages=[{"role": "user", "content": ask}])
                for step in range(r.randint(6, 15)):
                    run.send(model=SONNET, system=system, tools=tools, messages=messages)
                    uid = f"toolu_{seed}{k:02d}{p}{step:02d}"
                    call = {
                        "type": "tool_use",
                        "id": uid,
                        "name": f"tool{step % 15}",
                        "input": {"q": f"s{step}"},
                    }
                    note = {"type": "text", "text": text(f"{seed}-{k}-{p}-{step}-a", r.randint(10, 80))}
                    messages.append({"role": "assistant", "content": [note, call]})
                    n = r.randint(100, 1_500)
                    size += n + 100
                    messages.append(
                        {"role": "user", "content": [_tr(uid, text(f"{seed}-{k}-{p}-{step}-r", n))]}
                    )
                    if size > 30_000:
                        summary = "Summary: " + text(f"{seed}-{k}-sum{p}-{step}", 3_000)
                        messages = [
                            {"role": "user", "content": summary},
                            {"role": "assistant", "content": "Understood."},
                            {"role": "user", "content": "Continue."},
                        ]
                        size = 3_000
                    yield r.uniform(1, 4)
                run.send(model=SONNET, system=system, tools=tools, messages=messages)
                messages.append({"role": "assistant", "content": "Done. " + text(f"{seed}-{k}-{p}-done", 80)})
                yield r.uniform(20, 240)

        if devs > 1:
            U.merge(run, [session(k) for k in range(devs)], rng, stagger=300)
            return
        for k in range(sessions):
            U.drive(run, session(k))
            run.wait(rng.uniform(60, 900))

    return workload


SHAPES = [
    Workload("thinking toggle", "anthropic", thinking_chats("toggle")),
    Workload("thinking toggle long", "anthropic", thinking_chats("toggle", convs=48)),
    Workload("thinking budget varies", "anthropic", thinking_chats("budget")),
    Workload("thinking toggle 12 blocks", "anthropic", thinking_chats("toggle", blocks=12, convs=24)),
    Workload("thinking sticky", "anthropic", thinking_chats("sticky")),
    Workload("thinking agent", "anthropic", thinking_agent),
    Workload("forced first tool", "anthropic", forced_first_tool("first")),
    Workload("any first tool", "anthropic", forced_first_tool("any")),
    Workload("none last step", "anthropic", forced_first_tool("last")),
    Workload("tool_choice random", "anthropic", forced_first_tool("random")),
    Workload("haiku triage + sonnet", "anthropic", router_triage),
    Workload("haiku triage full history", "anthropic", router_triage, {"full": True}),
    Workload("haiku triage 3k system", "anthropic", router_triage, {"system_tokens": 3_000}),
    Workload("huge result dropped", "anthropic", huge_result_dropped),
    Workload("huge result dropped long", "anthropic", huge_result_dropped, {"tasks": 24}),
    Workload("huge result dropped rare", "anthropic", huge_result_dropped, {"tasks": 24, "p_big": 0.2}),
    Workload("haiku 1.5k system prose", "anthropic", small_system_big_min(HAIKU, "prose")),
    Workload("haiku 1.5k system code", "anthropic", small_system_big_min(HAIKU, "code")),
    Workload("opus45 1.5k system code", "anthropic", small_system_big_min(OPUS45, "code")),
    Workload("opus47 1.5k system prose", "anthropic", small_system_big_min(OPUS47, "prose")),
    Workload("concurrent users 5-8 min", "anthropic", concurrent_think_time()),
    Workload("nightly rerun 50 min", "anthropic", nightly_rerun()),
    Workload("nightly rerun 70 min", "anthropic", nightly_rerun(gap_min=70, seed="rerun70")),
    Workload("system edited 20 min", "anthropic", edited_system()),
    Workload("rag chat stripped", "anthropic", rag_chat("strip")),
    Workload("rag chat kept", "anthropic", rag_chat("keep")),
    Workload("system-reminder last msg", "anthropic", rag_chat("reminder")),
    Workload("many blocks per turn", "anthropic", many_blocks_turn()),
    Workload("self-consistency seq", "anthropic", self_consistency(False)),
    Workload("self-consistency parallel", "anthropic", self_consistency(True)),
    Workload("self-consistency parallel 3", "anthropic", self_consistency(True, k=3, seed="sc3")),
    Workload("parallel drafts", "anthropic", parallel_drafts()),
    Workload("byok chats", "anthropic", byok_chats()),
    Workload("qwen compat agent", "dashscope_openai", qwen_agent()),
    Workload("dashscope slow chats", "dashscope", dashscope_slow_chats()),
    Workload("anthropic slow chats", "anthropic", dashscope_slow_chats()),
    Workload("fixed opener chats", "anthropic", fixed_opener()),
    Workload("haiku image chat", "anthropic", image_chat(HAIKU)),
    Workload("opus45 image chat 1 img", "anthropic", image_chat(OPUS45, images=1, system_tokens=2_600)),
    Workload("qwen compat stamped system", "dashscope_openai", qwen_stamped()),
    Workload("qwen compat stamped system long", "dashscope_openai", qwen_stamped(chats=40)),
    Workload("side summariser", "anthropic", side_summariser()),
    Workload("paste-summarise or chat", "anthropic", paste_or_chat()),
    Workload("paste-summarise or chat 30%", "anthropic", paste_or_chat(p_paste=0.3, seed="paste30")),
    Workload("queue workers same first msg", "anthropic", queue_workers()),
    Workload(
        "queue workers streamed 8",
        "anthropic",
        queue_workers(workers=8, tasks=40, stream=True, seed="queue8"),
    ),
    Workload("compacting chat", "anthropic", compacting_chat()),
    Workload("code one-shots + chat", "anthropic", code_oneshots_and_chat()),
    Workload(
        "code one-shots + chat rare",
        "anthropic",
        code_oneshots_and_chat(sys_b=1_150, reviews_n=15, review_gap=(60, 240), chats_n=30),
    ),
    Workload("attached doc one-shot or chat", "anthropic", attach_or_chat()),
    Workload("attached doc 30% or chat", "anthropic", attach_or_chat(p_attach=0.3, seed="attach30")),
    Workload("attached doc discussed or chat", "anthropic", attach_or_chat(p_discuss=0.6, seed="attachd")),
    Workload(
        "pasted doc discussed or chat",
        "anthropic",
        attach_or_chat(p_discuss=0.6, as_block=False, seed="pasted"),
    ),
    Workload("code file pasted mid-chat", "anthropic", code_paste_mid_chat()),
    Workload("agent big results kept", "anthropic", big_results_kept()),
    Workload(
        "agent parallel big dropped",
        "anthropic",
        big_results_kept(drop=lambda c, n: True, parallel=True, seed="pardrop"),
    ),
    Workload("agent parallel big kept", "anthropic", big_results_kept(parallel=True, seed="parkept")),
    Workload(
        "agent big dropped then kept",
        "anthropic",
        big_results_kept(tasks=16, drop=lambda c, n: c < n // 2, seed="dropkept"),
    ),
    Workload(
        "agent big kept then dropped",
        "anthropic",
        big_results_kept(tasks=16, drop=lambda c, n: c >= n // 2, seed="keptdrop"),
    ),
    Workload("inline edit <2k or chat", "anthropic", inline_edit_or_chat()),
    Workload(
        "inline edit >2k or chat", "anthropic", inline_edit_or_chat(edit=(2_100, 3_000), seed="inline2")
    ),
    Workload("escalating thinker agent", "anthropic", escalating_thinker()),
    Workload("forced record step agent", "anthropic", forced_record_step()),
    Workload(
        "agent big dropped + reminder",
        "anthropic",
        big_results_kept(p_big=0.5, drop=lambda c, n: True, reminder=True, seed="remdrop"),
    ),
    Workload("agent big kept + reminder", "anthropic", big_results_kept(reminder=True, seed="remkept")),
    Workload("graph act/grade/reflect", "anthropic", graph_agent(("act", "grade", "reflect"))),
    Workload("graph 4 nodes", "anthropic", graph_agent(("act", "grade", "reflect", "search"), seed="graph4")),
    Workload("qwen native support bot", "dashscope_native", qwen_support_bot("chat")),
    Workload("qwen compat support bot", "dashscope_openai", qwen_support_bot("chat")),
    Workload("qwen anth support bot", "dashscope", qwen_support_bot("anthropic")),
    Workload("qwen native rag", "dashscope_native", qwen_rag("chat")),
    Workload("qwen compat rag", "dashscope_openai", qwen_rag("chat")),
    Workload(
        "qwen compat rag one-shot",
        "dashscope_openai",
        qwen_rag("chat", p_follow=0.0, seed="qrag1"),
        vs_none=1.01,
    ),
    Workload("qwen native code paste", "dashscope_native", qwen_code_paste("chat")),
    Workload("qwen compat code paste", "dashscope_openai", qwen_code_paste("chat")),
    Workload("qwen native classify batch", "dashscope_native", qwen_classify("chat")),
    Workload("qwen compat classify batch", "dashscope_openai", qwen_classify("chat")),
    Workload("qwen anth classify batch", "dashscope", qwen_classify("anthropic")),
    Workload("qwen native tool agent", "dashscope_native", qwen_tool_agent("chat")),
    Workload("qwen compat tool agent", "dashscope_openai", qwen_tool_agent("chat")),
    Workload("qwen native thinking toggle", "dashscope_native", qwen_thinking_chat("chat")),
    Workload("qwen compat thinking toggle", "dashscope_openai", qwen_thinking_chat("chat")),
    Workload("qwen anth thinking toggle", "dashscope", qwen_thinking_chat("anthropic")),
    Workload("qwen native gateway", "dashscope_native", qwen_gateway("chat")),
    Workload("qwen compat gateway", "dashscope_openai", qwen_gateway("chat")),
    Workload("sliding window 6", "anthropic", sliding_window("anthropic")),
    Workload("sliding window 12", "anthropic", sliding_window("anthropic", window=12, seed="slide12")),
    Workload(
        "qwen compat sliding window", "dashscope_openai", sliding_window("chat", model=QWEN, seed="slideq")
    ),
    Workload("few-shot rotating", "anthropic", fewshot_rotating("anthropic")),
    Workload(
        "qwen compat few-shot rotating", "dashscope_openai", fewshot_rotating("chat", model=QWEN, seed="fewq")
    ),
    Workload("session header block", "anthropic", session_header()),
    Workload("coding agent", "anthropic", coding_agent()),
    Workload("coding agents 3 devs", "anthropic", coding_agent(devs=3, seed="ccode3")),
    Workload("stamped first block agent", "anthropic", stamped_top_agent()),
    Workload("document in system chats", "anthropic", document_in_system()),
    Workload("qwen native stamped system", "dashscope_native", qwen_stamped(seed="qnstamp")),
    Workload("qwen anth stamped system", "dashscope", qwen_stamped(seed="qastamp", fmt="anthropic")),
]


def main(argv: list[str] | None = None) -> int:
    global SUF
    args = list(sys.argv[1:] if argv is None else argv)
    if "--seed" in args:  # these shapes draw from SUF, read when each one runs
        at = args.index("--seed")
        SUF = args[at + 1]
        del args[at : at + 2]
    return run_shapes(SHAPES, __doc__ or "", args)


if __name__ == "__main__":
    sys.exit(main())
