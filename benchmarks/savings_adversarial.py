"""Traffic shapes aimed at the unstable-conversation rule and the structural family, one line each.

    .venv/bin/python benchmarks/savings_adversarial.py [--only NAME ...] [--trace] [--seed S] [--learned]

Run through ``savings.py``'s harness like ``savings_review.py``: every fixed strategy, then
``auto``, auto against the hindsight-best. The shapes aim at what an unstable conversation's
tail is judged by (P(it goes on within 5 minutes) and P(its prompt changes again), both
learnt per scope and pooled over every conversation of it) and at the family signature
(has tools, number of system positions): a scope mixing fast agent loops with slow chats
whose system prompt carries a timestamp; conversations that change their prompt at every
request for a while and then settle; slow follow-ups while unsettled next to fast chats;
history compaction every few requests; tool definitions in a random order; an agent and a
one-shot classifier that differ only in their tool count; requests that alternate between
two tool sets; a timestamp to the minute over fast agent loops. ``--seed`` varies every
shape's draws.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from savings import SONNET, Run, Workload, _reply, text
from savings_probes import schema_tool
from savings_review import run_shapes


def agents_and_stamped_chats(run: Run, *, seed: str = "mixscope") -> None:
    """One workspace: fast tool loops (stable prompt) and slow chats whose system prompt
    starts with the current time; the two interleave over about an hour."""
    rng = random.Random(seed)
    tools = [schema_tool(f"a{i}", f"{seed}-a{i}", 10) for i in range(6)]
    agent_system = "You are a build agent. " + text(f"{seed}-agent-system", 1_500)
    chat_body = "You are the support assistant. " + text(f"{seed}-chat-system", 2_500)
    for round_ in range(8):
        # An agent task: 5-10 fast iterations.
        messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-task{round_}", 200)}]
        for it in range(rng.randint(5, 10)):
            reply = run.send(model=SONNET, system=agent_system, tools=tools, messages=messages)
            messages += [
                _reply(reply),
                {"role": "user", "content": text(f"{seed}-{round_}-{it}", rng.randint(300, 900))},
            ]
            run.wait(rng.uniform(2, 15))
        # A slow stamped chat: 2-4 turns, 60-200 s apart.
        chat: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-chat{round_}", 100)}]
        for t in range(rng.randint(2, 4)):
            stamp = f"Current time: {run.clock():.0f}.\n"
            reply = run.send(model=SONNET, system=stamp + chat_body, messages=chat)
            chat += [_reply(reply), {"role": "user", "content": text(f"{seed}-c{round_}-{t}", 80)}]
            run.wait(rng.uniform(60, 200))


def churn_then_settle(run: Run, *, seed: str = "settle") -> None:
    """Chats whose system prompt ends with retrieved notes that change at each of the first
    2-5 requests (the retrieval still converging), then hold for the rest of the chat."""
    rng = random.Random(seed)
    base = "You are a research assistant. " + text(f"{seed}-system", 2_500)
    for c in range(10):
        churn = rng.randint(2, 5)
        messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-{c}", 150)}]
        notes = ""
        for t in range(rng.randint(7, 12)):
            if t < churn:
                notes = text(f"{seed}-notes{c}-{t}", rng.randint(300, 800))
            reply = run.send(model=SONNET, system=base + "\n\nNotes:\n" + notes, messages=messages)
            messages += [
                _reply(reply),
                {"role": "user", "content": text(f"{seed}-{c}-{t}", rng.randint(50, 300))},
            ]
            run.wait(rng.uniform(5, 45))
        run.wait(rng.uniform(20, 300))


def slow_unsettled_beside_fast(run: Run, *, seed: str = "slowfast") -> None:
    """One workspace: fast chats (5-30 s) and slow chats (4-6 min) whose system prompt gains a
    memory at each of their first requests; they interleave."""
    rng = random.Random(seed)
    base = "You are a companion. " + text(f"{seed}-system", 2_500)
    live: list[tuple[bool, list[dict[str, Any]], list[str], int, float]] = []
    c = 0
    while c < 14 or live:
        if c < 14 and (len(live) < 2 or rng.random() < 0.1):
            c += 1
            slow = c % 2 == 0
            live.append(
                (slow, [{"role": "user", "content": text(f"{seed}-{c}", 120)}], [], rng.randint(4, 8), 0.0)
            )
        now = run.clock()
        ready = [i for i, entry in enumerate(live) if entry[4] <= now]
        if not ready:
            run.wait(min(entry[4] for entry in live) - now + 0.5)
            continue
        i = rng.choice(ready)
        slow, messages, memories, left, _ = live[i]
        if slow and len(memories) < 3:
            memories.append(text(f"{seed}-m{c}-{len(memories)}-{len(messages)}", 40))
        system = base + ("\n\nMemories:\n" + "\n".join(memories) if memories else "")
        reply = run.send(model=SONNET, system=system, messages=messages)
        messages += [_reply(reply), {"role": "user", "content": text(f"{seed}-{len(messages)}-{c}", 120)}]
        due = run.clock() + (rng.uniform(240, 360) if slow else rng.uniform(5, 30))
        if left <= 1:
            live.pop(i)
        else:
            live[i] = (slow, messages, memories, left - 1, due)
        run.wait(rng.uniform(1, 5))


def compaction(run: Run, *, seed: str = "compact", every: int = 5) -> None:
    """An agent loop that replaces all but its last two turns by a summary every ``every`` requests."""
    rng = random.Random(seed)
    tools = [schema_tool(f"c{i}", f"{seed}-c{i}", 10) for i in range(5)]
    system = "You are a coding agent. " + text(f"{seed}-system", 1_800)
    for task in range(4):
        messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-{task}", 200)}]
        for it in range(rng.randint(15, 25)):
            reply = run.send(model=SONNET, system=system, tools=tools, messages=messages)
            messages += [
                _reply(reply),
                {"role": "user", "content": text(f"{seed}-{task}-{it}", rng.randint(400, 1_200))},
            ]
            if it % every == every - 1:
                summary = "Summary so far: " + text(f"{seed}-sum{task}-{it}", 400)
                messages = [messages[0], {"role": "assistant", "content": summary}, *messages[-3:-1]]
                messages.append({"role": "user", "content": text(f"{seed}-{task}-{it}-after", 200)})
            run.wait(rng.uniform(3, 30))
        run.wait(rng.uniform(30, 300))


def reordered_tools(run: Run, *, seed: str = "reorder", p: float = 0.5) -> None:
    """An agent loop whose tool definitions come in a random order at about half its requests
    (a registry iterated as a set)."""
    rng = random.Random(seed)
    tools = [schema_tool(f"o{i}", f"{seed}-o{i}", 10) for i in range(6)]
    system = "You are an agent. " + text(f"{seed}-system", 1_500)
    for task in range(6):
        order = list(tools)
        messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-{task}", 200)}]
        for it in range(rng.randint(6, 12)):
            if rng.random() < p:
                rng.shuffle(order)
            reply = run.send(model=SONNET, system=system, tools=order, messages=messages)
            messages += [
                _reply(reply),
                {"role": "user", "content": text(f"{seed}-{task}-{it}", rng.randint(300, 900))},
            ]
            run.wait(rng.uniform(2, 20))
        run.wait(rng.uniform(30, 240))


def agent_and_classifier(run: Run, *, seed: str = "twopaths") -> None:
    """One workspace, two code paths of one shape: an agent with 8 tools that loops, and a
    one-shot classifier with 1 tool whose system prompt carries the item to classify."""
    rng = random.Random(seed)
    agent_tools = [schema_tool(f"g{i}", f"{seed}-g{i}", 10) for i in range(8)]
    label = [schema_tool("label", f"{seed}-label", 4)]
    agent_system = "You are an agent. " + text(f"{seed}-agent", 1_500)
    for task in range(8):
        for k in range(rng.randint(4, 10)):
            item = text(f"{seed}-item{task}-{k}", rng.randint(1_500, 3_000))
            run.send(
                model=SONNET,
                system="Classify the item below.\n" + item,
                tools=label,
                messages=[{"role": "user", "content": "Label it."}],
            )
            run.wait(rng.uniform(1, 10))
        messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-t{task}", 200)}]
        for it in range(rng.randint(3, 8)):
            reply = run.send(model=SONNET, system=agent_system, tools=agent_tools, messages=messages)
            messages += [
                _reply(reply),
                {"role": "user", "content": text(f"{seed}-{task}-{it}", rng.randint(300, 900))},
            ]
            run.wait(rng.uniform(2, 20))


def alternating_tools(run: Run, *, seed: str = "altools") -> None:
    """A planner/executor loop: one conversation, its requests alternate between a planning
    tool set and an acting tool set (plan mode, act mode)."""
    rng = random.Random(seed)
    plan = [schema_tool(f"p{i}", f"{seed}-p{i}", 10) for i in range(3)]
    act = [schema_tool(f"x{i}", f"{seed}-x{i}", 10) for i in range(6)]
    system = "You are a planner and executor. " + text(f"{seed}-system", 1_500)
    for task in range(5):
        messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-{task}", 200)}]
        for it in range(rng.randint(8, 14)):
            tools = plan if it % 2 == 0 else act
            reply = run.send(model=SONNET, system=system, tools=tools, messages=messages)
            messages += [
                _reply(reply),
                {"role": "user", "content": text(f"{seed}-{task}-{it}", rng.randint(300, 900))},
            ]
            run.wait(rng.uniform(3, 25))
        run.wait(rng.uniform(30, 240))


def minute_clock(run: Run, *, seed: str = "minute") -> None:
    """Fast agent loops whose system prompt starts with the time to the minute."""
    rng = random.Random(seed)
    tools = [schema_tool(f"m{i}", f"{seed}-m{i}", 10) for i in range(5)]
    body = "You are an agent. " + text(f"{seed}-system", 2_000)
    for task in range(6):
        messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-{task}", 200)}]
        for it in range(rng.randint(6, 14)):
            stamp = f"Time: {int(run.clock() // 60)} min.\n"
            reply = run.send(model=SONNET, system=stamp + body, tools=tools, messages=messages)
            messages += [
                _reply(reply),
                {"role": "user", "content": text(f"{seed}-{task}-{it}", rng.randint(300, 900))},
            ]
            run.wait(rng.uniform(3, 25))
        run.wait(rng.uniform(30, 240))


def stamped_chats_only(run: Run, *, seed: str = "stamponly") -> None:
    """Never reused: slow chats (60-200 s) whose system prompt starts with a request id, next
    to one-shot requests of the same scope with a per-user profile in the system prompt."""
    rng = random.Random(seed)
    body = "You are the assistant. " + text(f"{seed}-system", 2_500)
    for c in range(12):
        messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-{c}", 100)}]
        for t in range(rng.randint(2, 5)):
            stamp = f"Request id: {rng.getrandbits(64):016x}.\n"
            reply = run.send(model=SONNET, system=stamp + body, messages=messages)
            messages += [_reply(reply), {"role": "user", "content": text(f"{seed}-{c}-{t}", 80)}]
            run.wait(rng.uniform(3, 40))
        for k in range(rng.randint(1, 3)):
            profile = "User profile:\n" + text(f"{seed}-prof{c}-{k}", rng.randint(1_500, 3_000))
            run.send(model=SONNET, system=profile, messages=[{"role": "user", "content": "Suggest one."}])
            run.wait(rng.uniform(3, 40))


SHAPES: list[Workload] = [
    Workload("agents + stamped chats", "anthropic", agents_and_stamped_chats),
    Workload("churn then settle", "anthropic", churn_then_settle),
    Workload("slow unsettled + fast", "anthropic", slow_unsettled_beside_fast),
    Workload("compaction every 5", "anthropic", compaction),
    Workload("compaction every 2", "anthropic", compaction, {"every": 2, "seed": "compact2"}),
    Workload("reordered tools", "anthropic", reordered_tools),
    Workload("agent + classifier", "anthropic", agent_and_classifier),
    Workload("alternating tool sets", "anthropic", alternating_tools),
    Workload("minute clock agent", "anthropic", minute_clock),
    Workload("stamped + per-user (never)", "anthropic", stamped_chats_only, vs_none=1.01),
]


def main(argv: list[str] | None = None) -> int:
    return run_shapes(SHAPES, __doc__ or "", argv)


if __name__ == "__main__":
    sys.exit(main())
