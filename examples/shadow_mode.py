"""Shadow mode: what would ``breakpoints="auto"`` save on this traffic, without changing it?

    .venv/bin/python examples/shadow_mode.py [OUT_DIR]
    cachewatch report --url OUT_DIR/metrics.txt
    cachewatch replay OUT_DIR/traffic.jsonl

Runs a support chat, an agent tool loop and questions over a shared document through the
anthropic SDK, wrapped with ``breakpoints="shadow"`` (every request goes out exactly as
with ``"off"``) and ``record=OUT_DIR/traffic.jsonl`` (the traffic shape: no text, no key),
against the embedded emulator on a simulated clock (no key, no network, a few seconds).
Writes the Prometheus exposition to ``OUT_DIR/metrics.txt`` for ``cachewatch report``.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import anthropic
from prometheus_client import CollectorRegistry, generate_latest

import cachewatch
from cachewatch.emulator import ManualClock, create_app, run_in_thread

WORDS = ["policy", "refund", "invoice", "order", "account", "region", "ticket", "the", "a", "of"]


def text(seed: str, words: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def support_chat(client: Any, clock: ManualClock) -> None:
    system = "You are the support assistant of Example Corp. " + text("system", 3_000)
    messages: list[dict[str, Any]] = []
    for turn in range(10):
        clock.advance(random.Random(turn).uniform(10, 90))
        messages.append({"role": "user", "content": f"Question {turn}: " + text(f"q{turn}", 80)})
        reply = client.messages.create(
            model="claude-sonnet-4-6", max_tokens=128, system=system, messages=messages
        )
        messages.append({"role": "assistant", "content": reply.content[0].text})


def agent_loop(client: Any, clock: ManualClock) -> None:
    tools = [
        {
            "name": name,
            "description": f"{name}: " + text(name, 400),
            "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
        }
        for name in ("search_orders", "lookup_customer")
    ]
    messages: list[dict[str, Any]] = []
    for task in range(4):
        clock.advance(30)
        messages.append({"role": "user", "content": f"Task {task}: please use the tool search_orders."})
        for _ in range(2):
            reply = client.messages.create(
                model="claude-sonnet-4-6", max_tokens=128, tools=tools, messages=messages
            )
            messages.append(
                {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in reply.content]}
            )
            uses = [b for b in reply.content if b.type == "tool_use"]
            results = [
                {"type": "tool_result", "tool_use_id": b.id, "content": text(f"result-{task}", 1_200)}
                for b in uses
            ] or [{"type": "text", "text": "continue"}]
            messages.append({"role": "user", "content": results})
            clock.advance(5)
        messages.pop()  # end the task on the assistant's turn


def document_questions(client: Any, clock: ManualClock) -> None:
    document = "Master services agreement. " + text("document", 5_000)
    for q in range(8):
        clock.advance(random.Random(q).uniform(60, 240))
        content = [
            {"type": "text", "text": document},
            {"type": "text", "text": f"Question {q}: " + text(f"d{q}", 40)},
        ]
        client.messages.create(
            model="claude-sonnet-4-6", max_tokens=128, messages=[{"role": "user", "content": content}]
        )


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    traffic = out / "traffic.jsonl"
    traffic.unlink(missing_ok=True)
    registry = CollectorRegistry()
    clock = ManualClock(start=1_000_000.0)
    with run_in_thread(create_app(clock=clock)) as base_url:
        hostport = base_url.split("://", 1)[1]
        for workspace, run in (
            ("support", support_chat),
            ("agents", agent_loop),
            ("legal", document_questions),
        ):
            key = f"sk-example-{workspace}"
            client = cachewatch.wrap(
                anthropic.Anthropic(api_key=key, base_url=base_url, max_retries=0),
                breakpoints="shadow",
                record=traffic,
                registry=registry,
                providers={hostport: "anthropic"},
                workspaces={key: workspace},
                wall_clock=clock,
            )
            run(client, clock)
    (out / "metrics.txt").write_bytes(generate_latest(registry))
    print(f"wrote {out / 'metrics.txt'} and {traffic}")
    print(f"  cachewatch report --url {out / 'metrics.txt'}")
    print(f"  cachewatch replay {traffic}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "shadow-example"))
