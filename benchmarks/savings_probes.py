"""Quick probes of ``breakpoints="auto"`` on more everyday traffic shapes, one line each.

    .venv/bin/python benchmarks/savings_probes.py [--only NAME ...] [--trace]

Each shape is a short trace (40-80 requests) run through the harness of ``savings.py``
(the real SDK against the emulator, under every fixed strategy; the OpenAI-compatible
DashScope shapes through ``savings_unseen.py``'s chat runner) and printed as ``auto``
against the best fixed strategy chosen in hindsight, with the bar of SPEC section 11
(1.01x). They probe what the larger benchmarks do not vary: the kind of content next to
a reused prefix (code and JSON, whose punctuation the planner's cheap estimate
undercounts; CJK), where the reused part sits (few-shot blocks, a per-user block in the
middle of the system prompt, a caller's own marker, an assistant prefill), who sends it
(the tenants of a gateway, each with a key of its own), and how the
tool list or system prompt varies (per-user tools, an A/B test, shuffled examples).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import savings as S
import savings_unseen as U
from savings import QWEN, SONNET, Run, Workload, _reply, text


def code(seed: str, lines: int) -> str:
    """Code-like lines: brackets and operators, a token each in the emulator."""
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        a, b = rng.choice(["x", "idx", "node", "val"]), rng.choice(["y", "item", "ptr"])
        out.append(f"    if ({a}[{i}] != {b}.get('{a}{i}', {{}})) {{ {a} = ({b} + {i}) * [{a}, {b}]; }}")
    return "\n".join(out)


def cjk(seed: str, chars: int) -> str:
    rng = random.Random(seed)
    return "".join(chr(0x4E00 + rng.randrange(2_000)) + ("。" if i % 20 == 19 else "") for i in range(chars))


def schema_tool(name: str, seed: str, fields: int) -> dict[str, Any]:
    rng = random.Random(seed)
    props = {
        f"p{i}_{rng.randrange(1_000)}": {
            "type": rng.choice(["string", "integer", "boolean"]),
            "description": text(f"{seed}-{i}", 12),
        }
        for i in range(fields)
    }
    schema = {"type": "object", "properties": props, "required": list(props)[:2]}
    return {"name": name, "description": text(f"{seed}-d", 60), "input_schema": schema}


def one_shot(
    body: Callable[[int, random.Random], str], *, n: int = 60, seed: str = "probe"
) -> Callable[..., None]:
    """One-shot questions under a 3,000-token prose system prompt, 5-60 s apart."""

    def workload(run: Run) -> None:
        rng = random.Random(seed)
        system = "You are a helper. " + text(f"{seed}-system", 3_000)
        for i in range(n):
            run.send(model=SONNET, system=system, messages=[{"role": "user", "content": body(i, rng)}])
            run.wait(rng.uniform(5, 60))

    return workload


def chats(
    first: Callable[[int, random.Random], Any],
    follow: Callable[[int, int, random.Random], Any],
    *,
    system: Any = None,
    tools: Callable[[int, random.Random], list[dict[str, Any]]] | None = None,
    prefill: bool = False,
    seed: str = "chat",
) -> Callable[..., None]:
    """Ten to fourteen conversations of 2-7 turns, 5-60 s apart, 10-200 s between them."""

    def workload(run: Run) -> None:
        rng = random.Random(seed)
        sys_prompt = system if system is not None else "You are a helper. " + text(f"{seed}-system", 2_500)
        for c in range(12):
            extra = {"tools": tools(c, rng)} if tools is not None else {}
            sys_blocks = sys_prompt(c) if callable(sys_prompt) else sys_prompt
            messages: list[dict[str, Any]] = [{"role": "user", "content": first(c, rng)}]
            for t in range(rng.randint(2, 6)):
                sent = [*messages, {"role": "assistant", "content": '{"answer": '}] if prefill else messages
                reply = run.send(model=SONNET, system=sys_blocks, messages=sent, **extra)
                messages += [_reply(reply), {"role": "user", "content": follow(c, t, rng)}]
                run.wait(rng.uniform(5, 60))
            run.wait(rng.uniform(10, 200))

    return workload


def prose_chat(tag: str, first_tokens: int = 200, **options: Any) -> Callable[..., None]:
    """:func:`chats` with prose turns: a first message, then follow-ups of 20-200 tokens."""
    return chats(
        lambda c, r: text(f"{tag}-{c}", first_tokens),
        lambda c, t, r: text(f"{tag}-{c}-{t}", r.randint(20, 200)),
        seed=tag,
        **options,
    )


def agent_json(run: Run, *, seed: str = "agentjson") -> None:
    """An agent with eight JSON-schema tools whose tool results are JSON arrays."""
    rng = random.Random(seed)
    tools = [schema_tool(f"t{i}", f"{seed}-t{i}", 25) for i in range(8)]
    system = "You are a helper. " + text(f"{seed}-system", 800)
    for c in range(8):
        messages: list[dict[str, Any]] = [{"role": "user", "content": text(f"{seed}-c{c}", 100)}]
        for _ in range(rng.randint(3, 8)):
            reply = run.send(model=SONNET, system=system, tools=tools, messages=messages)
            rows = [
                {"id": j, "v": rng.random(), "k": [rng.randrange(99) for _ in range(5)]}
                for j in range(rng.randint(20, 120))
            ]
            messages += [_reply(reply), {"role": "user", "content": json.dumps(rows)}]
            run.wait(rng.uniform(3, 30))
        run.wait(rng.uniform(30, 400))


def few_shot(layout: str, *, n: int = 60, seed: str = "fewshot") -> Callable[..., None]:
    """A 4,000-token block of examples before each question: in one message or as a turn."""

    def workload(run: Run) -> None:
        rng = random.Random(seed)
        system = "Classify. " + text(f"{seed}-sys", 200)
        shots = text(f"{seed}-shots", 4_000)
        for i in range(n):
            q = text(f"{seed}-q{i}", rng.randint(30, 300))
            if layout == "blocks":
                content = [{"type": "text", "text": shots}, {"type": "text", "text": q}]
                messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
            else:
                messages = [
                    {"role": "user", "content": shots},
                    {"role": "assistant", "content": "Understood."},
                    {"role": "user", "content": q},
                ]
            run.send(model=SONNET, system=system, messages=messages)
            run.wait(rng.uniform(2, 40))

    return workload


def varied_system(mode: str, *, n: int = 80, seed: str = "varied") -> Callable[..., None]:
    """An A/B test of two 3,000-token system prompts (30/70), or examples shuffled per request."""

    def workload(run: Run) -> None:
        rng = random.Random(seed)
        variants = [
            "You are helper A. " + text(f"{seed}-a", 3_000),
            "You are helper B. " + text(f"{seed}-b", 3_000),
        ]
        shots = [text(f"{seed}-shot{i}", 300) for i in range(8)]
        for i in range(n):
            if mode == "ab":
                system = variants[rng.random() < 0.3]
            else:
                rng.shuffle(shots)
                system = "Classify. " + text(f"{seed}-sys", 300) + "\n" + "\n".join(shots)
            run.send(
                model=SONNET,
                system=system,
                messages=[{"role": "user", "content": text(f"{seed}-{i}", rng.randint(30, 300))}],
            )
            run.wait(rng.uniform(2, 45))

    return workload


def qwen_chat(mode: str, *, seed: str = "qwenprobe") -> Callable[..., None]:
    """DashScope OpenAI-compatible: one-shot questions, a code-review chat, or short chats
    under a system prompt just over the 1,024-token minimum (where a local tokenizer that
    counts otherwise than the provider bills decides whether it is marked)."""

    def workload(run: Run) -> None:
        rng = random.Random(seed)
        system = "You are the assistant. " + text(f"{seed}-system", 1_200 if mode == "short" else 2_500)
        if mode == "short":
            for c in range(10):
                chat: list[dict[str, Any]] = [{"role": "system", "content": system}]
                for t in range(rng.randint(2, 4)):
                    chat.append(U._user(f"{seed}-{c}-{t}", rng.randint(20, 120)))
                    reply = run.send(model=QWEN, messages=chat)
                    chat.append({"role": "assistant", "content": reply.choices[0].message.content or ""})
                    run.wait(rng.uniform(5, 40))
                run.wait(rng.uniform(10, 120))
            return
        if mode == "oneshot":
            for s in range(50):
                run.wait(rng.uniform(2, 90))
                run.send(
                    model=QWEN,
                    messages=[
                        {"role": "system", "content": system},
                        U._user(f"{seed}-{s}", rng.randint(20, 300)),
                    ],
                )
            return
        for c in range(10):
            messages: list[dict[str, Any]] = [
                {"role": "user", "content": "Review:\n" + code(f"{seed}-{c}", rng.randint(40, 120))}
            ]
            for t in range(rng.randint(2, 6)):
                reply = run.send(model=QWEN, messages=[{"role": "system", "content": system}, *messages])
                messages += [
                    {"role": "assistant", "content": reply.choices[0].message.content or ""},
                    {"role": "user", "content": "More:\n" + code(f"{seed}-{c}-{t}", rng.randint(10, 40))},
                ]
                run.wait(rng.uniform(5, 50))
            run.wait(rng.uniform(10, 200))

    return workload


def gateway(per_user: bool, *, seed: str = "gateway", tenants: int = 60) -> Callable[..., None]:
    """A gateway: 60 tenants with keys of their own (a family each), 1-4 one-shot questions
    each, interleaved over about 25 minutes; a per-user system prompt (never reused), or
    each tenant's own fixed one."""

    def workload(run: Run) -> None:
        rng = random.Random(seed + ("-user" if per_user else "-own"))
        order = [k for k in range(tenants) for _ in range(rng.randint(1, 4))]
        rng.shuffle(order)
        own = {
            k: f"You are tenant {k}'s assistant. " + text(f"{seed}-own{k}", rng.randint(2_000, 4_000))
            for k in range(tenants)
        }
        for i, k in enumerate(order):
            if per_user:
                system = f"Profile of user {i}: " + text(f"{seed}-u{i}", rng.randint(2_000, 4_000))
            else:
                system = own[k]
            run.send(
                model=SONNET,
                system=system,
                messages=[{"role": "user", "content": text(f"{seed}-q{i}", rng.randint(30, 200))}],
                api_key=f"{seed}-tenant-{k}",
            )
            run.wait(rng.uniform(1, 20))

    return workload


_BASE_TOOLS = [schema_tool(f"t{i}", f"tools-t{i}", 15) for i in range(6)]
_EXTRA_TOOLS = [schema_tool(f"x{i}", f"tools-x{i}", 15) for i in range(3)]
_PROSE = "You are a helper. " + text("midsys-system", 2_500)

PROBES: list[Workload] = [
    Workload(
        "code questions, prose system",
        "anthropic",
        one_shot(lambda i, r: "Explain:\n" + code(f"cq-{i}", r.randint(60, 200))),
    ),
    Workload(
        "CJK questions, prose system",
        "anthropic",
        one_shot(lambda i, r: cjk(f"cjk-{i}", r.randint(3_000, 8_000))),
    ),
    Workload(
        "code-review chat",
        "anthropic",
        chats(
            lambda c, r: "Review:\n" + code(f"cr-{c}", r.randint(40, 120)),
            lambda c, t, r: code(f"cr-{c}-{t}", r.randint(10, 40)),
        ),
    ),
    Workload("agent, JSON tool results", "anthropic", agent_json),
    Workload("few-shot block", "anthropic", few_shot("blocks")),
    Workload("few-shot turns", "anthropic", few_shot("turns")),
    Workload(
        "per-user tool list",
        "anthropic",
        prose_chat("toollist", tools=lambda c, r: _BASE_TOOLS + _EXTRA_TOOLS[: r.randrange(3)]),
    ),
    Workload(
        "per-user block mid-system",
        "anthropic",
        prose_chat(
            "midsys",
            system=lambda c: [
                {"type": "text", "text": _PROSE},
                {"type": "text", "text": "User: " + text(f"midsys-u{c}", 30)},
                {"type": "text", "text": text("midsys-rules", 1_500)},
            ],
        ),
    ),
    Workload("assistant prefill", "anthropic", prose_chat("prefill", prefill=True)),
    Workload(
        "caller's own system marker",
        "anthropic",
        prose_chat(
            "callermark",
            300,
            system=[{"type": "text", "text": _PROSE, "cache_control": {"type": "ephemeral"}}],
        ),
    ),
    Workload("A/B system prompts", "anthropic", varied_system("ab")),
    Workload("shuffled examples", "anthropic", varied_system("shuffled")),
    Workload("Qwen compat one-shot", "dashscope_openai", qwen_chat("oneshot")),
    Workload("Qwen compat code review", "dashscope_openai", qwen_chat("code")),
    Workload("Qwen compat short chats", "dashscope_openai", qwen_chat("short")),
    Workload("gateway, per-user prompts", "anthropic", gateway(True)),
    Workload("gateway, tenants' own prompts", "anthropic", gateway(False)),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="run only probes whose name contains this")
    parser.add_argument("--trace", action="store_true", help="the requests where auto and the best differ")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    print(f"{'probe':<32}{'best fixed':<12}{'auto/best':>10}  verdict")
    failed = 0
    for workload in PROBES:
        if args.only and not any(o.lower() in workload.name.lower() for o in args.only):
            continue
        results = {
            strategy: U._run(workload, strategy, {}, "")
            for strategy in S.STRATEGIES
            if U._applicable(workload, strategy)
        }
        best = S.best_fixed(results)
        ratio = results["auto"].bill.cost / results[best].bill.cost
        bad = ratio > S.BAR + 1e-9
        failed += bad
        print(f"{workload.name:<32}{best:<12}{ratio:>9.3f}x  {'FAIL' if bad else 'PASS'}", flush=True)
        if args.trace:
            S.print_trace(results, best)
    print(f"\n{failed} probe(s) above the bar ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
