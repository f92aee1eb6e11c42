"""Traffic shapes from a review of issue 14, one line each: auto against the best fixed strategy.

    .venv/bin/python benchmarks/savings_review.py [--only NAME ...] [--trace] [--seed S] [--learned]

Shapes the other savings benchmarks do not contain, run through ``savings.py``'s harness
(the real anthropic SDK against the emulator, every fixed strategy, then ``auto``):
conversations that fork into sub-agents from a shared point, an agent whose tool list grows
as it discovers tools, chats whose system prompt ends with the memories saved so far, a
date at the top of the system prompt that changes once a day, streaming-only chats and
agents, documents near the context limit, a gateway that sends Anthropic and DashScope
traffic through one wrapped client, waves of streamed sub-agents sent at once over a new
brief, and one-shot requests whose tool list is retrieved per request (never reused: also
checked against no caching). ``--seed`` varies every shape's draws; ``--learned`` prints
auto's decisions, its advice and every strategy's cost.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import savings as S
import savings_unseen as U
from savings import QWEN, SONNET, Run, Workload, _reply, text
from savings_probes import schema_tool


def forked_subagents(run: Run, *, seed: str = "fork") -> None:
    """A lead agent builds a context, then three to five sub-agents continue from it in turn."""
    rng = random.Random(seed)
    system = "You are a research lead. " + text(f"{seed}-system", 2_000)
    for task in range(6):
        messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-{task}-brief", 3_000)}]
        for t in range(rng.randint(2, 4)):
            reply = run.send(model=SONNET, system=system, messages=messages)
            messages += [_reply(reply), {"role": "user", "content": text(f"{seed}-{task}-{t}", 300)}]
            run.wait(rng.uniform(5, 30))
        fork = list(messages)
        for sub in range(rng.randint(3, 5)):
            branch = [*fork[:-1], {"role": "user", "content": fork[-1]["content"] + f"\nSub-task {sub}."}]
            for step in range(rng.randint(1, 3)):
                reply = run.send(model=SONNET, system=system, messages=branch)
                branch += [
                    _reply(reply),
                    {"role": "user", "content": text(f"{seed}-{task}-{sub}-{step}", 200)},
                ]
                run.wait(rng.uniform(3, 20))
        run.wait(rng.uniform(30, 400))


def growing_tools(run: Run, *, seed: str = "grow", grow: float = 0.35, tasks: int = 8) -> None:
    """An agent that discovers tools: one more tool every few iterations (tool search)."""
    rng = random.Random(seed)
    system = "You are an agent. " + text(f"{seed}-system", 1_500)
    pool = [schema_tool(f"t{i}", f"{seed}-t{i}", 12) for i in range(20)]
    for task in range(tasks):
        tools = pool[:4]
        messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-{task}", 150)}]
        for it in range(rng.randint(6, 12)):
            reply = run.send(model=SONNET, system=system, tools=tools, messages=messages)
            messages += [
                _reply(reply),
                {"role": "user", "content": text(f"{seed}-{task}-{it}", rng.randint(200, 800))},
            ]
            if rng.random() < grow and len(tools) < len(pool):
                tools = [*tools, pool[len(tools)]]
            run.wait(rng.uniform(2, 25))
        run.wait(rng.uniform(30, 300))


def memory_in_system(run: Run, *, seed: str = "mem", grow: float = 0.15) -> None:
    """Chats whose system prompt ends with the memories saved so far: one more now and then."""
    rng = random.Random(seed)
    base = "You are a helper. " + text(f"{seed}-system", 2_500)
    for c in range(12):
        memories: list[str] = []
        messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-{c}", 150)}]
        for t in range(rng.randint(4, 9)):
            system = base + "\n\nMemories:\n" + "\n".join(memories)
            reply = run.send(model=SONNET, system=system, messages=messages)
            messages += [
                _reply(reply),
                {"role": "user", "content": text(f"{seed}-{c}-{t}", rng.randint(30, 300))},
            ]
            if rng.random() < grow:
                memories.append(text(f"{seed}-m{c}-{t}", 25))
            run.wait(rng.uniform(5, 60))
        run.wait(rng.uniform(10, 200))


def daily_date(run: Run, *, seed: str = "daily") -> None:
    """'Today is <date>.' at the top of a 3,000-token system prompt; the date turns over twice."""
    rng = random.Random(seed)
    body = text(f"{seed}-system", 3_000)
    for c in range(45):
        day = 5 + c // 15
        system = f"Today is 2026-12-{day:02d}. You are the assistant.\n" + body
        messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-{c}", 150)}]
        for t in range(rng.randint(1, 5)):
            reply = run.send(model=SONNET, system=system, messages=messages)
            messages += [
                _reply(reply),
                {"role": "user", "content": text(f"{seed}-{c}-{t}", rng.randint(20, 200))},
            ]
            run.wait(rng.uniform(5, 60))
        run.wait(rng.uniform(20, 500))


def streaming_only(run: Run, *, seed: str = "stream") -> None:
    """Every request streamed: chats and an agent loop interleaved."""
    rng = random.Random(seed)
    system = "You are a helper. " + text(f"{seed}-system", 2_500)
    tools = [schema_tool(f"s{i}", f"{seed}-s{i}", 10) for i in range(5)]
    for c in range(10):
        agent = c % 2 == 1
        messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-{c}", 200)}]
        extra = {"tools": tools} if agent else {}
        for t in range(rng.randint(3, 8) if agent else rng.randint(2, 5)):
            reply = run.send(stream=True, model=SONNET, system=system, messages=messages, **extra)
            follow = rng.randint(300, 900) if agent else rng.randint(20, 200)
            messages += [_reply(reply), {"role": "user", "content": text(f"{seed}-{c}-{t}", follow)}]
            run.wait(rng.uniform(2, 40))
        run.wait(rng.uniform(10, 250))


def huge_documents(run: Run, *, seed: str = "huge") -> None:
    """Documents of 120k-170k tokens: some get one question, some a few, minutes apart."""
    rng = random.Random(seed)
    system = "Answer from the document. " + text(f"{seed}-system", 300)
    for d in range(7):
        doc = text(f"{seed}-doc{d}", rng.randint(120_000, 170_000))
        for q in range(rng.choice([1, 1, 2, 4, 6])):
            content = [{"type": "text", "text": doc}, {"type": "text", "text": text(f"{seed}-{d}-{q}", 80)}]
            run.send(model=SONNET, system=system, messages=[{"role": "user", "content": content}])
            run.wait(rng.uniform(20, 200))
        run.wait(rng.uniform(60, 900))


def mixed_gateway(run: Run, *, seed: str = "gw") -> None:
    """One client, two providers: Sonnet chats and Qwen (DashScope Anthropic endpoint) chats interleaved."""
    rng = random.Random(seed)
    qwen = run.client.with_options(base_url=str(run.client.base_url).rstrip("/") + "/apps/anthropic")
    systems = {
        "a": "You are the Anthropic helper. " + text(f"{seed}-sa", 2_500),
        "q": "You are the Qwen helper. " + text(f"{seed}-sq", 2_500),
    }
    live: list[tuple[str, list[dict[str, Any]], int]] = []
    c = 0
    for _ in range(120):
        if len(live) < 3 or rng.random() < 0.15:
            c += 1
            live.append(
                (rng.choice("aq"), [{"role": "user", "content": text(f"{seed}-{c}", 150)}], rng.randint(1, 6))
            )
        i = rng.randrange(len(live))
        who, messages, left = live[i]
        if who == "q":
            saved, run.client = run.client, qwen
            try:
                reply = run.send(model=QWEN, system=systems[who], messages=messages)
            finally:
                run.client = saved
        else:
            reply = run.send(model=SONNET, system=systems[who], messages=messages)
        messages += [_reply(reply), {"role": "user", "content": text(f"{seed}-{c}-{len(messages)}", 100)}]
        if left <= 1:
            live.pop(i)
        else:
            live[i] = (who, messages, left - 1)
        run.wait(rng.uniform(2, 30))


def retrieved_tools(run: Run, *, seed: str = "tooldb") -> None:
    """One-shot requests whose 3-6 tools are retrieved per request, before a stable system prompt."""
    rng = random.Random(seed)
    pool = [schema_tool(f"r{i}", f"{seed}-r{i}", 20) for i in range(30)]
    system = "You are an assistant. " + text(f"{seed}-system", 2_500)
    for i in range(80):
        tools = rng.sample(pool, rng.randint(3, 6))
        run.send(
            model=SONNET,
            system=system,
            tools=tools,
            messages=[{"role": "user", "content": text(f"{seed}-{i}", 120)}],
        )
        run.wait(rng.uniform(2, 60))


def parallel_streams(run: Run, *, seed: str = "pstream") -> None:
    """Waves of four streamed sub-agents at once over a new shared brief, each for a few rounds."""
    rng = random.Random(seed)
    system = "You are a sub-agent. " + text(f"{seed}-system", 1_500)
    for task in range(8):
        brief = text(f"{seed}-{task}-brief", 4_000)
        threads: list[list[dict[str, Any]]] = [
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": brief}, {"type": "text", "text": f"Part {k}."}],
                }
            ]
            for k in range(4)
        ]
        for _ in range(rng.randint(2, 4)):
            replies = run.fan_out(
                [{"stream": True, "model": SONNET, "system": system, "messages": list(m)} for m in threads]
            )
            for k, reply in enumerate(replies):
                threads[k] += [
                    _reply(reply),
                    {"role": "user", "content": text(f"{seed}-{task}-{k}-{len(threads[k])}", 300)},
                ]
            run.wait(rng.uniform(5, 40))
        run.wait(rng.uniform(30, 400))


SHAPES: list[Workload] = [
    Workload("forked sub-agents", "anthropic", forked_subagents),
    Workload("growing tool list", "anthropic", growing_tools),
    Workload("memory in system prompt", "anthropic", memory_in_system),
    Workload("daily date at top", "anthropic", daily_date),
    Workload("streaming only", "anthropic", streaming_only),
    Workload("huge documents", "anthropic", huge_documents),
    Workload("anthropic+dashscope gateway", "auto", mixed_gateway),
    Workload("parallel streamed sub-agents", "anthropic", parallel_streams),
    Workload("retrieved tools one-shot", "anthropic", retrieved_tools, vs_none=1.01),
]


def run_strategies(workload: Workload, **overrides: Any) -> dict[str, Any]:
    """Every strategy that applies to ``workload``, then ``auto``: strategy -> its result."""
    run = {
        "dashscope_openai": U.run_chat_workload,
        "dashscope_native": U.run_native_workload,
    }.get(workload.profile, S.run_workload)
    return {
        strategy: run(workload, strategy, **overrides)
        for strategy in S.STRATEGIES
        if U._applicable(workload, strategy)
    }


def run_shapes(shapes: list[Workload], description: str, argv: list[str] | None = None) -> int:
    """The command line of this benchmark, ``savings_adversarial.py`` and
    ``savings_redteam.py``: one line per shape."""
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="run only shapes whose name contains this")
    parser.add_argument("--trace", action="store_true", help="the requests where auto and the best differ")
    parser.add_argument("--seed", default="", help="appended to every shape's seed")
    parser.add_argument("--learned", action="store_true", help="auto's decisions and advice")
    parser.add_argument(
        "--implicit-hit-rate",
        type=float,
        default=1.0,
        help="DashScope's implicit cache finds what it holds with this chance (the emulator's draw)",
    )
    args = parser.parse_args(argv)
    U.DASHSCOPE_OPTIONS["implicit_hit_rate"] = args.implicit_hit_rate
    started = time.perf_counter()
    print(f"{'shape':<30}{'reqs':>5} {'best fixed':<11}{'auto/best':>10}{'auto/none':>10}  verdict")
    failed = 0
    for workload in shapes:
        if args.only and not any(o.lower() in workload.name.lower() for o in args.only):
            continue
        base_seed = workload.params.get("seed", workload.name.split()[0])
        overrides = {"seed": base_seed + args.seed} if args.seed else {}
        results = run_strategies(workload, **overrides)
        best = S.best_fixed(results)
        auto = results["auto"].bill.cost
        ratio = auto / results[best].bill.cost
        vs_none = auto / results["none"].bill.cost
        bad = ratio > S.BAR + 1e-9 or (workload.vs_none is not None and vs_none > workload.vs_none + 1e-9)
        failed += bad
        n = results["auto"].bill.requests
        print(
            f"{workload.name:<30}{n:>5} {best:<11}{ratio:>9.3f}x{vs_none:>9.3f}x  {'FAIL' if bad else 'PASS'}",
            flush=True,
        )
        if args.learned:
            print("   ", dict(results["auto"].actions), dict(results["auto"].advice))
            print("    costs:", {s: round(r.bill.cost / 1000, 1) for s, r in results.items()})
        if args.trace:
            S.print_trace(results, best)
    print(f"\n{failed} shape(s) above the bar ({time.perf_counter() - started:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_shapes(SHAPES, __doc__ or "", argv)


if __name__ == "__main__":
    sys.exit(main())
